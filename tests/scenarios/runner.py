"""The scenario runner: a process outside the test runner's ancestry that starts each simulation.

Attacks do not run under ``make``/``pytest``; rules that spare build systems (``compiler_process``: an ancestor
named make, cc, ...) would otherwise treat every simulation as part of a build when the suite runs under
``make test``. The harness starts this runner double-forked (reparented to init) BEFORE the daemon, so the daemon
seeds it from /proc with ppid 1 and every simulation's ancestry is runner -> init.

Protocol: one JSON request a line on the command FIFO (``{"args": [...], "cgroup": path or null}``), one JSON
reply a line on the reply FIFO (``{"pid", "rc", "err"}``). EOF on the command FIFO ends it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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

                proc = subprocess.Popen([sys.executable, "-m", "tests.scenarios.simulations", *req["args"]], cwd=repo,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=enter_cgroup)
                try:
                    _, err = proc.communicate(timeout=180)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
                reply.write(json.dumps({"pid": proc.pid, "rc": proc.returncode, "err": err[-2000:]}) + "\n")
                reply.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
