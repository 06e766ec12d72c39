"""Config models every BCC probe shares: :class:`BccProbeConfig` (ring and map sizes) with its ``filters``
(:class:`ProbeFilters`, the in-kernel excludes)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ravn_core.bpf.abi import COMM_LEN
from ravn_core.components import PluginConfig


class ProbeFilters(PluginConfig):
    """In-kernel excludes, embedded by every probe config as ``filters``. RAVN's own pid is always excluded."""

    exclude_pids: list[int] = Field(default_factory=list,
                                    description="process ids (tgids) never reported, with all their descendants")
    exclude_comms: list[str] = Field(default_factory=list,
                                     description="task comms never reported (exact match, at most 15 characters)")
    exclude_uids: list[int] = Field(default_factory=list, description="real uids never reported")
    exclude_cgroups: list[int | str] = Field(
        default_factory=list,
        description="cgroup v2 ids, or cgroup paths (absolute, or relative to the cgroup2 mount), never reported")

    @field_validator("exclude_comms")
    @classmethod
    def _comm_len(cls, v: list[str]) -> list[str]:
        for c in v:
            if not c or len(c.encode()) > COMM_LEN - 1:
                raise ValueError(f"comm {c!r} must be 1-15 bytes (the kernel truncates comm to 15)")
        return v


class BccProbeConfig(PluginConfig):
    """Keys every BCC probe accepts; a probe's config model subclasses it and adds its own."""

    ring_buffer_kb: int = Field(1024, description="BPF ring buffer size in KiB (power of two, at least 4)")
    max_processes: int = Field(32768, ge=64, description="entries of the pid -> ppid map (LRU)")
    max_excluded: int = Field(4096, ge=16, description="entries of the excluded-tgid map (RAVN, its children, "
                                                       "configured pids and their descendants)")
    max_batch: int = Field(16384, ge=1, description="at most this many events returned by one poll")
    batch_ms: int = Field(10, ge=0, le=1000,
                          description="after a poll returned events, let the ring fill this long before reading it "
                                      "again (events of a busy ring go out in batches; 0: read as soon as woken)")
    filters: ProbeFilters = Field(default_factory=ProbeFilters, description="in-kernel excludes")

    @field_validator("ring_buffer_kb")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v < 4 or v & (v - 1):
            raise ValueError("ring_buffer_kb must be a power of two >= 4 (whole pages)")
        return v
