"""RAVN's BCC probe support, one module per concern (import from the module that holds a name):

- :mod:`~ravn_core.bpf.abi`: event type ids, the ctypes mirror of ``struct ravn_hdr``, ``unpacker``, ``check_abi``
  (the user-space side of ``bpf/include/ravn_events.h``);
- :mod:`~ravn_core.bpf.config`: ``BccProbeConfig`` and its ``ProbeFilters``;
- :mod:`~ravn_core.bpf.env`: ``check_environment``, the one check of capabilities, tracefs, kernel headers and bcc
  (probes at start, the CLI before it runs sources);
- :mod:`~ravn_core.bpf.procfs`: the /proc process tree and cgroup ids read at probe start;
- :mod:`~ravn_core.bpf.paths`: ``normalize_path`` and ``resolve_path`` for decoders;
- :mod:`~ravn_core.bpf.sources`: where a probe's ``.bpf.c`` and the shared headers are (package data);
- :mod:`~ravn_core.bpf.ring`: ``RingReader``, the ring buffer read from Python, and the ``Decoder`` signature;
- :mod:`~ravn_core.bpf.loader`: compiling and attaching in a short-lived child, the daemon keeping only fds;
- :mod:`~ravn_core.bpf.probe`: ``BccProbe``, the base class of every probe source;
- :mod:`~ravn_core.bpf.testing`: helpers for the probes' kernel tests.

Importing this package imports none of them (and nothing touches the kernel at import).
"""
