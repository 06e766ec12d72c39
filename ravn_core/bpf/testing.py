"""Helpers for kernel tests of BCC probes (``BccProbe`` subclasses): collect events, list loaded programs,
spawn processes outside the probe's excluded tree, put a process in a fresh cgroup v2.

Used by every probe's tests/ (``from ravn_core.bpf.testing import collect, ...``). Nothing here runs at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ravn_core.bpf.procfs import cgroup2_root
from ravn_core.components import Source
from ravn_core.events import Batch, Event


def collect(source: Source, predicate: Callable[[Event], bool], *, count: int | None = None,
            timeout_s: float = 5.0, settle_s: float = 0.0) -> Batch:
    """Poll ``source`` until ``count`` events match ``predicate`` (or, count=None, until ``timeout_s``).

    :param settle_s: keep polling this long after reaching ``count`` (to catch extra, unwanted events).
    """
    got: Batch = []
    deadline = time.monotonic() + timeout_s
    reached: float | None = None
    while time.monotonic() < deadline:
        got.extend(e for e in source.poll(50) if predicate(e))
        if count is not None and len(got) >= count:
            if reached is None:
                reached = time.monotonic()
            if time.monotonic() - reached >= settle_s:
                break
    return got


#: the interpreter of test child scripts: the system one (stdlib only), so it also runs as an unprivileged uid
CHILD_PYTHON = "/usr/bin/python3"


def collect_until_quiet(source: Source, predicate: Callable[[Event], bool] | None = None, *, settle_s: float = 0.3,
                        timeout_s: float = 2.0) -> Batch:
    """Events (matching ``predicate``, default all) polled until none arrived for ``settle_s``, at most
    ``timeout_s``."""
    got: Batch = []
    quiet = time.monotonic()
    deadline = quiet + timeout_s
    while time.monotonic() < deadline:
        batch = source.poll(50)
        if predicate is not None:
            batch = [e for e in batch if predicate(e)]
        if batch:
            got += batch
            quiet = time.monotonic()
        elif time.monotonic() - quiet > settle_s:
            break
    return got


def run_child(source: Source | None, script: str, *args: str, user: int | None = None, cgroup: str | None = None
              ) -> tuple[dict[str, Any], Batch]:
    """Run ``CHILD_PYTHON script *args`` (a test child that prints its ground truth as one JSON object with its
    ``pid``), as ``user`` and with ``RAVN_TEST_CGROUP=cgroup``, polling ``source`` while it runs (as the daemon
    does); return (ground truth, the source's events of the child's pid)."""
    proc = subprocess.Popen([CHILD_PYTHON, script, *args], stdout=subprocess.PIPE, text=True, user=user, group=user,
                            env={**os.environ, "RAVN_TEST_CGROUP": cgroup or ""})
    seen: Batch = []
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        if source is not None:
            seen += source.poll(20)
        else:
            time.sleep(0.02)
    out, _ = proc.communicate(timeout=5)
    assert proc.returncode == 0, out
    truth: dict[str, Any] = json.loads(out)
    if source is None:
        return truth, []
    return truth, [e for e in seen + collect_until_quiet(source) if e["proc.pid"] == truth["pid"]]


def bpf_programs() -> dict[int, str]:
    """id -> name of every BPF program loaded in the kernel now (``bpftool prog list -j``)."""
    out = subprocess.run(["bpftool", "prog", "list", "-j"], capture_output=True, text=True, check=True, timeout=30)
    return {int(p["id"]): str(p.get("name", "")) for p in json.loads(out.stdout or "[]")}


def program_map_ids(prog_ids: set[int]) -> set[int]:
    """Ids of the maps these programs use (``bpftool prog show id N`` map_ids)."""
    out: set[int] = set()
    for pid in prog_ids:
        res = subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"], capture_output=True, text=True,
                             timeout=30)
        if res.returncode == 0:
            out.update(int(m) for m in json.loads(res.stdout).get("map_ids", []))
    return out


def ravn_programs() -> dict[int, str]:
    """Loaded programs whose name starts with ``ravn_`` (BCC names programs after their function)."""
    return {i: n for i, n in bpf_programs().items() if n.startswith("ravn_")}


@contextmanager
def bystander() -> Iterator[int]:
    """A ``sleep`` child whose pid can serve as a probe's ``ravn_pid`` so the test process itself and its other
    children stay visible (the real RAVN excludes itself and its descendants)."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


ORPHAN_WORKER = r"""
import os, sys, time
# Orphaned worker: reads one command line per job from a FIFO, runs it, writes "done <pid>" to the reply FIFO.
cmd_fifo, reply_fifo = sys.argv[1], sys.argv[2]
with open(reply_fifo, "w") as r:
    r.write(f"ready {os.getpid()}\n"); r.flush()
    with open(cmd_fifo) as c:
        for line in c:
            n = int(line)
            for _ in range(n):
                os.getppid()
            r.write(f"done {os.getpid()}\n"); r.flush()
"""


class Orphan:
    """A Python worker that is NOT a descendant of the test process in /proc (double-forked: its parent is init or
    a subreaper). Start it BEFORE the probe: then it is outside the excluded tree of ``ravn_pid=os.getpid()``.
    ``run(n)`` makes it call getppid() n times. Its pid is ``self.pid``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ravn-orphan-"))
        self.cmd, self.reply = self.dir / "cmd", self.dir / "reply"
        os.mkfifo(self.cmd)
        os.mkfifo(self.reply)
        script = self.dir / "worker.py"
        script.write_text(ORPHAN_WORKER)
        subprocess.run(["sh", "-c", f'"{sys.executable}" "{script}" "{self.cmd}" "{self.reply}" </dev/null '
                                    f">/dev/null 2>&1 &"], check=True, timeout=10)
        self._r = open(self.reply)
        line = self._r.readline().split()
        self.pid = int(line[1])
        self._w = open(self.cmd, "w")

    def run(self, n: int) -> None:
        self._w.write(f"{n}\n")
        self._w.flush()
        self._r.readline()

    def close(self) -> None:
        self._w.close()  # EOF ends the worker
        self._r.close()
        for p in (self.cmd, self.reply, self.dir / "worker.py"):
            p.unlink(missing_ok=True)
        self.dir.rmdir()


@contextmanager
def fresh_cgroup() -> Iterator[Path]:
    """A new, empty cgroup v2 directory (removed afterwards); write a pid to ``<dir>/cgroup.procs`` to move it.
    Its id (what bpf_get_current_cgroup_id returns for its members) is ``os.stat(dir).st_ino``."""
    path = cgroup2_root() / f"ravn-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


FORK_LOOP_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p < 0) return 1;
        waitpid(p, 0, 0);
    }
    return 0;
}
"""


def build_fork_loop(workdir: Path) -> Path | None:
    """Compile a C loop that forks ``argv[1]`` children which exit at once; None when no C compiler works."""
    src, exe = workdir / "forkloop.c", workdir / "forkloop"
    src.write_text(FORK_LOOP_C)
    built = subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], capture_output=True, timeout=60)
    return exe if built.returncode == 0 else None
