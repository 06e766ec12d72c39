"""End to end without the kernel: the attack events of test_rules_default written as a recording, fed through
`ravn replay` (runtime, process tree, analyzer_rules, threat scoring, jsonl sink) in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import yaml

RAVN = Path(sys.executable).parent / "ravn"


def _attacks() -> dict[str, list[dict[str, object]]]:
    # pytest runs with --import-mode=importlib: load the sibling module by path
    spec = importlib.util.spec_from_file_location("rules_default_cases", Path(__file__).with_name(
        "test_rules_default.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    attacks: dict[str, list[dict[str, object]]] = mod.ATTACKS
    return attacks


def test_replay_of_recorded_attacks_raises_each_rule(tmp_path: Path) -> None:
    attacks = _attacks()
    events = tmp_path / "events.jsonl"
    with events.open("w") as f:
        for evs in attacks.values():
            for e in evs:
                f.write(json.dumps({**e, "evt.source": "replay-test"}) + "\n")
    alerts_path = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text(yaml.safe_dump({
        "ravn": {"state_dir": str(tmp_path / "state")},
        "analyzers": [{"plugin": "analyzer_rules", "append_lists": {"c2_addresses": ["203.0.113.7"]}}],
        "sinks": [{"plugin": "jsonl", "path": str(alerts_path)}],
    }))
    proc = subprocess.run([str(RAVN), "replay", str(events), "--config", str(cfg), "--batch-size", "64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in alerts_path.read_text().splitlines() if line.strip()]
    fired = {r["rule"] for r in records if r.get("kind", "alert") == "alert" and r.get("analyzer") == "analyzer_rules"}
    assert set(attacks) - fired == set()
    levels = {r["rule"]: r["level"] for r in records if r.get("analyzer") == "analyzer_rules"}
    assert levels["reverse_shell_stdio_to_socket"] == "HIGH"
    assert levels["exec_from_tmp"] == "LOW"
