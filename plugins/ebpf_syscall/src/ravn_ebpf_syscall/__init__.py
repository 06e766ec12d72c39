"""RAVN syscall probe (plugin ``ebpf_syscall``): see ``bpf/syscall.bpf.c`` for what it traces and costs."""
