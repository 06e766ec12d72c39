"""ctypes mirrors of the security probe's structs in ``bpf/include/ravn_events.h`` and their decoders.

Each decoder turns one ring-buffer record into a flat event dict (``ravn_core/events.py`` schema). Header fields
come from ``BccProbe.event_header()``; the rest from the record.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from ravn_core.bpf.abi import EVENT_TYPE_IDS, RavnHdr, unpacker
from ravn_core.bpf.paths import AT_FDCWD, normalize_path, resolve_path
from ravn_core.bpf.ring import Decoder
from ravn_core.events import Event
from ravn_ebpf_security.names import (
    CRED_CALLS,
    MODULE_CALLS,
    PRCTL_OPTIONS,
    PROCESS_VM_CALLS,
    SOCKET_FAMILIES,
    SOCKET_TYPES,
    bpf_command_name,
    capability_name,
    ptrace_request_name,
)

PATH_LEN: Final = 256  # RAVN_SEC_PATH_LEN
ARGC: Final = 16  # RAVN_SEC_ARGC
ARG_LEN: Final = 128  # RAVN_SEC_ARG_LEN
STR_LEN: Final = 128  # RAVN_SEC_STR_LEN
FSTYPE_LEN: Final = 32  # RAVN_SEC_FSTYPE_LEN

# ravn_exec_event.flags
EXEC_FD: Final = 0x1
EXEC_MEMFD: Final = 0x2
EXEC_ARGV_TRUNC: Final = 0x4
EXEC_NO_ARGS: Final = 0x8
EXEC_LD_ENV: Final = 0x10
EXEC_CWD: Final = 0x20
EXEC_EXE: Final = 0x40
ENVC: Final = 3  # RAVN_SEC_ENVC
#: loader variable -> the exec field that carries its value
LD_FIELDS: Final = {"LD_PRELOAD": "exec.ld_preload", "LD_LIBRARY_PATH": "exec.ld_library_path",
                    "LD_AUDIT": "exec.ld_audit"}


class ExecEvent(ctypes.Structure):
    """``struct ravn_exec_event`` (3024 bytes). ``argv`` is ``char[16][128]`` and ``env`` ``char[3][128]``,
    mirrored flat."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("ret", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("argc", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("filename", ctypes.c_char * PATH_LEN),
        ("exe", ctypes.c_char * PATH_LEN),
        ("argv", ctypes.c_char * (ARGC * ARG_LEN)),
        ("envc", ctypes.c_uint32),
        ("__pad", ctypes.c_uint32),
        ("env", ctypes.c_char * (ENVC * ARG_LEN)),
    ]


class SecEvent(ctypes.Structure):
    """``struct ravn_sec_event`` (248 bytes): fork, exit, cred, ptrace, module, capable, memfd_create, bpf,
    unshare, setns, dup, setsid."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("args", ctypes.c_int64 * 6),
        ("ret", ctypes.c_int64),
        ("nr", ctypes.c_uint32),
        ("nargs", ctypes.c_uint32),
        ("str", ctypes.c_char * STR_LEN),
    ]


class MountEvent(ctypes.Structure):
    """``struct ravn_mount_event`` (488 bytes)."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("ret", ctypes.c_int64),
        ("flags", ctypes.c_uint64),
        ("source", ctypes.c_char * STR_LEN),
        ("target", ctypes.c_char * PATH_LEN),
        ("fstype", ctypes.c_char * FSTYPE_LEN),
    ]


#: the shortest exec record the kernel sends: everything before argv
EXEC_MIN_SIZE: Final = ExecEvent.argv.offset


class _ExecHead(ctypes.Structure):
    """The fixed part of ``struct ravn_exec_event`` (before argv), which every exec record has: the decoder unpacks
    only this and reads the argv slots in use (and env when flagged) from the record itself."""

    _fields_ = ExecEvent._fields_[:7]


if ctypes.sizeof(_ExecHead) != EXEC_MIN_SIZE:
    raise TypeError("_ExecHead must end where ExecEvent.argv starts")

#: C struct name -> mirror, checked by the ABI test
MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    "ravn_exec_event": ExecEvent,
    "ravn_sec_event": SecEvent,
    "ravn_mount_event": MountEvent,
}
#: #defines of the security section the decoders rely on (checked by the ABI test)
CONSTANTS: Final[dict[str, int]] = {
    "RAVN_SEC_PATH_LEN": PATH_LEN, "RAVN_SEC_ARGC": ARGC, "RAVN_SEC_ARG_LEN": ARG_LEN, "RAVN_SEC_STR_LEN": STR_LEN,
    "RAVN_SEC_FSTYPE_LEN": FSTYPE_LEN, "RAVN_EXEC_FD": EXEC_FD, "RAVN_EXEC_MEMFD": EXEC_MEMFD,
    "RAVN_EXEC_ARGV_TRUNC": EXEC_ARGV_TRUNC, "RAVN_EXEC_NO_ARGS": EXEC_NO_ARGS, "RAVN_EXEC_LD_ENV": EXEC_LD_ENV,
    "RAVN_EXEC_CWD": EXEC_CWD, "RAVN_EXEC_EXE": EXEC_EXE,
    "RAVN_SEC_ENVC": ENVC,
}

Header = Callable[[tuple[Any, ...]], Event]


def _str(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _exe(pid: int) -> str:
    """The running program of ``pid`` (a symlink's target, not its name), or "" when the process is gone."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class ExeLookups:
    """``exec.exe`` of the successful execs of one batch, read from ``/proc/<pid>/exe`` once the batch is decoded.

    The exec decoder hands each successful exec here (:meth:`add`) instead of reading the link at once; the exit
    decoder reports each process exit of the same batch (:meth:`exited`); the source calls :meth:`resolve` when the
    batch is decoded, before it hands the batch on. A process whose exit record came in the same batch has passed
    ``sched_process_exit``, after which the kernel drops its memory map and the link reads ENOENT: its
    ``exec.exe`` stays "", what the readlink would give by then, without paying for it (a failed ``/proc/<pid>``
    lookup and an OSError, ~10 us; most processes of an exec storm). Every other exec is read as before, a few
    microseconds later at most: a program that keeps running still shows the file a symlink leads to.
    ``counters`` gets ``exec_exe_read`` (links read) and ``exec_exe_exited`` (not read: exited in the batch)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.waiting: dict[int, list[Event]] = {}
        self.counters = counters
        for k in ("exec_exe_read", "exec_exe_exited"):
            counters.setdefault(k, 0)

    def add(self, pid: int, ev: Event) -> None:
        evs = self.waiting.get(pid)
        if evs is None:
            self.waiting[pid] = [ev]
        else:
            evs.append(ev)  # execs again in the same batch: the link names the last program for each, as before

    def exited(self, pid: int) -> None:
        evs = self.waiting.pop(pid, None)
        if evs is not None:
            self.counters["exec_exe_exited"] += len(evs)

    def resolve(self) -> None:
        waiting = self.waiting
        if not waiting:
            return
        for pid, evs in waiting.items():
            exe = _exe(pid)
            for ev in evs:
                ev["exec.exe"] = exe
        self.counters["exec_exe_read"] += len(waiting)
        waiting.clear()


def exec_decoder(header: Header, counters: dict[str, int], exes: ExeLookups | None = None) -> Decoder:
    """``ravn_exec_event`` -> exec event.

    A relative ``exec.filename`` (``cd /tmp && ./x``: the kernel keeps the name as passed) comes joined with the
    cwd the kernel kept for the process (from its chdir calls, ``RAVN_EXEC_CWD``: exact at the exec, counted
    ``exec_relative_from_kernel_cwd``). Without one (after an fchdir, or for an execveat dirfd)
    it is made absolute against ``/proc/<pid>/cwd``, or the dirfd, when the record is decoded; an absolute name
    with "//", "." or ".." components is normalised, so path rules (``/tmp/``, ``/dev/shm/``) see where the
    program lives. After a successful exec the pid is the new program, whose cwd is the caller's; after a failed
    one it is the caller. A process gone by then keeps the relative name (``exec_relative_unresolved``).
    ``exec.exe`` of a successful exec is the file a symlink leads to: walked by the kernel at the exec
    (``RAVN_EXEC_EXE``, counted ``exec_exe_from_kernel``), so right also for a program gone before its record is
    read; else (no BTF, a memfd or other file outside the mount tree, a path over 255 bytes) read from
    ``/proc/<pid>/exe``, empty when the process is gone: at once without ``exes``, else when the batch is decoded
    (:class:`ExeLookups`: not for a process whose exit came in the same batch)."""
    unpack_head = unpacker(_ExecHead).unpack_from
    full = ctypes.sizeof(ExecEvent)
    argv_off, envc_off, env_off = ExecEvent.argv.offset, ExecEvent.envc.offset, ExecEvent.env.offset
    u32 = struct.Struct("<I").unpack_from
    for k in ("exec_relative_from_kernel_cwd", "exec_relative_resolved", "exec_relative_unresolved",
              "exec_exe_from_kernel"):
        counters.setdefault(k, 0)

    def absolute(pid: int, fd: int, filename: str) -> str:
        p = resolve_path(pid, fd if fd >= 0 else AT_FDCWD, filename)
        if p is None:
            counters["exec_relative_unresolved"] += 1
            return filename
        counters["exec_relative_resolved"] += 1
        return p

    def decode(buf: bytes) -> Event:
        size = len(buf)  # the kernel sends only the argv slots in use (all of the record with RAVN_EXEC_LD_ENV)
        if not EXEC_MIN_SIZE <= size <= full:
            raise ValueError(f"exec record of {size} bytes")
        v = unpack_head(buf)  # 9 header values, ret, flags, argc, fd, filename, exe
        ev = header(v)
        argc = min(v[11], ARGC)
        # argv slots beyond the record's end (a cut record) read as empty, as zeros would
        argv = bytes(buf[argv_off:argv_off + argc * ARG_LEN]) if argc else b""
        filename = _str(v[13])
        if filename and filename[0] != "/" and not v[10] & EXEC_FD:
            filename = absolute(v[1], v[12], filename)
        elif "/." in filename or "//" in filename:
            filename = normalize_path(filename)  # /usr/../dev/shm/x is /dev/shm/x to the exec path rules
        if v[10] & EXEC_CWD:
            counters["exec_relative_from_kernel_cwd"] += 1
        ev["exec.filename"] = filename
        if v[9] != 0:
            ev["exec.exe"] = ""
        elif v[10] & EXEC_EXE:
            ev["exec.exe"] = _str(v[14])
            counters["exec_exe_from_kernel"] += 1
        elif exes is None:
            ev["exec.exe"] = _exe(v[1])
        else:
            ev["exec.exe"] = ""  # filled in by exes.resolve() when the batch is decoded
            exes.add(v[1], ev)
        ev["exec.argv"] = [_str(argv[i:i + ARG_LEN]) for i in range(0, argc * ARG_LEN, ARG_LEN)]
        ev["exec.ret"] = v[9]
        ev["exec.memfd"] = bool(v[10] & EXEC_MEMFD)
        ev["exec.argv_truncated"] = bool(v[10] & EXEC_ARGV_TRUNC)
        if v[10] & EXEC_LD_ENV and size == full:
            env = bytes(buf[env_off:])
            for i in range(min(u32(buf, envc_off)[0], ENVC)):
                name, _, value = _str(env[i * ARG_LEN:(i + 1) * ARG_LEN]).partition("=")
                if name in LD_FIELDS:
                    ev[LD_FIELDS[name]] = value
        return ev

    return decode


def mount_decoder(header: Header) -> Decoder:
    """``ravn_mount_event`` -> mount event."""
    unpack = unpacker(MountEvent).unpack

    def decode(buf: bytes) -> Event:
        v = unpack(buf)  # 9 header values, ret, flags, source, target, fstype
        ev = header(v)
        ev["mount.source"] = _str(v[11])
        ev["mount.target"] = _str(v[12])
        ev["mount.fstype"] = _str(v[13])
        ev["mount.flags"] = v[10]
        ev["mount.ret"] = v[9]
        return ev

    return decode


# positions in the unpacked SecEvent tuple
_A0, _A1, _A2, _A3 = 9, 10, 11, 12
_RET, _NR, _NARGS, _STR = 15, 16, 17, 18

Fields = Callable[[tuple[Any, ...], Event], None]


def _fork(v: tuple[Any, ...], ev: Event) -> None:
    ev["fork.child_pid"] = v[_A0]
    ev["fork.child_tid"] = v[_A1]


def _exit(v: tuple[Any, ...], ev: Event) -> None:
    ev["exit.code"] = v[_A0]


def _cred(v: tuple[Any, ...], ev: Event) -> None:
    nr = v[_NR]
    ev["cred.call"] = CRED_CALLS.get(nr, str(nr))
    ev["cred.args"] = list(v[_A0:_A0 + min(v[_NARGS], 4)])
    ev["cred.ret"] = v[_RET]


def _ptrace(v: tuple[Any, ...], ev: Event) -> None:
    ev["ptrace.request"] = v[_A0]
    ev["ptrace.request_name"] = ptrace_request_name(v[_A0])
    ev["ptrace.target"] = v[_A1]
    ev["ptrace.ret"] = v[_RET]


def _module(v: tuple[Any, ...], ev: Event) -> None:
    nr = v[_NR]
    ev["module.call"] = MODULE_CALLS.get(nr, str(nr))
    ev["module.name"] = _str(v[_STR])
    ev["module.fd"] = v[_A0]


def _capable(v: tuple[Any, ...], ev: Event) -> None:
    ev["cap.id"] = v[_A0]
    ev["cap.name"] = capability_name(v[_A0])
    ev["cap.ret"] = v[_RET]


def _memfd(v: tuple[Any, ...], ev: Event) -> None:
    ev["memfd.name"] = _str(v[_STR])
    ev["memfd.flags"] = v[_A0]
    ev["memfd.fd"] = v[_RET]


def _bpf(v: tuple[Any, ...], ev: Event) -> None:
    ev["bpf.cmd"] = v[_A0]
    ev["bpf.cmd_name"] = bpf_command_name(v[_A0])


def _unshare(v: tuple[Any, ...], ev: Event) -> None:
    ev["ns.flags"] = v[_A0]
    ev["ns.ret"] = v[_RET]


def _setns(v: tuple[Any, ...], ev: Event) -> None:
    ev["ns.fd"] = v[_A0]
    ev["ns.flags"] = v[_A1]
    ev["ns.ret"] = v[_RET]


def _dup(v: tuple[Any, ...], ev: Event) -> None:
    ev["dup.oldfd"] = v[_A0]
    ev["dup.newfd"] = v[_A1]
    ev["dup.ret"] = v[_RET]


def _setsid(v: tuple[Any, ...], ev: Event) -> None:
    ev["setsid.sid"] = v[_RET]


def _process_vm(v: tuple[Any, ...], ev: Event) -> None:
    nr = v[_NR]
    ev["process_vm.call"] = PROCESS_VM_CALLS.get(nr, str(nr))
    ev["process_vm.target"] = v[_A0]
    ev["process_vm.ret"] = v[_RET]


def _socket(v: tuple[Any, ...], ev: Event) -> None:
    family, stype = v[_A0], v[_A1]
    ev["socket.family"] = SOCKET_FAMILIES.get(family, str(family))
    ev["socket.type"] = SOCKET_TYPES.get(stype & 0xF, str(stype & 0xF))
    ev["socket.protocol"] = v[_A2]
    ev["socket.ret"] = v[_RET]


def _prctl(v: tuple[Any, ...], ev: Event) -> None:
    option = v[_A0]
    ev["prctl.option"] = PRCTL_OPTIONS.get(option, str(option))
    ev["prctl.name"] = _str(v[_STR])
    ev["prctl.arg"] = v[_A1]
    ev["prctl.ret"] = v[_RET]


#: event type carried by ravn_sec_event -> its field builder
SEC_FIELDS: Final[dict[str, Fields]] = {
    "fork": _fork, "exit": _exit, "cred": _cred, "ptrace": _ptrace, "module": _module, "capable": _capable,
    "memfd_create": _memfd, "bpf": _bpf, "unshare": _unshare, "setns": _setns, "dup": _dup,
    "setsid": _setsid, "process_vm": _process_vm, "prctl": _prctl, "socket": _socket,
}


def sec_decoder(header: Header, fields: Fields) -> Decoder:
    """``ravn_sec_event`` -> the event of one type (``fields`` adds its fields)."""
    unpack = unpacker(SecEvent).unpack

    def decode(buf: bytes) -> Event:
        v = unpack(buf)  # 9 header values, args[6], ret, nr, nargs, str
        ev = header(v)
        fields(v, ev)
        return ev

    return decode


def exit_decoder(header: Header, exes: ExeLookups) -> Decoder:
    """``ravn_sec_event`` of a process exit -> exit event (the ``sec_decoder`` of ``_exit``); tells ``exes`` the
    process is gone."""
    exit_event = sec_decoder(header, _exit)
    exited = exes.exited

    def decode(buf: bytes) -> Event:
        ev = exit_event(buf)
        exited(ev["proc.pid"])
        return ev

    return decode


def decoders(header: Header, counters: dict[str, int], exes: ExeLookups | None = None) -> dict[int, Decoder]:
    """Event type id -> decoder, for every event type the probe emits (``counters`` and ``exes``: see
    exec_decoder; with ``exes`` the caller calls ``exes.resolve()`` after each batch)."""
    out = {EVENT_TYPE_IDS["exec"]: exec_decoder(header, counters, exes),
           EVENT_TYPE_IDS["mount"]: mount_decoder(header)}
    for name, fields in SEC_FIELDS.items():
        out[EVENT_TYPE_IDS[name]] = sec_decoder(header, fields)
    if exes is not None:
        out[EVENT_TYPE_IDS["exit"]] = exit_decoder(header, exes)
    return out
