"""The one check of whether this machine and process can load BCC probes: :func:`check_environment`, called by
``BccProbe.start()``, by the CLI before it runs a config with sources, and by the kernel tests
(``ravn_core.testing.require_kernel``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ravn_core.errors import UnusableEnvironment

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TRACEFS = Path("/sys/kernel/tracing")


def _effective_caps() -> int:
    """The CapEff mask of this process (0 when /proc cannot say)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_environment() -> None:
    """Raise UnusableEnvironment naming the fix when this machine/process cannot load BCC probes: CAP_BPF and
    CAP_PERFMON (or CAP_SYS_ADMIN), tracefs at :data:`TRACEFS` (where the probes look up and attach their
    tracepoints), kernel headers for BCC's compile, and the bcc package."""
    caps = _effective_caps()
    has_bpf = bool(caps & (1 << CAP_SYS_ADMIN)) or (bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON)))
    if not has_bpf:
        raise UnusableEnvironment(
            "the eBPF sources need root (or CAP_BPF and CAP_PERFMON): run `sudo ravn ...`, or use "
            "`ravn replay` / `ravn analyze`, which need neither")
    if not (TRACEFS / "events").is_dir():
        raise UnusableEnvironment(
            f"tracefs is not mounted at {TRACEFS}: run `mount -t tracefs nodev {TRACEFS}` (or `make setup`)")
    kbuild = Path("/lib/modules") / os.uname().release / "build"
    if not os.environ.get("BCC_KERNEL_SOURCE") and not (kbuild / "include").exists():
        raise UnusableEnvironment(f"no kernel headers at {kbuild} (BCC compiles against them): run `make setup`")
    if importlib.util.find_spec("bcc") is None:  # not imported here: the loader child imports it
        raise UnusableEnvironment("the bcc Python package is not importable: run `make setup` "
                                  "(Debian python3-bpfcc, linked into the venv)")
