"""SecuritySource: the ``ebpf_security`` probe (BPF side: ``bpf/security.bpf.c``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ravn_core.bpf.btf import BtfError, kernel_btf
from ravn_core.bpf.env import TRACEFS
from ravn_core.bpf.paths import seed_cwds
from ravn_core.bpf.probe import BccProbe
from ravn_core.bpf.ring import Decoder
from ravn_core.components import RuntimeContext
from ravn_core.events import Batch
from ravn_ebpf_security.config import SecurityConfig
from ravn_ebpf_security.decode import ExeLookups, decoders

if TYPE_CHECKING:
    from bcc import BPF

CRED_SYSCALLS = ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
                 "capset")

ENTER, EXIT = "ravn_sec_sys_enter", "ravn_sec_sys_exit"
#: SEC_OFF_<name> of the kernel exe walk (bpf/security.bpf.c, sec_exe): (name, struct, member)
EXE_OFFSETS = (("TASK_MM", "task_struct", "mm"), ("MM_EXE_FILE", "mm_struct", "exe_file"),
               ("FILE_PATH", "file", "f_path"), ("D_HASH", "dentry", "d_hash"), ("D_PARENT", "dentry", "d_parent"),
               ("D_NAME", "dentry", "d_name"), ("MOUNT_MNT", "mount", "mnt"), ("MNT_PARENT", "mount", "mnt_parent"),
               ("MNT_MOUNTPOINT", "mount", "mnt_mountpoint"), ("MNT_ROOT", "vfsmount", "mnt_root"),
               ("PATH_MNT", "path", "mnt"), ("PATH_DENTRY", "path", "dentry"), ("QSTR_LEN", "qstr", "len"),
               ("QSTR_NAME", "qstr", "name"))
MODULE_SYSCALLS = ("init_module", "finit_module", "delete_module")


def _paired(*syscalls: str) -> list[tuple[str, str]]:
    out = []
    for sc in syscalls:
        out += [(ENTER, f"syscalls:sys_enter_{sc}"), (EXIT, f"syscalls:sys_exit_{sc}")]
    return out


class SecuritySource(BccProbe):
    """Process lifecycle (exec, fork, exit) and privilege-relevant syscalls, filtered in the kernel."""

    plugin = "ebpf_security"
    package = "ravn_ebpf_security"
    bpf_file = "security.bpf.c"
    config: SecurityConfig
    #: where tracepoints are listed (module_hook: auto attaches the module syscalls' only when they exist)
    tracefs: ClassVar[Path] = TRACEFS

    def __init__(self, name: str, config: SecurityConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.exes = ExeLookups(self.counters)

    def probe_cflags(self) -> list[str]:
        c = self.config
        return [
            f"-DSEC_EXEC={int(c.enabled('exec'))}",
            f"-DSEC_FORK={int(c.enabled('fork'))}",
            f"-DSEC_EXIT={int(c.enabled('exit'))}",
            f"-DSEC_MEMFD_TRACK={int(c.enabled('exec'))}",
            f"-DSEC_EXEC_ENOENT={int(c.exec_enoent)}",
            f"-DSEC_ENV_SCAN={c.exec_env_scan}",
            f"-DSEC_CAP_MASK={c.capability_mask():#x}ULL",
            f"-DSEC_CAP_MODE={('all', 'denied', 'granted').index(c.capable_report)}",
            f"-DSEC_CAP_WINDOW_NS={c.capable_window_ms * 1_000_000}ULL",
            f"-DSEC_CAP_SKIP_VM={int(c.capable_skip_overcommit)}",
            f"-DSEC_VM_WINDOW_NS={c.process_vm_window_ms * 1_000_000}ULL",
            f"-DSEC_BPF_CMD_MASK={c.bpf_command_mask():#x}ULL",
            f"-DSEC_MAX_PENDING={c.max_pending}",
            *self._exe_cflags(),
        ]

    def _exe_cflags(self) -> list[str]:
        """The kernel exe walk's struct offsets, from the running kernel's BTF; SEC_EXE_BTF=0 without them."""
        if not (self.config.exe_from_kernel and self.config.enabled("exec")):
            return ["-DSEC_EXE_BTF=0"]
        try:
            btf = kernel_btf()
            offsets = {name: btf.offset(struct, member) for name, struct, member in EXE_OFFSETS}
        except BtfError as exc:
            self.log.warning("exec.exe is read from /proc/<pid>/exe: %s", exc)
            return ["-DSEC_EXE_BTF=0"]
        return ["-DSEC_EXE_BTF=1", *(f"-DSEC_OFF_{name}={off}" for name, off in offsets.items())]

    def tracepoints(self) -> list[tuple[str, str]]:
        """Only the tracepoints of the enabled event types (fork/exit events ride on the base's programs)."""
        c = self.config
        tps: list[tuple[str, str]] = []
        if c.enabled("exec"):
            tps += [
                ("ravn_sec_execve_enter", "syscalls:sys_enter_execve"),
                ("ravn_sec_execveat_enter", "syscalls:sys_enter_execveat"),
                ("ravn_sec_exec_exit", "syscalls:sys_exit_execve"),
                ("ravn_sec_exec_exit", "syscalls:sys_exit_execveat"),
                ("ravn_sec_exec", "sched:sched_process_exec"),
                (EXIT, "syscalls:sys_exit_memfd_create"),  # memfd fd tracking for exec.memfd
                *_paired("chdir", "fchdir"),  # the cwd a relative exec name is joined with
            ]
        if c.enabled("exit"):
            tps += [
                (ENTER, "syscalls:sys_enter_exit_group"),
                (ENTER, "syscalls:sys_enter_exit"),
                ("ravn_sec_signal_generate", "signal:signal_generate"),
                ("ravn_sec_signal", "signal:signal_deliver"),
            ]
        if c.enabled("cred"):
            tps += _paired(*CRED_SYSCALLS)
        if c.enabled("ptrace"):
            tps += _paired("ptrace")
        if c.enabled("module") and c.module_hook == "raw":
            tps.append(("ravn_sec_raw_enter", "raw_syscalls:sys_enter"))
        elif c.enabled("module"):  # auto: the module syscalls' own tracepoints, where the kernel has them
            tps += [("ravn_sec_module_enter", f"syscalls:sys_enter_{sc}") for sc in MODULE_SYSCALLS
                    if (self.tracefs / "events" / "syscalls" / f"sys_enter_{sc}").is_dir()]
        if c.enabled("process_vm"):
            for sc in ("process_vm_readv", "process_vm_writev"):
                tps += [("ravn_sec_process_vm_enter", f"syscalls:sys_enter_{sc}"), (EXIT, f"syscalls:sys_exit_{sc}")]
        if c.enabled("socket"):
            tps += [("ravn_sec_socket_enter", "syscalls:sys_enter_socket"), (EXIT, "syscalls:sys_exit_socket")]
        if c.enabled("prctl"):
            tps += [("ravn_sec_prctl_enter", "syscalls:sys_enter_prctl"), (EXIT, "syscalls:sys_exit_prctl")]
        if c.enabled("capable") and c.capabilities:
            tps.append(("ravn_sec_capable", "capability:cap_capable"))
        if c.enabled("memfd_create"):
            tps += _paired("memfd_create")
        if c.enabled("bpf") and c.bpf_commands:
            tps.append((ENTER, "syscalls:sys_enter_bpf"))
        if c.enabled("mount"):
            tps += _paired("mount")
        if c.enabled("unshare"):
            tps += _paired("unshare")
        if c.enabled("setns"):
            tps += _paired("setns")
        if c.enabled("dup"):
            tps += _paired("dup2", "dup3")
        if c.enabled("setsid"):
            tps.append(("ravn_sec_setsid", "syscalls:sys_exit_setsid"))
        return list(dict.fromkeys(tps))  # one attachment per tracepoint

    def on_loaded(self, bpf: BPF) -> None:
        if self.config.enabled("exec"):
            seed_cwds(bpf["sec_cwds"])

    def decoders(self) -> dict[int, Decoder]:
        self.exes.waiting.clear()  # a new ring: nothing of the old one is handed on
        return decoders(self.event_header(), self.counters, self.exes)

    def poll(self, timeout_ms: int) -> Batch:
        batch = super().poll(timeout_ms)
        self.exes.resolve()  # exec.exe of the batch's execs, before anyone sees them
        return batch

    def drain(self) -> Batch:
        batch = super().drain()
        self.exes.resolve()
        return batch
