"""The event model: what every source produces and every analyzer reads.

An event is a flat ``dict`` whose keys are Falco-style dotted field names (``proc.pid``, ``file.path``).
Sources hand the runtime *batches* (``list`` of events); nothing per event goes through pluggy.
``EVENT_TYPES`` is the single machine-readable schema; docs/EVENTS.md documents it and a test keeps the two
in step. Fields that the process tree provides (``proc.exe``, ``proc.args``, ``proc.pname``, ancestry) are
not in the events: analyzers look them up in ``BatchContext.proctree``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

Event = dict[str, Any]
Batch = list[Event]

SCHEMA_VERSION: Final = 1


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # "int" | "str" | "bool" | "list[str]" | "list[int]" | "dict[str,int]"
    description: str


COMMON_FIELDS: Final[tuple[Field, ...]] = (
    Field("evt.type", "str", "event type, one of EVENT_TYPES"),
    Field("evt.source", "str", "name of the source plugin that produced it (ebpf_file, ...)"),
    Field("evt.ts", "int", "wall-clock time in ns since the epoch (kernel monotonic clock + boot offset)"),
    Field("proc.pid", "int", "process id (kernel tgid) of the acting process"),
    Field("proc.tid", "int", "thread id (kernel pid) of the acting thread"),
    Field("proc.ppid", "int", "parent process id, from the probe's fork-tracked map (0 when unknown)"),
    Field("proc.uid", "int", "real user id"),
    Field("proc.gid", "int", "real group id"),
    Field("proc.comm", "str", "command name (task comm, at most 15 characters)"),
    Field("proc.cgroup", "int", "cgroup v2 id of the acting task"),
)


@dataclass(frozen=True)
class EventType:
    name: str
    source: str
    description: str
    fields: tuple[Field, ...]


def _t(name: str, source: str, description: str, *fields: tuple[str, str, str]) -> EventType:
    return EventType(name, source, description, tuple(Field(*f) for f in fields))


_NET = (
    ("net.family", "str", "'ipv4' or 'ipv6'"),
    ("net.proto", "str", "'tcp' or 'udp' ('' when unknown: a socket created before the probe started)"),
    ("net.saddr", "str", "local address, text form ('' when the kernel gave none, e.g. UDP connect)"),
    ("net.sport", "int", "local port"),
    ("net.daddr", "str", "remote address, text form"),
    ("net.dport", "int", "remote port"),
)

EVENT_TYPES: Final[dict[str, EventType]] = {
    t.name: t
    for t in (
        # ----------------------------------------------------------------- ebpf_syscall
        _t("syscall", "ebpf_syscall", "one syscall (per-event mode)",
           ("syscall.nr", "int", "x86_64 syscall number"),
           ("syscall.name", "str", "syscall name from the x86_64 table"),
           ("syscall.ret", "int", "return value; present only when return values are traced")),
        _t("syscall_summary", "ebpf_syscall", "per-process syscall activity: every N ms while the process "
           "runs, and once at its exit (summary mode)",
           ("syscall.counts", "dict[str,int]", "syscall name -> count since the last flush"),
           ("syscall.seq", "list[int]", "most recent syscall numbers, oldest first (bounded window)"),
           ("syscall.total", "int", "syscalls counted since the last flush")),
        # ----------------------------------------------------------------- ebpf_network
        _t("connect", "ebpf_network", "outgoing connection attempt (TCP connect, UDP connect)",
           *_NET, ("net.fd", "int", "socket fd in the connecting process (-1 when unknown)"),
           ("net.ret", "int", "connect() result, 0 or -errno (-115 EINPROGRESS for non-blocking)")),
        _t("accept", "ebpf_network", "accepted incoming TCP connection (daddr/dport: the peer)",
           *_NET, ("net.fd", "int", "new socket fd in the accepting process")),
        _t("close", "ebpf_network", "TCP connection closed", *_NET),
        _t("udp_send", "ebpf_network", "first UDP datagram from a process to a new destination", *_NET),
        _t("bind", "ebpf_network", "socket bound to a local address", *_NET[:4],
           ("net.fd", "int", "socket fd"), ("net.ret", "int", "bind() result")),
        _t("listen", "ebpf_network", "socket put into listening state", *_NET[:4],
           ("net.fd", "int", "socket fd"), ("net.backlog", "int", "listen backlog")),
        # ----------------------------------------------------------------- ebpf_security
        _t("exec", "ebpf_security", "program execution (success or failure)",
           ("exec.filename", "str", "on success the kernel's name for the file (the path passed; \"/dev/fd/N\" for an "
                                     "fd exec), on failure the path passed; made absolute from the process's cwd "
                                     "when relative, and normalised (no //, . or ..) when it is decoded (see the "
                                     "probe's caveats)"),
           ("exec.exe", "str", "on success the executed file as /proc/<pid>/exe names it: symlinks resolved, "
                                "\" (deleted)\" appended if it was unlinked, the interpreter for a script; walked "
                                "in the kernel at the exec, else (memfd, path over 255 bytes, no BTF) read from "
                                "/proc when the record's batch is decoded, empty if the process is gone by then; "
                                "empty on failure"),
           ("exec.argv", "list[str]", "argument vector, bounded in count and length"),
           ("exec.ret", "int", "0 on success, -errno on failure"),
           ("exec.memfd", "bool", "the executed file is a memfd (fileless execution)"),
           ("exec.argv_truncated", "bool", "exec.argv is incomplete: more arguments than the probe captures "
                                           "(RAVN_SEC_ARGC), or one that could not be read"),
           ("exec.ld_preload", "str", "LD_PRELOAD in the exec's environment (absent when unset; "
                                      "name=value is cut at 127 bytes)"),
           ("exec.ld_library_path", "str", "LD_LIBRARY_PATH in the exec's environment (absent when unset)"),
           ("exec.ld_audit", "str", "LD_AUDIT in the exec's environment (absent when unset)")),
        _t("fork", "ebpf_security", "new process created (new threads are not reported); proc.* is the parent",
           ("fork.child_pid", "int", "pid (tgid) of the child"),
           ("fork.child_tid", "int", "tid of the child")),
        _t("exit", "ebpf_security", "process exit (last thread of the group)",
           ("exit.code", "int", "exit status as wait() reports it (no core-dump bit); -1 when unknown")),
        _t("cred", "ebpf_security", "privilege change syscall (setuid family, capset)",
           ("cred.call", "str", "setuid|setgid|setreuid|setregid|setresuid|setresgid|setfsuid|setfsgid|capset"),
           ("cred.args", "list[int]", "the id arguments as passed; capset: target pid, effective, permitted, "
                                        "inheritable (64-bit masks)"),
           ("cred.ret", "int", "syscall result")),
        _t("ptrace", "ebpf_security", "ptrace request",
           ("ptrace.request", "int", "request number"),
           ("ptrace.request_name", "str", "PTRACE_ATTACH, PTRACE_POKETEXT, ..."),
           ("ptrace.target", "int", "target pid"),
           ("ptrace.ret", "int", "syscall result")),
        _t("module", "ebpf_security", "kernel module load or unload attempt",
           ("module.call", "str", "init_module|finit_module|delete_module"),
           ("module.name", "str", "module name (delete_module) or empty"),
           ("module.fd", "int", "file descriptor (finit_module) or -1")),
        _t("capable", "ebpf_security", "capability check for an interesting capability",
           ("cap.id", "int", "capability number"),
           ("cap.name", "str", "CAP_SYS_ADMIN, ..."),
           ("cap.ret", "int", "0 when granted, -errno when denied")),
        _t("memfd_create", "ebpf_security", "anonymous memory file created",
           ("memfd.name", "str", "name given to memfd_create"),
           ("memfd.flags", "int", "flags"),
           ("memfd.fd", "int", "returned fd or -errno")),
        _t("bpf", "ebpf_security", "bpf() syscall by a process other than RAVN",
           ("bpf.cmd", "int", "bpf command number"),
           ("bpf.cmd_name", "str", "BPF_PROG_LOAD, BPF_MAP_CREATE, ...")),
        _t("mount", "ebpf_security", "mount syscall",
           ("mount.source", "str", "source"), ("mount.target", "str", "mount point"),
           ("mount.fstype", "str", "filesystem type"), ("mount.flags", "int", "flags"),
           ("mount.ret", "int", "syscall result")),
        _t("unshare", "ebpf_security", "unshare syscall",
           ("ns.flags", "int", "CLONE_NEW* flags"), ("ns.ret", "int", "syscall result")),
        _t("setns", "ebpf_security", "setns syscall",
           ("ns.fd", "int", "namespace fd"), ("ns.flags", "int", "nstype"), ("ns.ret", "int", "syscall result")),
        _t("dup", "ebpf_security", "fd duplicated onto stdin, stdout or stderr (dup2/dup3)",
           ("dup.oldfd", "int", "source fd"), ("dup.newfd", "int", "target fd (0, 1 or 2)"),
           ("dup.ret", "int", "syscall result")),
        # ----------------------------------------------------------------- ebpf_file
        _t("open", "ebpf_file", "open/openat/openat2 of a path under a watched prefix",
           ("file.path", "str", "path as passed (absolute when the caller passed one)"),
           ("file.flags", "int", "open flags"), ("file.mode", "int", "mode for O_CREAT"),
           ("file.ret", "int", "fd or -errno"),
           ("file.write", "bool", "opened for writing, creating or truncating")),
        _t("unlink", "ebpf_file", "unlink/unlinkat/rmdir", ("file.path", "str", "path"),
           ("file.ret", "int", "result")),
        _t("rename", "ebpf_file", "rename/renameat/renameat2", ("file.path", "str", "old path"),
           ("file.newpath", "str", "new path"), ("file.ret", "int", "result")),
        _t("chmod", "ebpf_file", "chmod/fchmodat", ("file.path", "str", "path"),
           ("file.mode", "int", "new mode (setuid 0o4000, setgid 0o2000)"), ("file.ret", "int", "result")),
        _t("chown", "ebpf_file", "chown/lchown/fchownat", ("file.path", "str", "path"),
           ("file.uid", "int", "new owner (-1 unchanged)"), ("file.gid", "int", "new group (-1 unchanged)"),
           ("file.ret", "int", "result")),
        _t("link", "ebpf_file", "hard link", ("file.path", "str", "existing path"),
           ("file.newpath", "str", "new link"), ("file.ret", "int", "result")),
        _t("symlink", "ebpf_file", "symbolic link", ("file.path", "str", "target the link points to"),
           ("file.newpath", "str", "link path"), ("file.ret", "int", "result")),
        _t("truncate", "ebpf_file", "truncate by path", ("file.path", "str", "path"),
           ("file.size", "int", "new length"), ("file.ret", "int", "result")),
        # ----------------------------------------------------------------- ebpf_security (ids after the file ones)
        _t("setsid", "ebpf_security", "a process became a session leader (successful setsid); the process tree "
                                      "keeps the session, the first key incidents join alerts by",
           ("setsid.sid", "int", "the new session id (the caller's pid)")),
        _t("process_vm", "ebpf_security", "another process's memory read or written with process_vm_readv/writev "
                                          "(calls on the caller's own pid are not reported; a (caller, target, "
                                          "call) at most once per process_vm_window_ms, failed calls aside)",
           ("process_vm.call", "str", "process_vm_readv|process_vm_writev"),
           ("process_vm.target", "int", "pid whose memory is accessed"),
           ("process_vm.ret", "int", "bytes transferred or -errno")),
        _t("prctl", "ebpf_security", "prctl PR_SET_NAME (the thread renames itself) or PR_SET_MM (argv, env or exe "
                                     "link moved); other options are not reported",
           ("prctl.option", "str", "PR_SET_NAME|PR_SET_MM"),
           ("prctl.name", "str", "PR_SET_NAME: the new name as passed (the kernel keeps 15 bytes); else empty"),
           ("prctl.arg", "int", "PR_SET_MM: the sub-option (PR_SET_MM_ARG_START 8, ... EXE_FILE 13); else 0"),
           ("prctl.ret", "int", "syscall result")),
        _t("socket", "ebpf_security", "a packet or raw IP socket created (AF_PACKET, SOCK_PACKET, SOCK_RAW of "
                                      "AF_INET/AF_INET6): sniffing or crafted packets; other sockets (netlink "
                                      "SOCK_RAW included) are not reported",
           ("socket.family", "str", "AF_PACKET, AF_INET, AF_INET6, ... (the number when unnamed)"),
           ("socket.type", "str", "SOCK_RAW, SOCK_DGRAM, SOCK_PACKET, ... (without SOCK_NONBLOCK/SOCK_CLOEXEC)"),
           ("socket.protocol", "int", "protocol argument (ETH_P_* in network byte order for AF_PACKET)"),
           ("socket.ret", "int", "the new fd or -errno")),
        _t("chattr", "ebpf_file", "file attributes set with the FS_IOC_SETFLAGS or FS_IOC_FSSETXATTR ioctl (what "
                                  "chattr does: immutable, append-only...), on any file; other ioctls are not reported",
           ("file.path", "str", "the file, from its fd when the record is decoded (empty if already closed)"),
           ("file.attr_flags", "int", "the new attribute word as FS_*_FL bits (FS_IMMUTABLE_FL 0x10, FS_APPEND_FL "
                                      "0x20; an fsxattr's FS_XFLAG_IMMUTABLE/APPEND translated to them)"),
           ("file.immutable", "bool", "the file is left immutable (chattr +i, or any change that keeps i)"),
           ("file.append_only", "bool", "the file is left append-only (chattr +a)"),
           ("file.ret", "int", "ioctl result")),
    )
}

# Fields analyzers may read that come from the process tree, not from the event.
PROCESS_TREE_FIELDS: Final[tuple[Field, ...]] = (
    Field("proc.exe", "str", "executable path of the process (last exec)"),
    Field("proc.args", "list[str]", "argv of the last exec"),
    Field("proc.pname", "str", "parent's comm"),
    Field("proc.pexe", "str", "parent's exe"),
    Field("proc.anames", "list[str]", "comm of every ancestor, parent first"),
    Field("proc.aexes", "list[str]", "exe of every ancestor, parent first"),
    Field("proc.exename", "str", "basename of proc.exe (the executed file's name: a process cannot change it, "
                                 "unlike proc.comm, but anyone can run a copy named like a daemon)"),
    Field("proc.trusted_name", "str", "basename of proc.exe when proc.exe lies under a root-owned system directory "
                                      "(SYSTEM_EXE_DIRS: /usr/, /bin/, /sbin/, /lib*/, /opt/, /etc/, /snap/), else "
                                      "absent: what allowlists key on (prctl or /proc/self/comm cannot forge it, a "
                                      "copy in /tmp does not get it)"),
    Field("proc.ptrusted_name", "str", "proc.trusted_name of the parent"),
    Field("proc.atrusted_names", "list[str]", "proc.trusted_name of every ancestor that has one, parent first"),
)

#: Directories whose programs count as installed (root-owned on a sane host; writes there are detected by the
#: default rules): proc.trusted_name is the executable's basename only for programs under one of them.
SYSTEM_EXE_DIRS: Final[tuple[str, ...]] = (
    "/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/opt/", "/etc/", "/snap/",
)


def field_names(event_type: str) -> set[str]:
    """All field names an event of ``event_type`` carries (common ones included)."""
    return {f.name for f in COMMON_FIELDS} | {f.name for f in EVENT_TYPES[event_type].fields}


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with its control characters escaped as Python does (a newline as ``\\n``, ESC as ``\\x1b``).

    For every line a human or a line-based tool reads (the stdout sink, ``ravn status``): event fields (paths,
    comms, argv) come from other users' processes, and a newline in a file name must not forge a second line.
    """
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


# ------------------------------------------------------------------------------------------ boundary validation
# Events that enter from outside the process (Redis entries, replay files) are checked against the schema before
# any analyzer sees them. ``validate_event`` is the definition: one dict lookup and a type test per field, from a
# table built here once. The Redis transport checks its msgpack batches in C with an equivalent msgspec type
# built from the same tables (ravn_transport_redis/codec.py; a test keeps the two in agreement) and calls
# ``validate_event`` only to name what is wrong. Events from this host's own probes are not checked.
MAX_STR: Final = 16_384  # characters in one str value (paths are at most PATH_MAX, 4096)
MAX_ITEMS: Final = 4_096  # items in one list or dict value (argv, syscall.seq, syscall.counts are bounded lower)
MAX_FIELDS: Final = 128  # fields in one event (the largest type, exec, has 19)
INT_MIN: Final = -(2**63)  # ints are signed 64-bit
INT_MAX: Final = 2**63 - 1
_SCALARS: Final = {"int": int, "str": str, "bool": bool}

# field name -> int | str | bool | "list[str]" | "list[int]" | "dict[str,int]"; one type per name across all
# event types (a test checks that no two event types declare a field with different types)
FIELD_TYPES: Final[dict[str, type | str]] = {
    f.name: _SCALARS.get(f.type, f.type) for t in EVENT_TYPES.values() for f in (*COMMON_FIELDS, *t.fields)
}
TREE_ONLY_FIELDS: Final = frozenset(f.name for f in PROCESS_TREE_FIELDS)


def _a(t: type) -> str:
    """``"a list"``, ``"an int"``: the type of a bad value, for reasons."""
    name = t.__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _container_problem(value: Any, want: str) -> str | None:
    """Why ``value`` is not a valid ``want`` (a container type of the schema), or None."""
    if want == "dict[str,int]":
        if type(value) is not dict:
            return f"{_a(type(value))}, want {want}"
        if len(value) > MAX_ITEMS:
            return f"a dict of {len(value)} items (at most {MAX_ITEMS})"
        for k, v in value.items():
            if type(k) is not str or len(k) > MAX_STR:
                return f"key {str(k)[:40]!r}: want a str of at most {MAX_STR} characters"
            if type(v) is not int:
                return f"item {k[:40]!r} is {_a(type(v))}, want int"
            if not INT_MIN <= v <= INT_MAX:
                return f"item {k[:40]!r}: {str(v)[:40]} does not fit signed 64 bits"
        return None
    if type(value) is not list:
        return f"{_a(type(value))}, want {want}"
    if len(value) > MAX_ITEMS:
        return f"a list of {len(value)} items (at most {MAX_ITEMS})"
    if want == "list[str]":
        for i, v in enumerate(value):
            if type(v) is not str:
                return f"item {i} is {_a(type(v))}, want str"
            if len(v) > MAX_STR:
                return f"item {i} is a str of {len(v)} characters (at most {MAX_STR})"
        return None
    for i, v in enumerate(value):
        if type(v) is not int:
            return f"item {i} is {_a(type(v))}, want int"
        if not INT_MIN <= v <= INT_MAX:
            return f"item {i}: {str(v)[:40]} does not fit signed 64 bits"
    return None


def validate_event(event: Any) -> str | None:
    """Why ``event`` does not fit the event schema, or None when it does.

    Checked: a dict whose ``evt.type`` is a str naming one of ``EVENT_TYPES``; every field of the schema that is
    present has its declared type (``bool`` is not an ``int``, ints fit signed 64 bits, lists and dicts hold
    items of their declared type); str values are at most ``MAX_STR`` characters, lists and dicts at most
    ``MAX_ITEMS`` items, an event at most ``MAX_FIELDS`` fields. Fields outside the schema are allowed when their
    value is a scalar (str, int, float, bool, None; bounded the same way), except the fields the process tree
    provides (``proc.exe``, ...), which an event may not carry. Fields are not required (a missing one reads as
    absent), and a field of another event type is checked against its declared type like any other. The reason
    names the field, e.g. ``"proc.pid: a list, want int"``.
    """
    if type(event) is not dict:
        return f"not an event: {_a(type(event))}, want a mapping of field names to values"
    etype = event.get("evt.type")
    if type(etype) is not str:
        return "evt.type: missing" if etype is None else f"evt.type: {_a(type(etype))}, want str"
    if etype not in EVENT_TYPES:
        return f"evt.type: unknown event type {etype[:60]!r}"
    if len(event) > MAX_FIELDS:
        return f"{len(event)} fields (at most {MAX_FIELDS})"
    table = FIELD_TYPES
    for name, value in event.items():
        vt = type(value)
        want = table.get(name)
        if vt is want:
            if vt is str:
                if len(value) > MAX_STR:
                    return f"{name}: a str of {len(value)} characters (at most {MAX_STR})"
            elif vt is int and not INT_MIN <= value <= INT_MAX:
                return f"{name}: {str(value)[:40]} does not fit signed 64 bits"
            continue
        if want is None:  # outside the schema
            if type(name) is not str:
                return f"field name {str(name)[:40]!r} is not a str"
            if name in TREE_ONLY_FIELDS:
                return f"{name}: comes from the process tree, an event may not carry it"
            if vt is str:
                if len(value) > MAX_STR:
                    return f"{name}: a str of {len(value)} characters (at most {MAX_STR})"
            elif vt is int:
                if not INT_MIN <= value <= INT_MAX:
                    return f"{name}: {str(value)[:40]} does not fit signed 64 bits"
            elif vt is not float and vt is not bool and value is not None:
                return f"{name}: {_a(vt)} in a field outside the schema (str, int, float, bool or null only)"
            continue
        if isinstance(want, str):
            problem = _container_problem(value, want)
            if problem is not None:
                return f"{name}: {problem}"
            continue
        return f"{name}: {_a(vt)}, want {want.__name__}"
    return None
