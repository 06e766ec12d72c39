"""Typed config of the syscall probe (YAML: ``sources: [{plugin: ebpf_syscall, ...}]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ravn_core.bpf.config import BccProbeConfig
from ravn_ebpf_syscall.syscalls import table

#: The default allow list: syscalls that change who a process is or what it can reach, and nothing hot.
#: Process and code loading, credentials, file metadata and links, network setup, ptrace and cross-process
#: memory, namespaces and mounts, bpf/perf/kernel-keyring, memfd. Deliberately NOT read/write/poll/epoll/futex/
#: mmap/brk/stat/openat/close/recvmsg/sendmsg/clock_*: they are most of any host's syscalls and say little.
DEFAULT_SYSCALLS: tuple[str, ...] = (
    # process, code loading, signals
    "execve", "execveat", "fork", "vfork", "clone", "clone3", "exit_group", "kill", "tgkill",
    "prctl", "seccomp", "pidfd_open", "pidfd_getfd",
    # credentials
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
    "setgroups", "capset",
    # file metadata, links, special files
    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mknodat",
    "open_by_handle_at",
    # network setup
    "socket", "connect", "bind", "listen", "accept", "accept4",
    # ptrace and other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    # namespaces, mounts, root
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "move_mount", "open_tree",
    # kernel interfaces an attacker loads code or hides through
    "bpf", "perf_event_open", "memfd_create", "userfaultfd", "keyctl", "add_key", "request_key", "iopl", "ioperm",
)


class SyscallConfig(BccProbeConfig):
    """ebpf_syscall: syscall events or per-process syscall summaries."""

    mode: Literal["events", "summary"] = Field(
        "summary", description="events: one event per syscall; summary: per-process counts + recent sequence "
                               "flushed every flush_interval_ms")
    hook: Literal["auto", "raw", "tracepoints"] = Field(
        "auto", description="tracepoints: syscalls:sys_enter_<name> per listed syscall (cheap); raw: "
                            "raw_syscalls:sys_enter for all with an in-kernel selection (every syscall pays); "
                            "auto: tracepoints when `syscalls` is set, raw otherwise")
    syscalls: list[str] = Field(default_factory=lambda: list(DEFAULT_SYSCALLS),
                                description="allow list of syscall names (x86_64); empty: all (raw hook)")
    exclude_syscalls: list[str] = Field(default_factory=list,
                                        description="deny list, removed from the allow list (or from all)")
    return_values: bool = Field(False, description="events mode: emit at syscall exit with syscall.ret")
    flush_interval_ms: int = Field(1000, ge=10, description="summary mode: how often the summaries of running "
                                                            "processes are read and emitted (an exited "
                                                            "process's last one comes within 100 ms)")
    max_summary_processes: int = Field(8192, ge=16, description="summary mode: processes tracked at once (LRU)")

    @field_validator("syscalls", "exclude_syscalls")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(table()))
        if unknown:
            raise ValueError(f"unknown x86_64 syscall name(s): {', '.join(unknown)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SyscallConfig:
        if self.hook == "tracepoints" and not self.syscalls:
            raise ValueError("hook: tracepoints needs a non-empty `syscalls` allow list")
        if self.return_values and self.mode == "summary":
            raise ValueError("return_values applies to mode: events only")
        return self

    def selected(self) -> list[str]:
        """The syscall names traced (allow list minus deny list; all native syscalls when the list is empty)."""
        base = self.syscalls or sorted(table(), key=lambda n: table()[n].nr)
        deny = set(self.exclude_syscalls)
        return [n for n in dict.fromkeys(base) if n not in deny]

    def effective_hook(self) -> Literal["raw", "tracepoints"]:
        if self.hook == "auto":
            return "tracepoints" if self.syscalls else "raw"
        return self.hook
