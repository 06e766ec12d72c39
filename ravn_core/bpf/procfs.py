"""/proc and cgroup v2 lookups the probes make at start: the process tree (to seed the pid -> ppid map and find
the descendants of excluded pids) and cgroup ids from paths."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ravn_core.errors import UnusableEnvironment


def read_proc_ppids() -> dict[int, int]:
    """tgid -> ppid of every process in /proc right now."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        out[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return out


def descendants(roots: Iterable[int], ppids: dict[int, int]) -> set[int]:
    """``roots`` and every process below them in the ``ppids`` tree."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        stack.extend(children.get(p, ()))
    return seen


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


def cgroup_id(spec: int | str) -> int:
    """A cgroup v2 id from an id or a path: bpf_get_current_cgroup_id() is the inode of the cgroup's directory.

    A relative path is taken under the cgroup v2 mount (``system.slice/ssh.service``)."""
    if isinstance(spec, int):
        return spec
    path = Path(spec) if spec.startswith("/") else cgroup2_root() / spec
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise UnusableEnvironment(f"filters.exclude_cgroups: cannot stat {path}: {exc.strerror}") from None
