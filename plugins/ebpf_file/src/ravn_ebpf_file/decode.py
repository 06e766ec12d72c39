"""Decoding of ``struct ravn_file_event`` (bpf/include/ravn_events.h) into flat event dicts.

Records flagged relative (``RAVN_FILE_F_RELATIVE``/``_NEWRELATIVE``) are resolved here against
``/proc/<pid>/cwd`` (dirfd AT_FDCWD) or ``/proc/<pid>/fd/<dirfd>``, and absolute paths flagged not normal
(``RAVN_FILE_F_NORMALIZE``/``_NEWNORMALIZE``: "//", "." or ".." components) are normalised; both are then
filtered with the same prefixes as the kernel. ``fchmod`` records (``RAVN_FILE_F_FD``) get their path from
``/proc/<pid>/fd/<fd>``. A decoder returns :data:`DROP` for a record that the prefixes reject after resolution,
or that cannot be resolved.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any, Final

from ravn_core.bpf.abi import EVENT_TYPE_IDS, RavnHdr, unpacker
from ravn_core.bpf.paths import normalize_path, resolve_path
from ravn_core.events import Event
from ravn_ebpf_file.config import PATH_MAX, PathRules

F_MATCHED: Final = 0x01
F_RELATIVE: Final = 0x02
F_NEWRELATIVE: Final = 0x04
F_SETID: Final = 0x08
F_ALL: Final = 0x10
F_FD: Final = 0x20
F_TRUNCATED: Final = 0x40
F_NORMALIZE: Final = 0x80
F_NEWNORMALIZE: Final = 0x100
F_PERM: Final = 0x200
F_CWD: Final = 0x400
FS_IOC_FSSETXATTR: Final = 0x401C5820  # ioctl commands a chattr record carries in flags (with FS_IOC_SETFLAGS)
FS_IMMUTABLE_FL: Final = 0x10
FS_APPEND_FL: Final = 0x20
FS_XFLAG_IMMUTABLE: Final = 0x8
FS_XFLAG_APPEND: Final = 0x10
WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

#: what the decoders count (in the source's health counters)
COUNTERS: Final = ("relative_resolved", "relative_from_kernel_cwd", "relative_unresolved", "relative_filtered",
                   "normalized", "normalized_filtered")

#: returned by a decoder for a record user space filtered out; the source drops it (identity compared)
DROP: Final[Event] = {}


class FileEvent(ctypes.Structure):
    """Mirror of ``struct ravn_file_event`` (616 bytes)."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("ret", ctypes.c_int64),
        ("size", ctypes.c_int64),
        ("flags", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("dirfd", ctypes.c_int32),
        ("newdirfd", ctypes.c_int32),
        ("why", ctypes.c_uint32),
        ("__pad", ctypes.c_uint32),
        ("path", ctypes.c_char * PATH_MAX),
        ("newpath", ctypes.c_char * PATH_MAX),
    ]


MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {"ravn_file_event": FileEvent}
_FILE: Final = unpacker(FileEvent)
SHORT_SIZE: Final = FileEvent.newpath.offset  # RAVN_FILE_SHORT_SIZE: records without a newpath stop here
_PAD_NEWPATH: Final = bytes(ctypes.sizeof(FileEvent) - SHORT_SIZE)
_RET, _SIZE, _FLAGS, _MODE, _UID, _GID, _DIRFD, _NEWDIRFD, _WHY, _PAD, _PATH, _NEWPATH = range(9, 21)


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def make_decoders(header: Callable[[tuple[Any, ...]], Event], rules: PathRules, all_types: frozenset[str],
                  counters: dict[str, int]) -> dict[int, Callable[[bytes], Event]]:
    """Event type id -> decoder(record bytes) -> event dict (or DROP), for the eight file event types.

    ``counters`` gets ``relative_resolved``, ``relative_unresolved``, ``relative_filtered`` (relative paths) and
    ``normalized``, ``normalized_filtered`` (absolute paths with "//", "." or ".." components)."""
    unpack = _FILE.unpack
    for k in COUNTERS:
        counters.setdefault(k, 0)

    def paths(v: tuple[Any, ...], etype: str) -> tuple[str, str] | None:
        why = v[_WHY]
        path, newpath = cstr(v[_PATH]), cstr(v[_NEWPATH])
        if why & F_FD:
            try:
                path = os.readlink(f"/proc/{v[1]}/fd/{v[_DIRFD]}")
            except OSError:
                path = ""
            return path, newpath
        if not why & (F_RELATIVE | F_NEWRELATIVE | F_NORMALIZE | F_NEWNORMALIZE):
            return path, newpath
        if why & F_NORMALIZE:
            path = normalize_path(path)
        if why & F_NEWNORMALIZE:
            newpath = normalize_path(newpath)
        if why & F_CWD:  # a relative one-path event and the cwd the kernel kept for the process: exact at the syscall
            path, newpath = normalize_path(f"{newpath.rstrip('/')}/{path}"), ""
            why &= ~(F_RELATIVE | F_CWD)
            counters["relative_from_kernel_cwd"] += 1
        if why & (F_RELATIVE | F_NEWRELATIVE):
            both = [path, newpath]
            for i, (flag, dirfd) in enumerate(((F_RELATIVE, v[_DIRFD]), (F_NEWRELATIVE, v[_NEWDIRFD]))):
                if why & flag:
                    p = resolve_path(v[1], dirfd, both[i])
                    if p is None:
                        counters["relative_unresolved"] += 1
                        return None if not why & (F_SETID | F_PERM | F_ALL) else (both[0], both[1])
                    both[i] = p
            path, newpath = both
            counters["relative_resolved"] += 1
        normalized = why & (F_NORMALIZE | F_NEWNORMALIZE)
        if normalized:
            counters["normalized"] += 1
        # the kernel's match on a path as passed stands, unless that path was not normal
        if why & (F_SETID | F_PERM) or (why & F_MATCHED and not normalized) or etype in all_types:
            return path, newpath
        write = bool(v[_FLAGS] & WRITE_FLAGS) if etype == "open" else True
        if not rules.wanted(etype, path, newpath or None, write, False, v[_MODE]):
            counters["normalized_filtered" if normalized else "relative_filtered"] += 1
            return None
        return path, newpath

    def decoder(etype: str, extra: Callable[[Event, tuple[Any, ...]], None]) -> Callable[[bytes], Event]:
        def decode(buf: bytes) -> Event:
            v = unpack(buf if len(buf) > SHORT_SIZE else bytes(buf) + _PAD_NEWPATH)
            p = paths(v, etype)
            if p is None:
                return DROP
            e = header(v)
            e["file.path"] = p[0]
            e["file.ret"] = v[_RET]
            extra(e, v)
            if "file.newpath" in e:
                e["file.newpath"] = p[1]
            return e

        return decode

    def open_(e: Event, v: tuple[Any, ...]) -> None:
        e["file.flags"] = v[_FLAGS]
        e["file.mode"] = v[_MODE]
        e["file.write"] = bool(v[_FLAGS] & WRITE_FLAGS)

    def newpath(e: Event, v: tuple[Any, ...]) -> None:
        e["file.newpath"] = ""

    def chmod(e: Event, v: tuple[Any, ...]) -> None:
        e["file.mode"] = v[_MODE]

    def chown(e: Event, v: tuple[Any, ...]) -> None:
        e["file.uid"] = ctypes.c_int32(v[_UID]).value
        e["file.gid"] = ctypes.c_int32(v[_GID]).value

    def truncate(e: Event, v: tuple[Any, ...]) -> None:
        e["file.size"] = v[_SIZE]

    def nothing(e: Event, v: tuple[Any, ...]) -> None:
        pass

    def chattr(e: Event, v: tuple[Any, ...]) -> None:
        attrs = v[_MODE]
        if v[_FLAGS] == FS_IOC_FSSETXATTR:  # fsx_xflags: translate the two that matter to FS_*_FL bits
            attrs = (FS_IMMUTABLE_FL if attrs & FS_XFLAG_IMMUTABLE else 0) | (
                FS_APPEND_FL if attrs & FS_XFLAG_APPEND else 0)
        e["file.attr_flags"] = attrs
        e["file.immutable"] = bool(attrs & FS_IMMUTABLE_FL)
        e["file.append_only"] = bool(attrs & FS_APPEND_FL)

    ids = EVENT_TYPE_IDS
    return {
        ids["open"]: decoder("open", open_),
        ids["unlink"]: decoder("unlink", nothing),
        ids["rename"]: decoder("rename", newpath),
        ids["chmod"]: decoder("chmod", chmod),
        ids["chown"]: decoder("chown", chown),
        ids["link"]: decoder("link", newpath),
        ids["symlink"]: decoder("symlink", newpath),
        ids["truncate"]: decoder("truncate", truncate),
        ids["chattr"]: decoder("chattr", chattr),
    }
