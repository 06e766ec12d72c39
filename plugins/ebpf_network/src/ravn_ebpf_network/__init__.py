"""RAVN network probe (``ebpf_network``): TCP connect/accept/close, UDP sends to new destinations, bind, listen."""
