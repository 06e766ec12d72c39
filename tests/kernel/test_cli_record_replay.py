"""End to end through the CLI: `ravn record` with real probes while a child acts, then `ravn replay` of the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ravn_core.testing import require_kernel

RAVN = [sys.executable, "-m", "ravn_core.cli"]


@pytest.mark.kernel
def test_record_then_replay() -> None:
    require_kernel()
    tmp_path = Path(tempfile.mkdtemp(prefix="ravn-record-"))
    tmp_path.chmod(0o777)  # the replay runs as nobody and writes its alerts here
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text(f"""
ravn:
  state_dir: {tmp_path}/state
sources:
  - plugin: ebpf_security
  - plugin: ebpf_file
analyzers:
  - plugin: analyzer_rules
sinks:
  - plugin: jsonl
    path: {tmp_path}/alerts.jsonl
""")
    events = tmp_path / "events.jsonl"
    rec = subprocess.Popen([*RAVN, "record", "--config", str(cfg), "--duration", "6", "--output", str(events)],
                           stderr=subprocess.PIPE, text=True)
    assert rec.stderr is not None
    deadline = time.monotonic() + 60
    for line in rec.stderr:
        if "RAVN running" in line or time.monotonic() > deadline:
            break
    # the probes were compiled in a short-lived loader child: the daemon never maps the compiler
    mapped = Path(f"/proc/{rec.pid}/maps").read_text()
    assert "libLLVM" not in mapped and "libclang" not in mapped and "libbcc" not in mapped
    # the behaviour: a child execs cat on /etc/shadow (exec + sensitive open)
    child = subprocess.run(["/bin/cat", "/etc/shadow"], capture_output=True, timeout=10)
    assert child.returncode == 0
    rest = rec.stderr.read()
    assert rec.wait(60) == 0, rest
    recorded = [json.loads(line) for line in events.read_text().splitlines()]
    execs = [e for e in recorded if e["evt.type"] == "exec" and e.get("exec.filename") == "/bin/cat"
             and e.get("exec.argv") == ["/bin/cat", "/etc/shadow"]]
    assert execs, f"no exec of /bin/cat among {len(recorded)} events"
    assert execs[0]["proc.ppid"] == os.getpid() and execs[0]["proc.uid"] == 0
    opens = [e for e in recorded if e["evt.type"] == "open" and e.get("file.path") == "/etc/shadow"]
    assert opens and opens[0]["proc.pid"] == execs[0]["proc.pid"]
    assert f"recorded {len(recorded)} events" in rest

    os.unlink(tmp_path / "alerts.jsonl") if (tmp_path / "alerts.jsonl").exists() else None
    # replay needs no root: run it as nobody
    env_cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    for p in (cfg, events):
        os.chmod(p, 0o644)
    rep = subprocess.run([*env_cmd, *RAVN, "replay", str(events), "--config", str(cfg)], capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert rep.returncode == 0, rep.stderr
    assert f"replayed {len(recorded)} events" in rep.stderr
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    shadow = [a for a in alerts if a.get("kind") == "alert" and a["pid"] == execs[0]["proc.pid"]]
    assert shadow, f"no alert for the shadow read among {[a.get('rule') for a in alerts]}"
    assert shadow[0]["level"] in ("MEDIUM", "HIGH") and shadow[0]["tags"]
