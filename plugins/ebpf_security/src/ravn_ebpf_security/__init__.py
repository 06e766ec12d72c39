"""RAVN's security probe (``ebpf_security``): process lifecycle and privilege-relevant syscalls from BPF."""
