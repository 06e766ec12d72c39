"""Builtin health probe ``process``: RAVN's own RSS, CPU time and thread count, from /proc/self."""

from __future__ import annotations

import ctypes
import os
import threading
import time

from pydantic import Field

from ravn_core import hookimpl
from ravn_core.components import Health, HealthProbe, PluginConfig, RuntimeContext
from ravn_core.registry import HealthProbeRegistry

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of this process, or of ``pid`` (anonymous + file-backed pages)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def anon_rss_bytes(pid: int | str = "self") -> int:
    """Resident anonymous memory (heap, stacks, maps) of this process, or of ``pid``: what leaks grow and what the
    memory limit applies to.

    File-backed pages (the code of onnxruntime, numpy, Python) are left out: they are clean, shared with the page
    cache and reclaimable, and about 60 MB here whatever RAVN does (BCC and LLVM are never loaded in the daemon:
    ``ravn_core.bpf.loader``).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return rss_bytes(pid)


def trim_heap() -> None:
    """Give freed heap back to the kernel (glibc malloc_trim): when private memory is over the limit."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ProcessProbeConfig(PluginConfig):
    max_threads: int = Field(256, ge=1, description="more threads than this reports degraded (a thread leak)")


class ProcessProbe(HealthProbe):
    """RSS, CPU seconds and thread count of the daemon."""

    def __init__(self, name: str, config: ProcessProbeConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._last = (time.monotonic(), time.process_time())

    def check(self) -> Health:
        now, cpu = time.monotonic(), time.process_time()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        threads = threading.active_count()
        counters = {
            "rss_bytes": float(rss_bytes()),
            "anon_rss_bytes": float(anon_rss_bytes()),
            "cpu_seconds": cpu,
            "cpu_percent": 100.0 * (cpu - last_cpu) / max(now - last_now, 1e-6),
            "threads": float(threads),
        }
        if threads > self.config.max_threads:
            return Health("degraded", f"{threads} threads (max {self.config.max_threads})", counters)
        return Health("ok", "", counters)


@hookimpl
def ravn_register_health_probes(registry: HealthProbeRegistry) -> None:
    registry.add("process", ProcessProbe, ProcessProbeConfig)
