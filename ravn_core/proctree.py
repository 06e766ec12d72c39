"""The process tree: pid -> (ppid, comm, exe, argv, uid, sid), built from fork/exec/exit/setsid events and /proc at
start.

The session id (``sid``) is read from /proc/<pid>/stat at start, inherited at fork, and set by the security probe's
``setsid`` event (a process that becomes a session leader); 0 means unknown (a process first seen through another
event). The incident tracker joins alerts by session first.

Kernel struct layouts read through this machine's mismatched headers are wrong, so the probes never walk
``task->real_parent``; ancestry is rebuilt here in user space. The tree is bounded (LRU by last update) and
counts lookups that missed. An exited process is kept for ``exit_grace_s`` (in event time) so that alerts on its
last events, and its children's ancestry, still find it; then it is dropped, so the tree follows the live
processes instead of filling up to its bound with the dead. When the bound is reached anyway (an exec storm
exits more processes within the grace than the bound holds), the oldest exited processes go first, and only
then the least recently updated live ones: a storm of short-lived programs does not push out the long-lived
sshd or cron an attacker's shell descends from.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ravn_core.events import Batch


@dataclass(slots=True)
class ProcInfo:
    """One process. ``args`` is never changed in place (an exec replaces the list), so a forked child shares
    its parent's."""

    pid: int
    ppid: int = 0
    comm: str = ""
    exe: str = ""
    args: list[str] = field(default_factory=list)
    uid: int = -1
    start_ts: int = 0
    exited: bool = False
    sid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "comm": self.comm, "exe": self.exe, "args": self.args,
                "uid": self.uid, "sid": self.sid}


class ProcessTree:
    """Not thread-safe: owned by one analysis thread (one tree per host per thread)."""

    def __init__(self, max_size: int = 65536, max_depth: int = 32, exit_grace_s: float = 60.0) -> None:
        self.max_size = max_size
        self.max_depth = max_depth
        self.exit_grace_ns = int(exit_grace_s * 1e9)
        self._procs: OrderedDict[int, ProcInfo] = OrderedDict()
        #: ``peek(pid)``: the process with this pid, or None, without counting a miss (for readers that probe pids
        #: the tree may never have seen: the rules' field resolvers, alert evidence). It is the table's own ``get``,
        #: so a rule reading ``proc.exe`` pays no Python call for it.
        self.peek: Callable[[int], ProcInfo | None] = self._procs.get
        self._exits: deque[tuple[int, ProcInfo]] = deque()  # (exit evt.ts, process), oldest first
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._procs)

    def __contains__(self, pid: object) -> bool:
        return pid in self._procs

    # ------------------------------------------------------------------------------------------ building
    def seed_from_proc(self, proc: str = "/proc") -> int:
        """Add every process now running. Returns how many were read."""
        n = 0
        for entry in os.listdir(proc):
            if not entry.isdigit():
                continue
            info = read_proc(int(entry), proc)
            if info is not None:
                self._put(info)
                n += 1
        return n

    def update(self, batch: Batch) -> None:
        """Apply the batch's fork/exec/exit events; note pid/ppid/comm of every other event cheaply."""
        procs = self._procs
        for ev in batch:
            etype = ev.get("evt.type")
            if etype == "fork":
                parent = procs.get(ev.get("proc.pid", 0))
                child_pid = ev.get("fork.child_pid", 0)
                if not child_pid or child_pid == ev.get("proc.pid"):
                    continue  # a thread of the same process
                child = ProcInfo(child_pid, ev.get("proc.pid", 0), ev.get("proc.comm", ""),
                                 parent.exe if parent else "", parent.args if parent else [],
                                 ev.get("proc.uid", -1), ev.get("evt.ts", 0), sid=parent.sid if parent else 0)
                self._put(child)
            elif etype == "setsid":
                sid = ev.get("setsid.sid", 0)
                pid = ev.get("proc.pid", 0)
                if isinstance(sid, int) and sid > 0 and pid:
                    info = procs.get(pid) or ProcInfo(pid, ev.get("proc.ppid", 0), ev.get("proc.comm", ""),
                                                      uid=ev.get("proc.uid", -1))
                    info.sid = sid
                    self._put(info)
            elif etype == "exec":
                if ev.get("exec.ret", 0) != 0:
                    continue
                pid = ev.get("proc.pid", 0)
                info = procs.get(pid) or ProcInfo(pid, ev.get("proc.ppid", 0))
                info.comm = ev.get("proc.comm", info.comm)
                info.exe = ev.get("exec.filename", info.exe)
                info.args = list(ev.get("exec.argv") or [])
                info.uid = ev.get("proc.uid", info.uid)
                if ev.get("proc.ppid"):
                    info.ppid = ev["proc.ppid"]
                self._put(info)
            elif etype == "exit":
                gone = procs.get(ev.get("proc.pid", 0))
                if gone is not None:
                    gone.exited = True
                    self._exits.append((_ts(ev), gone))
            else:
                pid = ev.get("proc.pid", 0)
                if pid and pid not in procs:
                    self._put(ProcInfo(pid, ev.get("proc.ppid", 0), ev.get("proc.comm", ""),
                                       uid=ev.get("proc.uid", -1)))
        self._trim()
        if batch:
            self._forget_exited(_ts(batch[-1]))

    def _forget_exited(self, now_ns: int) -> None:
        """Drop processes that exited more than the grace period ago (unless their pid was reused since)."""
        exits = self._exits
        while exits and (now_ns - exits[0][0] > self.exit_grace_ns or len(exits) > self.max_size):
            self._drop_oldest_exit()

    def _drop_oldest_exit(self) -> bool:
        """Forget the process of the oldest exit still listed; False when its pid was reused since (kept)."""
        _, info = self._exits.popleft()
        if info.exited and self._procs.get(info.pid) is info:
            del self._procs[info.pid]
            return True
        return False

    def _put(self, info: ProcInfo) -> None:
        self._procs[info.pid] = info
        self._procs.move_to_end(info.pid)

    def _trim(self) -> None:
        procs = self._procs
        while len(procs) > self.max_size and self._exits:  # the dead first, oldest exit first
            if self._drop_oldest_exit():
                self.evictions += 1
        while len(procs) > self.max_size:
            procs.popitem(last=False)
            self.evictions += 1

    def trim_exited(self) -> int:
        """Drop processes that have exited (the health thread calls this under memory pressure)."""
        gone = [pid for pid, p in self._procs.items() if p.exited]
        for pid in gone:
            del self._procs[pid]
        return len(gone)

    def shrink(self, fraction: float = 0.5) -> None:
        """Drop the least recently updated ``fraction`` of entries (memory pressure)."""
        target = int(len(self._procs) * (1 - fraction))
        while len(self._procs) > target:
            self._procs.popitem(last=False)
            self.evictions += 1

    # ------------------------------------------------------------------------------------------ lookups
    def get(self, pid: int) -> ProcInfo | None:
        """The process with this pid, or None; a miss counts in ``misses``."""
        info = self._procs.get(pid)
        if info is None:
            self.misses += 1
        return info

    def ancestors(self, pid: int) -> list[ProcInfo]:
        """Parent first, up to ``max_depth``; stops at an unknown or looping pid."""
        out: list[ProcInfo] = []
        info = self._procs.get(pid)
        seen = {pid}
        while info is not None and len(out) < self.max_depth:
            ppid = info.ppid
            if not ppid or ppid in seen:
                break
            seen.add(ppid)
            parent = self._procs.get(ppid)
            if parent is None:
                self.misses += 1
                break
            out.append(parent)
            info = parent
        return out

    def lineage(self, pid: int) -> list[dict[str, Any]]:
        """The process and its ancestors as dicts, for alert evidence."""
        me = self._procs.get(pid)
        return ([me.to_dict()] if me else []) + [a.to_dict() for a in self.ancestors(pid)]


def _ts(ev: dict[str, Any]) -> int:
    """The event's evt.ts, or 0 when missing or not an int (replayed input is not trusted)."""
    ts = ev.get("evt.ts", 0)
    return ts if isinstance(ts, int) else 0


def read_proc(pid: int, proc: str = "/proc") -> ProcInfo | None:
    """One process from /proc, or None when it is gone."""
    base = f"{proc}/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        ppid = int(rest[1])
        sid = int(rest[3])
        with open(f"{base}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:
            exe = ""
        uid = os.stat(base).st_uid
    except (OSError, ValueError, IndexError):
        return None
    return ProcInfo(pid, ppid, comm, exe, args, uid, sid=sid)
