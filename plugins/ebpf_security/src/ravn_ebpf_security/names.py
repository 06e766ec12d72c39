"""Number -> name tables of the security probe (x86_64, Linux uapi): capabilities, ptrace requests, bpf commands,
and the syscalls behind cred/module events."""

from __future__ import annotations

from typing import Final

#: capability number -> name (linux/capability.h, up to CAP_CHECKPOINT_RESTORE)
CAPABILITIES: Final[tuple[str, ...]] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS: Final[dict[str, int]] = {name: i for i, name in enumerate(CAPABILITIES)}

#: bpf(2) command number -> name (enum bpf_cmd)
BPF_COMMANDS: Final[tuple[str, ...]] = (
    "BPF_MAP_CREATE", "BPF_MAP_LOOKUP_ELEM", "BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM", "BPF_MAP_GET_NEXT_KEY",
    "BPF_PROG_LOAD", "BPF_OBJ_PIN", "BPF_OBJ_GET", "BPF_PROG_ATTACH", "BPF_PROG_DETACH", "BPF_PROG_TEST_RUN",
    "BPF_PROG_GET_NEXT_ID", "BPF_MAP_GET_NEXT_ID", "BPF_PROG_GET_FD_BY_ID", "BPF_MAP_GET_FD_BY_ID",
    "BPF_OBJ_GET_INFO_BY_FD", "BPF_PROG_QUERY", "BPF_RAW_TRACEPOINT_OPEN", "BPF_BTF_LOAD", "BPF_BTF_GET_FD_BY_ID",
    "BPF_TASK_FD_QUERY", "BPF_MAP_LOOKUP_AND_DELETE_ELEM", "BPF_MAP_FREEZE", "BPF_BTF_GET_NEXT_ID",
    "BPF_MAP_LOOKUP_BATCH", "BPF_MAP_LOOKUP_AND_DELETE_BATCH", "BPF_MAP_UPDATE_BATCH", "BPF_MAP_DELETE_BATCH",
    "BPF_LINK_CREATE", "BPF_LINK_UPDATE", "BPF_LINK_GET_FD_BY_ID", "BPF_LINK_GET_NEXT_ID", "BPF_ENABLE_STATS",
    "BPF_ITER_CREATE", "BPF_LINK_DETACH", "BPF_PROG_BIND_MAP", "BPF_TOKEN_CREATE", "BPF_PROG_STREAM_READ_BY_FD",
)
BPF_COMMAND_NUMBERS: Final[dict[str, int]] = {name: i for i, name in enumerate(BPF_COMMANDS)}
#: the map element operations: what every BPF tool (RAVN's peers included) does all the time; off by default
BPF_MAP_ELEMENT_OPS: Final[frozenset[str]] = frozenset({
    "BPF_MAP_LOOKUP_ELEM", "BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM", "BPF_MAP_GET_NEXT_KEY",
    "BPF_MAP_LOOKUP_AND_DELETE_ELEM", "BPF_MAP_LOOKUP_BATCH", "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
    "BPF_MAP_UPDATE_BATCH", "BPF_MAP_DELETE_BATCH",
})

#: ptrace request -> name (linux/ptrace.h and x86's asm/ptrace-abi.h)
PTRACE_REQUESTS: Final[dict[int, str]] = {
    0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR", 4: "PTRACE_POKETEXT",
    5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT", 8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP",
    12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS", 14: "PTRACE_GETFPREGS", 15: "PTRACE_SETFPREGS",
    16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 18: "PTRACE_GETFPXREGS", 19: "PTRACE_SETFPXREGS",
    21: "PTRACE_OLDSETOPTIONS", 24: "PTRACE_SYSCALL", 25: "PTRACE_GET_THREAD_AREA", 26: "PTRACE_SET_THREAD_AREA",
    30: "PTRACE_ARCH_PRCTL", 31: "PTRACE_SYSEMU", 32: "PTRACE_SYSEMU_SINGLESTEP", 33: "PTRACE_SINGLEBLOCK",
    0x4200: "PTRACE_SETOPTIONS", 0x4201: "PTRACE_GETEVENTMSG", 0x4202: "PTRACE_GETSIGINFO",
    0x4203: "PTRACE_SETSIGINFO", 0x4204: "PTRACE_GETREGSET", 0x4205: "PTRACE_SETREGSET", 0x4206: "PTRACE_SEIZE",
    0x4207: "PTRACE_INTERRUPT", 0x4208: "PTRACE_LISTEN", 0x4209: "PTRACE_PEEKSIGINFO",
    0x420A: "PTRACE_GETSIGMASK", 0x420B: "PTRACE_SETSIGMASK", 0x420C: "PTRACE_SECCOMP_GET_FILTER",
    0x420D: "PTRACE_SECCOMP_GET_METADATA", 0x420E: "PTRACE_GET_SYSCALL_INFO",
    0x420F: "PTRACE_GET_RSEQ_CONFIGURATION", 0x4210: "PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG",
    0x4211: "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG", 0x4212: "PTRACE_SET_SYSCALL_INFO",
}

#: syscall number -> name of the calls behind cred and module events (x86_64)
CRED_CALLS: Final[dict[int, str]] = {
    105: "setuid", 106: "setgid", 113: "setreuid", 114: "setregid", 117: "setresuid", 119: "setresgid",
    122: "setfsuid", 123: "setfsgid", 126: "capset",
}
MODULE_CALLS: Final[dict[int, str]] = {175: "init_module", 176: "delete_module", 313: "finit_module"}


def capability_name(cap: int) -> str:
    return CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else f"CAP_{cap}"


def bpf_command_name(cmd: int) -> str:
    return BPF_COMMANDS[cmd] if 0 <= cmd < len(BPF_COMMANDS) else f"BPF_CMD_{cmd}"


def ptrace_request_name(request: int) -> str:
    return PTRACE_REQUESTS.get(request, f"PTRACE_{request:#x}")
PROCESS_VM_CALLS: Final[dict[int, str]] = {310: "process_vm_readv", 311: "process_vm_writev"}
#: prctl options the probe reports (linux/prctl.h)
PRCTL_OPTIONS: Final[dict[int, str]] = {15: "PR_SET_NAME", 35: "PR_SET_MM"}
#: socket families and types named in socket events (linux/socket.h, linux/net.h)
SOCKET_FAMILIES: Final[dict[int, str]] = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
SOCKET_TYPES: Final[dict[int, str]] = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET",
                                       10: "SOCK_PACKET"}
