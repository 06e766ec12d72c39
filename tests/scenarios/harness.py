"""Runs the RAVN daemon once and the attack simulations against it; shared by test_detections.py and
bench/detect.py.

Contract with the runtime: ``.venv/bin/ravn --config CFG`` prints "RAVN running" on stderr once every component
started; the ``jsonl`` sink writes one JSON object per line, flushed each (``kind`` = "alert" or "threat");
SIGTERM stops it cleanly.

Attribution: each simulation runs in its own process (``python -m tests.scenarios.simulations run NAME DIR``);
an alert belongs to it when that process is the alerting process or one of its ancestors (the alert's
``evidence.ancestry``, from the daemon's process tree) or the parent of a triggering event. Alerts from the
rest of the host (other tests, other users) are ignored, so the suite can run on a busy CI machine.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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

    work = f"{base}/work/"
    rules = {
        "plugin": "analyzer_rules",
        "append_lists": {
            "cron_paths": [f"{work}cron_write/cron.d/"],
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
    return {
        "ravn": {"state_dir": f"{base}/state", "log_level": "info", "memory_limit_mb": 2048},
        "sources": [
            {"plugin": "ebpf_security"},
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

    def __init__(self, analyzers: str = "rules", start_timeout_s: float = 120.0) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ravn-scn-"))
        self.base.chmod(0o755)  # the setuid scenario runs a binary as nobody inside it
        (self.base / "work").mkdir(mode=0o755)
        self.cfg_path = self.base / "ravn.yaml"
        self.cfg_path.write_text(yaml.safe_dump(config(self.base, analyzers), sort_keys=False))
        self.alerts_path = self.base / "alerts.jsonl"
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stderr_lines: list[str] = []
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

    def stop(self) -> int:
        self._stop.set()
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
    def _spawn(self, args: list[str]) -> tuple[int, float, float, str]:
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "tests.scenarios.simulations", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        error = "" if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[-500:]}"
        return proc.pid, started, time.time(), error

    def attributed(self, root: int) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if _belongs(a, root)]

    def run(self, sc: Scenario, wait_s: float = 2.5) -> Result:
        work = self.base / "work" / sc.name
        work.mkdir(mode=0o755)
        pid, started, ended, error = self._spawn(["run", sc.name, str(work)])
        res = Result(sc, pid, started, ended, error=error)
        deadline = time.time() + wait_s
        while True:
            res.alerts = self.attributed(pid)
            if res.detected or time.time() > deadline:
                break
            time.sleep(0.05)
        shutil.rmtree(work, ignore_errors=True)
        return res

    def run_benign(self, settle_s: float = 2.5) -> Result:
        work = self.base / "work" / "benign"
        work.mkdir(mode=0o755)
        sc = Scenario("benign", "", (), "benign workload", lambda p: None)
        pid, started, ended, error = self._spawn(["benign", str(work)])
        time.sleep(settle_s)
        res = Result(sc, pid, started, ended, self.attributed(pid), error)
        shutil.rmtree(work, ignore_errors=True)
        return res


def _belongs(alert: dict[str, Any], root: int) -> bool:
    if alert.get("pid") == root:
        return True
    ev = alert.get("evidence") or {}
    if any(p.get("pid") == root for p in ev.get("ancestry") or []):
        return True
    return any(e.get("proc.pid") == root or e.get("proc.ppid") == root for e in ev.get("events") or [])


def run_all(daemon: Daemon, names: list[str] | None = None) -> list[Result]:
    return [daemon.run(SCENARIOS[n]) for n in (names or list(SCENARIOS))]
