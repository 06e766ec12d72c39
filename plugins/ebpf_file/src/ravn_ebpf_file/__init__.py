"""RAVN file probe (``ebpf_file``): opens and changes of watched paths, prefix-filtered in the kernel."""
