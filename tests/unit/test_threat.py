from __future__ import annotations

from ravn_core.components import Alert
from ravn_core.config import ThreatConfig
from ravn_core.threat import ThreatScorer, level_for

CFG = ThreatConfig(medium=50, high=80, half_life_s=100, fold_window_s=10)


def alert(rule: str, score: int, pid: int = 1) -> Alert:
    return Alert("a", rule, score, "d", pid=pid)


def test_level_boundaries() -> None:
    assert [level_for(s, CFG) for s in (0, 50, 50.01, 80, 80.5, 100)] == ["LOW", "LOW", "MEDIUM", "MEDIUM",
                                                                            "HIGH", "HIGH"]
    custom = ThreatConfig(medium=20, high=30)
    assert level_for(25, custom) == "MEDIUM" and level_for(31, custom) == "HIGH"


def test_one_high_alert_makes_host_high_and_publishes_change() -> None:
    s = ThreatScorer("h", CFG)
    out, updates = s.process([alert("r", 90)], now=0)
    assert out[0].level == "HIGH" and out[0].host == "h"
    assert [(u.previous_level, u.level) for u in updates] == [("LOW", "HIGH")]
    assert updates[0].top_alerts[0].rule == "r"


def test_independent_medium_signals_escalate_but_one_noisy_rule_counts_once() -> None:
    s = ThreatScorer("h", CFG)
    s.process([alert("noisy", 60, pid=p) for p in range(20)], now=0)
    assert s.level == "MEDIUM" and s.score == 60
    s.process([alert("other", 60)], now=0)
    assert s.level == "HIGH" and 80 < s.score < 90


def test_decay_when_quiet() -> None:
    s = ThreatScorer("h", CFG)
    s.process([alert("r", 90)], now=0)
    _, updates = s.tick(now=100)  # one half-life: 45
    assert s.level == "LOW" and abs(s.score - 45) < 0.01
    assert [(u.previous_level, u.level) for u in updates] == [("HIGH", "LOW")]


def test_repeats_fold_into_one_alert_with_count() -> None:
    s = ThreatScorer("h", CFG)
    first, _ = s.process([alert("r", 60)], now=0)
    assert len(first) == 1
    out, _ = s.process([alert("r", 60) for _ in range(5)], now=1)
    assert out == []
    other_pid, _ = s.process([alert("r", 60, pid=2)], now=2)
    assert len(other_pid) == 1  # folding is per process
    out, _ = s.tick(now=11)
    folded = [a for a in out if a.pid == 1]
    assert len(folded) == 1 and folded[0].count == 5
    again, _ = s.process([alert("r", 60)], now=12)
    assert len(again) == 1 and again[0].count == 1
