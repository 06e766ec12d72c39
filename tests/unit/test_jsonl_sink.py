"""The builtin jsonl sink: whole lines, one write(2) per call, appended, root-readable only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ravn_core.builtin.sinks import JsonlConfig, JsonlSink, StdoutConfig, StdoutSink
from ravn_core.components import Alert, ThreatUpdate
from ravn_core.testing import make_context


def test_alerts_and_threat_updates_are_whole_lines_written_once_per_call(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "alerts.jsonl"
    path.parent.mkdir()
    path.write_text('{"kind":"earlier"}\n')  # appended to, never truncated
    sink = JsonlSink("jsonl", JsonlConfig(path=str(path)), make_context("jsonl"))
    alerts = [Alert("analyzer_rules", "r", 60, f"alert {i} " + "x" * 5000, pid=i) for i in range(4)]
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    sink.emit_alerts(alerts)  # 20 KB: more than one stdio buffer, still one write
    sink.emit_alerts([])
    sink.emit_threat(ThreatUpdate("h", "MEDIUM", 60.0, "LOW", alerts[:1]))
    monkeypatch.undo()
    sink.close()
    assert len(writes) == 2 and writes[0] > 20_000
    lines = path.read_text().split("\n")
    assert lines[-1] == ""  # ends with a newline: no partial line
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["kind"] for r in records] == ["earlier", "alert", "alert", "alert", "alert", "threat"]
    assert [r["pid"] for r in records[1:5]] == [0, 1, 2, 3]
    assert sink.health().counters["written"] == 5


def test_a_new_file_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    JsonlSink("jsonl", JsonlConfig(path=str(path)), make_context("jsonl")).close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0


def test_stdout_lines_name_the_incident(capsys: pytest.CaptureFixture[str]) -> None:
    sink = StdoutSink("stdout", StdoutConfig(), make_context("stdout"))
    sink.emit_alerts([Alert("analyzer_rules", "r", 60, "did x", pid=7, comm="sh", level="MEDIUM", incident="ab12-3"),
                      Alert("analyzer_rules", "q", 60, "did y", pid=8, comm="sh", level="MEDIUM")])
    inc = {"id": "ab12-3", "root": {"pid": 5, "comm": "bash", "exe": "/usr/bin/bash"}, "rules": ["r", "s"]}
    sink.emit_threat(ThreatUpdate("h", "HIGH", 84.6, "MEDIUM", [], incidents=[inc]))
    lines = capsys.readouterr().out.splitlines()
    assert "pid=7 comm=sh incident=ab12-3 " in lines[0] and "incident=- " in lines[1]
    assert lines[2].endswith("THREAT host=h threat level MEDIUM -> HIGH (score 84.6), incident ab12-3 root 5 bash: "
                             "r > s")
