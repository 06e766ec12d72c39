"""`ravn learn` end to end on a recording: real torch training (a few seconds), real onnxruntime, the budget
measured on the held-back part, and analyzer_onnx honouring (or refusing) own alerts from the metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig
from ravn_analyzers.onnx.learn import budget_thresholds, parse_duration
from ravn_analyzers.onnx.model import Scorer

from ravn_core.cli import main as ravn_main
from ravn_core.testing import make_context

SEC = 1_000_000_000


def process(pid: int, ts: int, nrs: list[int]) -> list[dict[str, Any]]:
    evs = [{"evt.type": "syscall", "proc.pid": pid, "proc.comm": "job", "syscall.nr": n, "evt.ts": ts + i * 1000}
           for i, n in enumerate(nrs)]
    return [*evs, {"evt.type": "exit", "proc.pid": pid, "proc.comm": "job", "evt.ts": ts + len(nrs) * 1000}]


def recording(path: Path, odd_in_last_quarter: int = 0) -> Path:
    """One hour of a host whose processes all run the same cycle, one every 6 s; optionally some processes in
    the last quarter (the held-back part) behave differently."""
    t0 = 1_700_000_000 * SEC
    lines = []
    for i in range(600):
        ts = t0 + i * 6 * SEC
        odd = i >= 450 and i % max(1, 150 // max(odd_in_last_quarter, 1)) == 0 and odd_in_last_quarter > 0
        nrs = [(3 * k) % 10 for k in range(100)] if odd else [k % 10 for k in range(100)]
        lines += [json.dumps(e) for e in process(1000 + i, ts, nrs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def learn(tmp_path: Path, events: Path, name: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / name
    rc = ravn_main(["learn", "--events", str(events), "--output", str(out), "--host", "testhost", "--steps", "60",
                    "--threads", "1", "--min-heldout-hours", "0.2"])
    assert rc == 0
    report = json.loads(Path(str(out) + ".json").read_text())
    return out, report


def analyzer(model: Path) -> OnnxAnalyzer:
    return OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=str(model), own_alerts=True),
                        make_context("learn", host="testhost"))


def test_learn_meets_the_budget_on_a_steady_host_and_the_model_may_alert_on_its_own(tmp_path: Path) -> None:
    model, report = learn(tmp_path, recording(tmp_path / "steady.jsonl"), "steady.onnx")
    assert report["budget_met"] is True and report["medium_alerts"] == 0 and report["fa_per_hour"] == 0
    assert report["heldout_hours"] == pytest.approx(0.25, rel=0.05)
    assert report["heldout_processes_scored"] >= 100
    learning = Scorer(str(model)).info.learning
    assert learning is not None and learning["host"] == "testhost" and learning["budget_met"] is True
    an = analyzer(model)
    assert "own alerts (measured 0.00 MEDIUM false alarms per host-hour" in an.health().detail
    assert an.describe()["mode"].startswith("own alerts")


def test_learn_refuses_own_alerts_when_the_held_back_part_breaks_the_budget(tmp_path: Path) -> None:
    model, report = learn(tmp_path, recording(tmp_path / "changing.jsonl", odd_in_last_quarter=10),
                          "changing.onnx")
    # ten unlike processes in the held-back quarter hour: about 40 per host-hour, far over 1
    assert report["budget_met"] is False and report["medium_alerts"] >= 5 and report["fa_per_hour"] > 1
    an = analyzer(model)
    detail = an.health().detail
    assert detail.startswith("model ravn-host-lm") and "corroboration only" in detail
    assert "not within its learning budget (1 per host-hour)" in detail


def test_learn_too_short_a_held_back_part_cannot_meet_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "short.onnx"
    assert ravn_main(["learn", "--events", str(recording(tmp_path / "r.jsonl")), "--output", str(out),
                      "--steps", "30", "--threads", "1"]) == 0  # default --min-heldout-hours 1 > 0.25 h
    assert json.loads(Path(str(out) + ".json").read_text())["budget_met"] is False


def test_learn_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_duration("24h") == 86400 and parse_duration("90") == 90 and parse_duration("15m") == 900
    with pytest.raises(ValueError, match="duration '1 week'"):
        parse_duration("1 week")
    assert ravn_main(["learn", "--output", str(tmp_path / "m.onnx")]) != 0
    assert "give --config and --duration" in capsys.readouterr().err
    assert ravn_main(["learn", "--events", str(tmp_path / "none.jsonl"), "--output", "m.onnx"]) != 0
    assert ravn_main(["learn", "--events", "x", "--output", "m.onnx", "--budget", "2"]) != 0
    assert "at most 1 per host-hour" in capsys.readouterr().err


def test_budget_thresholds_allow_at_most_the_budget_on_the_calibration_part() -> None:
    scores = [float(s) for s in range(1, 101)]  # 100 processes, scores 1..100 nats
    t1, t2 = budget_thresholds(scores, hours=4.0, per_hour=0.5)  # 2 allowed
    assert sum(s > t1 for s in scores) == 2 and t2 > t1
    t1, _ = budget_thresholds(scores, hours=0.5, per_hour=0.5)  # none allowed
    assert sum(s > t1 for s in scores) == 0
