"""The scenario runner: a process outside the test runner's ancestry that starts each simulation.

Attacks do not run under ``make``/``pytest``; rules that spare build systems (``compiler_process``: an ancestor
named make, cc, ...) would otherwise treat every simulation as part of a build when the suite runs under
``make test``. The harness starts this runner double-forked (reparented to init) BEFORE the daemon, so the daemon
seeds it from /proc with ppid 1 and every simulation's ancestry is runner -> init.

Each simulation starts in a session of its own (``setsid``), as an attacker's login or reverse shell would: the
daemon joins alerts into incidents by session first, so one simulation's alerts form its own incident(s) and are
never combined with another's.

Protocol: one JSON request a line on the command FIFO (``{"args": [...], "cgroup": path or null}``), one JSON
reply a line on the reply FIFO (``{"pid", "rc", "err"}``). EOF on the command FIFO ends it. Optional request keys
(bench/atomic.py): ``argv`` runs that command instead of a simulation, ``cwd`` its directory, ``timeout`` seconds
(default 180), ``new_session`` starts it as a session leader, and a timeout then kills its whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(cmd_fifo: str, reply_fifo: str, repo: str) -> None:
    with open(reply_fifo, "w") as reply:
        reply.write(json.dumps({"ready": True}) + "\n")
        reply.flush()
        with open(cmd_fifo) as commands:
            for line in commands:
                req = json.loads(line)
                cgroup = req.get("cgroup")

                def enter_cgroup(cgroup: str | None = cgroup) -> None:
                    if cgroup:
                        Path(cgroup, "cgroup.procs").write_text("0")

                if req.get("argv"):
                    pid, rc, err = _run_command(req, repo, enter_cgroup)
                else:
                    proc = subprocess.Popen([sys.executable, "-m", "tests.scenarios.simulations", *req["args"]],
                                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                            preexec_fn=enter_cgroup, start_new_session=True)
                    try:
                        _, err = proc.communicate(timeout=180)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        _, err = proc.communicate()
                    pid, rc = proc.pid, proc.returncode
                reply.write(json.dumps({"pid": pid, "rc": rc, "err": err[-2000:]}) + "\n")
                reply.flush()


def _run_command(req: dict[str, Any], repo: str, enter_cgroup: Callable[[], None]) -> tuple[int, int, str]:
    """One ``argv`` request: stderr goes to a file, not a pipe, so a command that leaves a background child
    holding it open is done when the command itself exits (the caller ends what it left behind)."""
    new_session = bool(req.get("new_session"))
    timeout = float(req.get("timeout") or 180)
    with tempfile.TemporaryFile("w+", errors="replace") as errf:
        proc = subprocess.Popen(req["argv"], cwd=req.get("cwd") or repo, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=enter_cgroup,
                                start_new_session=new_session)
        note = ""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if new_session:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            note = f"\n[runner] timed out after {timeout:g} s"
        errf.seek(0)
        return proc.pid, proc.returncode, errf.read()[-4000:] + note


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
