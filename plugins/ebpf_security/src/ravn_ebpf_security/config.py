"""Typed config of the security probe (YAML: ``sources: [{plugin: ebpf_security, ...}]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ravn_core.bpf.config import BccProbeConfig
from ravn_ebpf_security.names import BPF_COMMAND_NUMBERS, BPF_COMMANDS, BPF_MAP_ELEMENT_OPS, CAPABILITY_NUMBERS

EventName = Literal["exec", "fork", "exit", "cred", "ptrace", "module", "capable", "memfd_create", "bpf", "mount",
                    "unshare", "setns", "dup", "setsid", "process_vm", "prctl", "socket"]
ALL_EVENTS: tuple[EventName, ...] = ("exec", "fork", "exit", "cred", "ptrace", "module", "capable", "memfd_create",
                                     "bpf", "mount", "unshare", "setns", "dup", "setsid", "process_vm", "prctl",
                                     "socket")

#: Capabilities reported by default: the ones that mean "can change the kernel, other processes or the network
#: stack, or read what it should not". Not CAP_DAC_OVERRIDE/CAP_FOWNER/CAP_CHOWN: root uses them constantly.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_SYS_BOOT", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_BPF",
    "CAP_PERFMON", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE",
)
#: bpf() commands reported by default: all but the map element operations (lookups/updates that BPF tools,
#: RAVN's peers included, make all the time and that do not load or attach anything).
DEFAULT_BPF_COMMANDS: tuple[str, ...] = tuple(c for c in BPF_COMMANDS if c not in BPF_MAP_ELEMENT_OPS)


class SecurityConfig(BccProbeConfig):
    """ebpf_security: exec/fork/exit, credential changes, ptrace, modules, capabilities, memfd, bpf, mounts,
    namespaces, dup onto stdio, new sessions (setsid), cross-process memory access (process_vm) and renames
    (prctl PR_SET_NAME / PR_SET_MM) and packet or raw sockets."""

    events: list[EventName] = Field(
        default_factory=lambda: list(ALL_EVENTS),
        description="event types to trace; each attaches only its own tracepoints (module: see module_hook)")
    exec_enoent: bool = Field(
        True, description="report execs that failed with ENOENT (false drops them in the kernel: execvp and "
                          "shells try each PATH directory, so most ENOENT failures are lookups, not attacks)")
    exec_env_scan: int = Field(
        64, ge=0, le=256,
        description="environment entries of each exec scanned in the kernel for LD_PRELOAD, LD_LIBRARY_PATH and "
                    "LD_AUDIT (exec.ld_preload, ...; one 16-byte read per entry at sys_enter; 0: none)")
    exe_from_kernel: bool = Field(
        True, description="exec.exe walked in the kernel at the exec (dentries and mounts, offsets from the "
                          "kernel's BTF), so a program that exits at once still shows the file it ran from; "
                          "false, or no BTF: read from /proc/<pid>/exe when the record is decoded")
    module_hook: Literal["auto", "raw", "off"] = Field(
        "auto", description="auto: init_module/finit_module/delete_module through their own syscall tracepoints "
                            "when the kernel has them (free), else not at all (such a kernel cannot load modules; "
                            "insmod/modprobe are still seen by exec); raw: through raw_syscalls:sys_enter on any "
                            "kernel, which costs every syscall of every process (~7% on syscall-heavy loads)")
    capabilities: list[str] = Field(default_factory=lambda: list(DEFAULT_CAPABILITIES),
                                    description="capabilities whose checks are reported (CAP_* names)")
    capable_report: Literal["all", "denied", "granted"] = Field(
        "all", description="which capability checks to report: all, only denied (probing) or only granted")
    capable_window_ms: int = Field(
        1000, ge=0, description="report a (process, capability, granted/denied) at most once per this many ms "
                                "(cap_capable fires on every check; 0 reports every check)")
    process_vm_window_ms: int = Field(
        1000, ge=0, description="report a (process, target process, process_vm_readv/writev) at most once per this "
                                "many ms (a profiler makes thousands of calls a second; a failed call does not "
                                "count; 0 reports every call)")
    capable_skip_overcommit: bool = Field(
        True, description="drop the CAP_SYS_ADMIN checks the kernel's memory overcommit accounting makes inside "
                          "mmap/brk/mprotect/mremap/fork/exec (one per process, never a privileged action)")
    bpf_commands: list[str] = Field(default_factory=lambda: list(DEFAULT_BPF_COMMANDS),
                                    description="bpf() commands reported (BPF_* names); default all but map "
                                                "element operations")
    max_pending: int = Field(10240, ge=64, description="threads with a traced syscall in flight (args kept "
                                                       "until its sys_exit)")

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(CAPABILITY_NUMBERS))
        if unknown:
            raise ValueError(f"unknown capability name(s): {', '.join(unknown)}")
        return v

    @field_validator("bpf_commands")
    @classmethod
    def _bpf_cmds(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(BPF_COMMAND_NUMBERS))
        if unknown:
            raise ValueError(f"unknown bpf command name(s): {', '.join(unknown)}")
        return v

    def enabled(self, event: EventName) -> bool:
        if event == "module":
            return "module" in self.events and self.module_hook != "off"
        return event in self.events

    def capability_mask(self) -> int:
        mask = 0
        for name in self.capabilities:
            mask |= 1 << CAPABILITY_NUMBERS[name]
        return mask

    def bpf_command_mask(self) -> int:
        mask = 0
        for name in self.bpf_commands:
            mask |= 1 << BPF_COMMAND_NUMBERS[name]
        return mask
