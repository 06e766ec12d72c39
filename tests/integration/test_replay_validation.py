"""The replay boundary (issue 13.2): lines that are not events of the schema are counted, reported with file and
line, and skipped; the good events around them are analyzed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ravn_core.builtin.record import ReplayConfig, ReplayTransport
from ravn_core.events import MAX_STR
from ravn_core.testing import make_context, synthetic_event


def test_replay_skips_hostile_lines_with_file_and_line(tmp_path: Path, caplog: Any) -> None:
    good = [synthetic_event("exec", seq=i) for i in range(6)]
    bad = [
        {**synthetic_event("open", seq=90), "proc.pid": [1]},
        {**synthetic_event("open", seq=91), "file.path": 5},
        {**synthetic_event("open", seq=92), "file.write": "yes"},
        {**synthetic_event("exec", seq=93), "exec.argv": [1, 2]},
        {**synthetic_event("exec", seq=94), "evt.type": "no_such_type"},
        {**synthetic_event("open", seq=95), "file.path": "/" * (MAX_STR + 1)},
    ]
    lines = [json.dumps(e) for e in good[:3]] + [json.dumps(e) for e in bad]
    lines.append('{"evt.type": "open", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")  # deep nesting
    lines += [json.dumps(e) for e in good[3:]]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t = ReplayTransport("replay", ReplayConfig(path=str(path), batch_size=100), make_context("replay", host="h"))
    got = []
    while (d := t.consume(0)) is not None:
        got += d.batch
    t.close()
    assert got == good and t.bad_lines == len(bad) + 1
    text = caplog.text
    assert f"{path}:4: proc.pid: a list, want int; line skipped" in text
    assert f"{path}:8: evt.type: unknown event type 'no_such_type'" in text
    assert f"{path}:10: nested too deeply to be an event" in text
