"""`ravn replay` without root or kernel: bad lines are reported with their line number and skipped."""

from __future__ import annotations

import json
from pathlib import Path

from ravn_core.cli import main
from ravn_core.testing import synthetic_event


def test_replay_reports_bad_lines_and_goes_on(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    events = tmp_path / "events.jsonl"
    good = [synthetic_event("exec", seq=i) for i in range(2500)]
    lines = [json.dumps(e) for e in good]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps([1, 2, 3]))
    lines.insert(30, json.dumps({"no": "type"}))
    events.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text(f"ravn:\n  state_dir: {tmp_path}/state\nsinks:\n  - plugin: jsonl\n    path: {tmp_path}/a.jsonl\n")
    assert main(["replay", str(events), "--config", str(cfg), "--batch-size", "1000"]) == 0
    err = capsys.readouterr().err
    assert "replayed 2500 events" in err and "3 bad lines skipped" in err
    assert f"{events}:11: not JSON" in err and f"{events}:21: not an event" in err


def test_replay_missing_file_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text(f"ravn:\n  state_dir: {tmp_path}/state\n")
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--config", str(cfg)]) == 1
    assert "no such events file" in capsys.readouterr().err
