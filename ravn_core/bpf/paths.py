"""Path normalisation for decoders: lexical normalisation, and relative paths from records made absolute through
/proc the way the kernel saw them."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Final

#: the dirfd of a path relative to the working directory (openat, execveat, ...)
AT_FDCWD: Final = -100


def normalize_path(path: str) -> str:
    """An absolute path without empty, "." or ".." components, lexically (as ``os.path.normpath``, but with one
    leading slash where POSIX lets normpath keep two)."""
    p = os.path.normpath(path)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def resolve_path(pid: int, dirfd: int, path: str) -> str | None:
    """A relative ``path`` from a record made absolute the way the kernel saw it from ``pid``: joined with
    ``/proc/<pid>/cwd`` (``dirfd`` AT_FDCWD) or ``/proc/<pid>/fd/<dirfd>``. None when /proc no longer has the
    process or the fd, or the fd is not a directory. Read when the record is decoded, so a process that changed
    directory in between is resolved against its new one."""
    try:
        base = os.readlink(f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}")
    except OSError:
        return None
    if not base.startswith("/"):
        return None  # "pipe:[..]", "anon_inode:..": not a directory
    return os.path.normpath(os.path.join(base, path))


def seed_cwds(table: Any) -> int:
    """Put every running process's /proc/<pid>/cwd into a probe's kernel cwd map (tgid -> NUL-padded path, as
    long as the table's value): the processes started before the probe, whose chdir calls the kernel never
    saw. A cwd that does not fit, or was deleted, is left out. Returns how many were seeded."""
    size = ctypes.sizeof(table.Leaf)
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd").encode()
        except OSError:
            continue
        if not cwd.startswith(b"/") or len(cwd) >= size or cwd.endswith(b" (deleted)"):
            continue
        table[ctypes.c_uint32(int(entry.name))] = table.Leaf.from_buffer_copy(cwd.ljust(size, b"\0"))
        n += 1
    return n
