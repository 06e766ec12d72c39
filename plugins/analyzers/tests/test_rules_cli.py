"""`ravn rules check` and `ravn rules list`, run as the user would (subprocess of the installed CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RAVN = Path(sys.executable).parent / "ravn"


def ravn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAVN), *args], capture_output=True, text=True, timeout=60)


def test_check_good_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "local.yaml"
    good.write_text("- rule: my_rule\n  description: '{proc.comm} ran {exec.filename}'\n  score: 60\n"
                    "  tags: [T1059]\n  events: [exec]\n  condition: spawned and shell_exec\n")
    res = ravn("rules", "check", str(good))
    assert res.returncode == 0, res.stderr
    assert "ok: 1 rules in" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: broken\n  description: d\n  score: 60\n  events: [open]\n  condition: file.pth = /x\n")
    res = ravn("rules", "check", str(bad))
    assert res.returncode == 2
    assert f"{bad}:5: rule 'broken': condition: unknown field 'file.pth'" in res.stderr


def test_list_uses_the_config_section(tmp_path: Path) -> None:
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text("analyzers:\n  - plugin: analyzer_rules\n    disabled_rules: [exec_from_tmp]\n"
                   "    score_overrides: {port_scan: 90}\n")
    res = ravn("rules", "list", "--config", str(cfg), "--json")
    assert res.returncode == 0, res.stderr
    rules = {r["name"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert "exec_from_tmp" not in rules
    assert rules["port_scan"]["score"] == 90 and rules["port_scan"]["level"] == "HIGH"
    assert len(rules) >= 40
