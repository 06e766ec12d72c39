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


def test_daemon_reloads_rules_on_sighup_and_keeps_them_when_invalid(tmp_path: Path) -> None:
    import signal
    import threading
    import time

    rules = tmp_path / "rules.yaml"
    rule = "- rule: {name}\n  description: x\n  score: 60\n  events: [open]\n  condition: file.path = /x\n"
    rules.write_text(rule.format(name="first"))
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text(f"ravn: {{state_dir: {tmp_path}/state}}\nanalyzers:\n  - plugin: analyzer_rules\n"
                   f"    rule_files: [{rules}]\nsinks:\n  - {{plugin: jsonl, path: {tmp_path}/alerts.jsonl}}\n")
    proc = subprocess.Popen([str(RAVN), "--config", str(cfg)], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(text: str) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(text in line for line in lines):
                return True
            time.sleep(0.05)
        return False

    try:
        assert wait_for("RAVN running"), "".join(lines)
        rules.write_text(rule.format(name="second"))
        proc.send_signal(signal.SIGHUP)
        assert wait_for("rules reloaded: 1 rules"), "".join(lines)
        rules.write_text("- rule: third\n  score: [\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for("rules reload failed, keeping the 1 loaded rules"), "".join(lines)
        assert any(f"{rules}:" in line for line in lines if "reload failed" in line)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0, "".join(lines[-20:])
