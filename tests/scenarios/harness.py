"""Runs the RAVN daemon once and the attack simulations against it; shared by test_detections.py and
bench/detect.py.

Contract with the runtime: ``.venv/bin/ravn --config CFG`` prints "RAVN running" on stderr once every component
started; the ``jsonl`` sink writes one JSON object per line, flushed each (``kind`` = "alert", "threat" or
"incidents": the open incidents, at most once a second when they change); SIGTERM stops it cleanly.

Attribution: each simulation runs in its own process (``python -m tests.scenarios.simulations run NAME DIR``)
inside its own cgroup v2; an alert belongs to it when a triggering event carries that cgroup's id
(``proc.cgroup``), or, without cgroups, when that process is the alerting process or one of its ancestors (the
alert's ``evidence.ancestry``, from the daemon's process tree) or the parent of a triggering event. Alerts from the
rest of the host (other tests, other users) are ignored, so the suite can run on a busy CI machine.

Incidents: every alert names its incident; ``Daemon.incidents_of(alerts)`` gives the latest summaries the daemon
wrote of those incidents (root, rules in order, score, peak, level), so a result shows what its alerts added up to
(``Result.incidents``, ``Result.incident_level``: the highest level an incident of the scenario reached).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.scenarios.simulations import SCENARIOS, Scenario

REPO = Path(__file__).resolve().parents[2]
RAVN = REPO / ".venv" / "bin" / "ravn"
LEVELS = {"LOW": 0, "MEDIUM": 1, "HIGH": 2}


def config(base: Path, analyzers: str = "rules") -> dict[str, Any]:
    """The daemon config for the suite: the four probes' defaults, plus the work dir (and a few kernel files)
    as watched prefixes and as entries of the rules' path lists, so persistence and tampering can be simulated
    on copies instead of the real /etc."""
    from ravn_ebpf_file.config import DEFAULT_READ, DEFAULT_WRITE
    from ravn_ebpf_security.config import ALL_EVENTS

    work = f"{base}/work/"
    rules = {
        "plugin": "analyzer_rules",
        "append_lists": {
            "cron_paths": [f"{work}cron_write/cron.d/", f"{work}cron_to_devshm/cron.d/"],
            "systemd_unit_paths": [f"{work}systemd_unit/systemd/"],
            "preload_files": [f"{work}ld_preload/ld.so.preload"],
            "account_files": [f"{work}passwd_append/passwd"],
            "log_dirs": [f"{work}log_clear/log/"],
        },
    }
    analyzer_sections: list[dict[str, Any]] = []
    if analyzers in ("rules", "both"):
        analyzer_sections.append(rules)
    if analyzers in ("onnx", "both"):
        analyzer_sections.append({"plugin": "analyzer_onnx"})
    # the ML model reads the syscall probe's per-process windows; the rules do not need it
    syscall = [{"plugin": "ebpf_syscall"}] if analyzers in ("onnx", "both") else []
    return {
        "ravn": {"state_dir": f"{base}/state", "log_level": "info", "memory_limit_mb": 2048},
        "sources": [
            *syscall,
            # every family but `capable` (no rule reads it, and cap_capable is the busiest tracepoint)
            {"plugin": "ebpf_security", "events": [e for e in ALL_EVENTS if e != "capable"]},
            {"plugin": "ebpf_network"},
            {"plugin": "ebpf_file",
             "read_prefixes": [*DEFAULT_READ, work, "/proc/*/mem"],
             "write_prefixes": [*DEFAULT_WRITE, "/dev/shm/", "/proc/sys/kernel/randomize_va_space"]},
        ],
        "transport": {"plugin": "embedded"},
        "analyzers": analyzer_sections,
        "sinks": [{"plugin": "jsonl", "path": f"{base}/alerts.jsonl"}],
    }


@dataclass
class Result:
    scenario: Scenario
    root_pid: int
    started: float
    ended: float
    alerts: list[dict[str, Any]] = field(default_factory=list)  # attributed alerts, each with "_seen" (wall s)
    error: str = ""
    cgroup_id: int = 0
    incidents: list[dict[str, Any]] = field(default_factory=list)  # summaries of the alerts' incidents

    @property
    def incident_level(self) -> str:
        """The highest level any incident of the scenario reached (from its peak score, default thresholds)."""
        peak = max((float(i.get("peak", i.get("score", 0))) for i in self.incidents), default=0.0)
        return "HIGH" if peak > 80 else "MEDIUM" if peak > 50 else "LOW"

    def matching(self, min_level: str = "MEDIUM") -> list[dict[str, Any]]:
        """Attributed alerts of at least ``min_level`` carrying the scenario's technique."""
        tech = self.scenario.technique
        return [a for a in self.alerts if LEVELS.get(a.get("level", "LOW"), 0) >= LEVELS[min_level]
                and tech in a.get("tags", [])]

    @property
    def detected(self) -> bool:
        return bool(self.matching())

    @property
    def best(self) -> dict[str, Any] | None:
        m = self.matching()
        return min(m, key=lambda a: a["_seen"]) if m else None

    @property
    def latency_s(self) -> float | None:
        """From the triggering event (the alert's ts, kernel time) to the alert line in the sink's file."""
        a = self.best
        return None if a is None else max(0.0, a["_seen"] - float(a["ts"]))


class Daemon:
    """One ravn daemon for the whole suite, with a reader that timestamps every jsonl line when it appears."""

    def __init__(self, analyzers: str = "rules", start_timeout_s: float = 120.0,
                 make_config: Callable[[Path], dict[str, Any]] | None = None) -> None:
        """:param make_config: the daemon config for a base directory (default: ``config(base, analyzers)``);
        it must write alerts to the jsonl sink at ``base/alerts.jsonl``."""
        self.base = Path(tempfile.mkdtemp(prefix="ravn-scn-"))
        self.base.chmod(0o755)  # the setuid scenario runs a binary as nobody inside it
        (self.base / "work").mkdir(mode=0o755)
        self.cfg_path = self.base / "ravn.yaml"
        cfg = make_config(self.base) if make_config else config(self.base, analyzers)
        self.cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.alerts_path = self.base / "alerts.jsonl"
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stderr_lines: list[str] = []
        self._start_runner()  # before the daemon: it must be seeded from /proc as an orphan (see runner.py)
        self.proc = subprocess.Popen([str(RAVN), "--config", str(self.cfg_path)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._running = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + start_timeout_s
        while not self._running.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(self.stderr_lines[-30:])
                self.stop()
                raise RuntimeError(f"ravn did not report 'RAVN running' (exit {self.proc.returncode}):\n{tail}")
        self._reader = threading.Thread(target=self._read_alerts, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if len(self.stderr_lines) > 2000:
                del self.stderr_lines[:1000]
            if "RAVN running" in line:
                self._running.set()

    def _read_alerts(self) -> None:
        pos = 0
        buf = ""
        while not self._stop.is_set():
            try:
                with open(self.alerts_path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            now = time.time()
            if chunk:
                buf += chunk
                *lines, buf = buf.split("\n")
                with self._lock:
                    for line in lines:
                        if line.strip():
                            rec = json.loads(line)
                            rec["_seen"] = now
                            self.records.append(rec)
            self._stop.wait(0.02)

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r.get("kind", "alert") == "alert" and "rule" in r]

    def incidents_of(self, alerts: list[dict[str, Any]], wait_s: float = 2.0) -> list[dict[str, Any]]:
        """The latest summary written of each incident the alerts joined (waiting up to ``wait_s`` for the
        daemon's next ``incidents`` record to name them all), worst first."""
        ids = {a["incident"] for a in alerts if a.get("incident")}
        deadline = time.time() + wait_s
        while True:
            latest: dict[str, dict[str, Any]] = {}
            with self._lock:
                for rec in self.records:
                    if rec.get("kind") in ("incidents", "threat"):
                        for inc in rec.get("incidents") or []:
                            if inc.get("id") in ids:
                                latest[inc["id"]] = inc
            if set(latest) >= ids or time.time() > deadline:
                return sorted(latest.values(), key=lambda i: -float(i.get("peak", i.get("score", 0))))
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        for f in (getattr(self, "_runner_cmd", None), getattr(self, "_runner_reply", None)):
            if f is not None and not f.closed:
                f.close()  # EOF ends the runner
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ running
    def _start_runner(self) -> None:
        fifo_dir = self.base / "runner"
        fifo_dir.mkdir()
        cmd, reply = fifo_dir / "cmd", fifo_dir / "reply"
        os.mkfifo(cmd)
        os.mkfifo(reply)
        # double fork through sh: the runner is reparented to init, outside pytest's (and make's) ancestry
        subprocess.run(["sh", "-c", f'"{sys.executable}" -m tests.scenarios.runner "{cmd}" "{reply}" "{REPO}" '
                                    "</dev/null >/dev/null 2>&1 &"], cwd=REPO, check=True, timeout=10)
        self._runner_reply = open(reply)
        json.loads(self._runner_reply.readline())  # {"ready": true}
        self._runner_cmd = open(cmd, "w")

    def _spawn(self, args: list[str], cgroup: Path | None, **request: Any) -> tuple[int, float, float, str]:
        """Run one simulation through the runner, in its own cgroup (it and all its descendants).
        ``request`` adds the runner's optional keys (argv, cwd, timeout, new_session: see runner.py)."""
        started = time.time()
        self._runner_cmd.write(json.dumps({"args": args, "cgroup": str(cgroup) if cgroup else None, **request})
                               + "\n")
        self._runner_cmd.flush()
        out = json.loads(self._runner_reply.readline())
        error = "" if out["rc"] == 0 else f"exit {out['rc']}: {out['err'].strip()[-500:]}"
        return out["pid"], started, time.time(), error

    def command(self, argv: list[str], cgroup: Path | None, cwd: str,
                timeout_s: float) -> tuple[int, float, float, str]:
        """Run any command through the runner as a session leader, in ``cgroup``, with a timeout after which its
        process group is killed. Returns (pid, started, ended, error)."""
        return self._spawn([], cgroup, argv=argv, cwd=cwd, timeout=timeout_s, new_session=True)

    def _cgroup(self, name: str) -> tuple[Path | None, int]:
        """A cgroup v2 directory for one simulation: every event of its processes carries its id (proc.cgroup),
        whichever probe reports it and in whatever order, so attribution does not depend on the process tree."""
        root = next((p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
                     if (p / "cgroup.procs").exists()), None)
        if root is None:
            return None, 0
        path = root / f"ravn-scn-{os.getpid()}-{name}"
        try:
            path.mkdir(exist_ok=True)
            return path, path.stat().st_ino
        except OSError:
            return None, 0

    @staticmethod
    def _remove_cgroup(path: Path | None) -> None:
        if path is None:
            return
        for _ in range(50):  # the simulation's last processes may still be exiting
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def attributed(self, root: int, cgroup_id: int = 0) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if _belongs(a, root, cgroup_id)]

    def warm_up(self, timeout_s: float = 90.0) -> float:
        """Run the canary (an exec, a file read and a connect) until its three alerts come back: every probe is
        attached and the pipeline is flowing (the start-up backlog drained). Returns the seconds it took."""
        t0 = time.time()
        want = {"exec_from_dev_shm", "sensitive_file_read", "crypto_miner_pool_port"}
        while time.time() - t0 < timeout_s:
            res = self.run(SCENARIOS["canary"], wait_s=5.0, until=lambda r: want <= {a["rule"] for a in r.alerts})
            if want <= {a["rule"] for a in res.alerts}:
                return time.time() - t0
        raise RuntimeError(f"the daemon produced no canary alerts within {timeout_s:.0f} s:\n"
                           f"{''.join(self.stderr_lines[-20:])}")

    def run(self, sc: Scenario, wait_s: float = 10.0, until: Any = None) -> Result:
        work = self.base / "work" / sc.name
        work.mkdir(mode=0o755)
        cgroup, cgroup_id = self._cgroup(sc.name)
        try:
            pid, started, ended, error = self._spawn(["run", sc.name, str(work)], cgroup)
            res = Result(sc, pid, started, ended, error=error, cgroup_id=cgroup_id)
            deadline = time.time() + wait_s
            done = until or (lambda r: r.detected)
            while True:
                res.alerts = self.attributed(pid, cgroup_id)
                if done(res) or time.time() > deadline:
                    break
                time.sleep(0.05)
            res.incidents = self.incidents_of(res.alerts, wait_s=0.0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._remove_cgroup(cgroup)
        return res

    def run_benign(self, settle_s: float = 2.5, kinds: str = "") -> Result:
        """The benign workload of simulations.py, then one round of each of ``kinds`` (bench/benign.py, a
        comma-separated list) in the same cgroup: everything it starts is attributed to it."""
        work = self.base / "work" / "benign"
        work.mkdir(mode=0o755)
        sc = Scenario("benign", "", (), "benign workload", lambda p: None)
        cgroup, cgroup_id = self._cgroup("benign")
        try:
            pid, started, ended, error = self._spawn(["benign", str(work), *([kinds] if kinds else [])], cgroup)
            time.sleep(settle_s)
            res = Result(sc, pid, started, ended, self.attributed(pid, cgroup_id), error, cgroup_id)
            res.incidents = self.incidents_of(res.alerts)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._remove_cgroup(cgroup)
        return res


def _belongs(alert: dict[str, Any], root: int, cgroup_id: int = 0) -> bool:
    if alert.get("pid") == root:
        return True
    ev = alert.get("evidence") or {}
    if cgroup_id and any(e.get("proc.cgroup") == cgroup_id for e in ev.get("events") or []):
        return True
    if any(p.get("pid") == root for p in ev.get("ancestry") or []):
        return True
    return any(e.get("proc.pid") == root or e.get("proc.ppid") == root for e in ev.get("events") or [])


def run_all(daemon: Daemon, names: list[str] | None = None) -> list[Result]:
    return [daemon.run(SCENARIOS[n]) for n in (names or list(SCENARIOS))]
