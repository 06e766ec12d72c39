"""`ravn learn` for real: it records this host with the real probes while a benign workload runs, trains a
model (a few seconds), measures it on the held-back part, and analyzer_onnx loads the result."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig

from ravn_core.testing import make_context, require_kernel

ROOT = Path(__file__).resolve().parents[2]
RAVN = [sys.executable, "-m", "ravn_core.cli"]


@pytest.mark.kernel
def test_learn_records_this_host_trains_and_measures() -> None:
    require_kernel()
    tmp = Path(tempfile.mkdtemp(prefix="ravn-learn-"))
    cfg = tmp / "ravn.yaml"
    cfg.write_text(f"""
ravn:
  state_dir: {tmp}/state
  http_listen: ""
sources:
  - plugin: ebpf_syscall
  - plugin: ebpf_security
analyzers: []
sinks: []
""")
    # benign work during the whole recording: cron-kind rounds of bench/benign.py
    work = tmp / "work"
    work.mkdir()
    load = subprocess.Popen([sys.executable, str(ROOT / "bench/benign.py"), str(work), "--kinds", "cron,admin",
                             "--seconds", "14"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp / "host.onnx"
    try:
        t0 = time.monotonic()
        res = subprocess.run([*RAVN, "learn", "--config", str(cfg), "--duration", "10s", "--output", str(out),
                              "--host", "testhost", "--steps", "40", "--threads", "1", "--min-heldout-hours", "0"],
                             capture_output=True, text=True, timeout=300)
    finally:
        load.wait(60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "recording this host for 10 s" in res.stderr and time.monotonic() - t0 >= 10
    report = json.loads(Path(str(out) + ".json").read_text())
    # the last 25% of the recording's evt.ts span held back, the first 60% trained on
    assert report["host"] == "testhost" and 0 < report["heldout_hours"] < 60 / 3600
    assert report["heldout_hours"] == pytest.approx(report["train_hours"] * 0.25 / 0.6, rel=0.01)
    assert report["heldout_processes_scored"] > 0
    assert report["fa_per_hour"] == pytest.approx(report["medium_alerts"] / report["heldout_hours"], rel=1e-3)
    assert report["budget_met"] == (report["fa_per_hour"] <= 1.0)
    assert not Path(str(out) + ".events.jsonl").exists()  # the recording is removed unless --recording is given
    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=str(out), own_alerts=True),
                      make_context("learn", host="testhost"))
    h = an.health()
    assert h.state == "ok" and h.detail.startswith("model ravn-host-lm")
    assert ("own alerts (measured" in h.detail) == report["budget_met"]
