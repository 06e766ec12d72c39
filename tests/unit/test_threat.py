"""Incidents (ravn_core/threat.py): lineage join, escalation, closing, corroboration, bound, folding."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ravn_core.components import Alert
from ravn_core.config import ThreatConfig
from ravn_core.proctree import ProcessTree
from ravn_core.threat import TACTICS, IncidentTracker, incident_line, incident_score, level_for, tactic_of

ROOT = Path(__file__).resolve().parents[2]
CFG = ThreatConfig(medium=50, high=80, fold_window_s=10, incident_window_s=100)
# tags whose first technique maps to each tactic (from the rules' own tags)
DISCOVERY, CREDS, PERSIST, EXEC, C2 = ["T1082"], ["T1003.008"], ["T1136.001"], ["T1059"], ["T1105"]


def alert(rule: str, score: int, pid: int = 1, tags: list[str] | None = None, description: str = "d",
          analyzer: str = "rules", corroboration: bool = False) -> Alert:
    return Alert(analyzer, rule, score, description, pid=pid, tags=list(tags or []), corroboration=corroboration)


class Tree:
    """A process tree built through its real update path (fork / setsid events)."""

    def __init__(self) -> None:
        self.tree = ProcessTree()
        self.ts = 0

    def fork(self, parent: int, child: int, comm: str = "bash") -> Tree:
        self.ts += 1
        self.tree.update([{"evt.type": "fork", "evt.ts": self.ts, "proc.pid": parent, "proc.comm": comm,
                           "fork.child_pid": child}])
        return self

    def setsid(self, pid: int) -> Tree:
        self.ts += 1
        self.tree.update([{"evt.type": "setsid", "evt.ts": self.ts, "proc.pid": pid, "setsid.sid": pid}])
        return self

    def session(self, leader: int, *children: int, parent: int = 900) -> Tree:
        """``leader`` forked by ``parent`` (a child of pid 1), made a session leader; ``children`` forked by it."""
        if parent not in self.tree:
            self.fork(1, parent, "sshd")
        self.fork(parent, leader).setsid(leader)
        for c in children:
            self.fork(leader, c)
        return self


def tracker(tree: Tree | None = None, **cfg: Any) -> IncidentTracker:
    c = CFG.model_copy(update=cfg) if cfg else CFG
    return IncidentTracker("h", c, tree.tree if tree else None)


# ------------------------------------------------------------------------------------------------ levels, score
def test_level_boundaries() -> None:
    assert [level_for(s, CFG) for s in (0, 50, 50.01, 80, 80.5, 100)] == ["LOW", "LOW", "MEDIUM", "MEDIUM",
                                                                            "HIGH", "HIGH"]
    custom = ThreatConfig(medium=20, high=30)
    assert level_for(25, custom) == "MEDIUM" and level_for(31, custom) == "HIGH"


def test_one_high_alert_makes_host_high_and_the_update_names_its_incident() -> None:
    s = tracker(Tree().session(100, 101))
    out, updates = s.process([alert("r", 90, pid=101)], now=0)
    assert out[0].level == "HIGH" and out[0].host == "h" and out[0].incident
    assert [(u.previous_level, u.level) for u in updates] == [("LOW", "HIGH")]
    assert updates[0].top_alerts[0].rule == "r"
    [inc] = updates[0].incidents
    assert inc["id"] == out[0].incident and inc["rules"] == ["r"] and inc["level"] == "HIGH"
    assert inc["root"]["pid"] == 100 and inc["key"] == "sid:100"


def test_formula_examples_from_the_docstring() -> None:
    def score(*rules: tuple[int, list[str]], corr: int = 0) -> float:
        s = tracker()
        alerts = [alert(f"r{i}", sc, tags=t) for i, (sc, t) in enumerate(rules)]
        if corr:
            alerts.append(alert("model", corr, analyzer="onnx", corroboration=True))
        s.process(alerts, now=0)
        return s.score

    assert score((60, DISCOVERY), (60, CREDS)) == 78.0
    assert score((60, DISCOVERY), (60, CREDS), (60, PERSIST)) == pytest.approx(87.9, abs=0.01)
    assert score((70, CREDS), (55, PERSIST)) == pytest.approx(82.37, abs=0.01)
    assert score((70, C2), (45, EXEC)) == pytest.approx(80.12, abs=0.01)  # download -> exec from /tmp: HIGH
    assert score((60, DISCOVERY), (40, ["T1082"])) == 64.0  # one tactic: a small bonus only
    assert score((60, DISCOVERY), corr=80) == 66.0
    assert score((95, EXEC)) == 95.0


# ------------------------------------------------------------------------------------------------ lineage
def test_processes_of_one_session_join_one_incident() -> None:
    t = Tree().session(100, 101, 102)
    t.fork(101, 103)  # a grandchild inherits the session
    s = tracker(t)
    out, _ = s.process([alert("a", 60, pid=101, tags=DISCOVERY), alert("b", 70, pid=103, tags=CREDS),
                        alert("c", 55, pid=102, tags=PERSIST)], now=0)
    assert len({a.incident for a in out}) == 1
    [inc] = s.open_incidents(0)
    assert inc["rules"] == ["a", "b", "c"] and inc["level"] == "HIGH" and inc["processes"] == 3
    assert inc["tactics"] == ["credential-access", "discovery", "persistence"]


def test_ancestry_joins_when_the_session_is_unknown() -> None:
    t = Tree()
    t.fork(1, 200, "cron").fork(200, 201, "sh").fork(201, 202, "curl").fork(201, 203, "chmod")
    s = tracker(t)
    out, _ = s.process([alert("a", 60, pid=202, tags=C2), alert("b", 60, pid=203, tags=EXEC)], now=0)
    assert out[0].incident == out[1].incident
    [inc] = s.open_incidents(0)
    assert inc["root"] == {"pid": 201, "comm": "sh", "exe": ""} and inc["key"] == "pid:201"
    # another job of the same service is another lineage; an alert on the service itself is its own
    t.fork(200, 211, "sh").fork(211, 212, "curl")
    out, _ = s.process([alert("c", 60, pid=212, tags=CREDS), alert("d", 60, pid=200, tags=PERSIST)], now=1)
    assert len({out[0].incident, out[1].incident, inc["id"]}) == 3


def test_setsid_child_of_an_attacker_shell_stays_in_its_incident() -> None:
    t = Tree().session(300, 301)
    s = tracker(t)
    first, _ = s.process([alert("reverse_shell", 60, pid=301, tags=C2)], now=0)
    t.fork(301, 310, "x").setsid(310)  # setsid nohup ./x &
    t.fork(310, 311, "x")  # and its own child, in the new session
    assert t.tree.get(310).sid == 310 and t.tree.get(311).sid == 310  # type: ignore[union-attr]
    out, _ = s.process([alert("discovery", 60, pid=311, tags=DISCOVERY)], now=1)
    assert out[0].incident == first[0].incident
    out, _ = s.process([alert("creds", 60, pid=310, tags=CREDS)], now=2)
    assert out[0].incident == first[0].incident and s.level == "HIGH"


def test_two_mediums_in_two_sessions_are_not_combined() -> None:
    t = Tree().session(100, 101).session(200, 201)
    s = tracker(t)
    out, _ = s.process([alert("a", 70, pid=101, tags=CREDS), alert("b", 65, pid=201, tags=PERSIST)], now=0)
    assert out[0].incident != out[1].incident
    assert s.level == "MEDIUM" and s.score == 70
    # the same two rules in one session make it HIGH
    same = tracker(Tree().session(100, 101, 102))
    same.process([alert("a", 70, pid=101, tags=CREDS), alert("b", 65, pid=102, tags=PERSIST)], now=0)
    assert same.level == "HIGH"


def test_a_reused_pid_or_session_id_is_another_process() -> None:
    """pids wrap within minutes on a busy host: a new process (or session leader) with an old alerting one's pid
    starts its own incident instead of adding up with the old one's rules (start_ts tells them apart)."""
    t = Tree().session(100, 101)
    s = tracker(t)
    first, _ = s.process([alert("a", 70, pid=101, tags=CREDS)], now=0)
    t.session(200, 101)  # 101 exited; its pid now names a child of another session
    second, _ = s.process([alert("b", 65, pid=101, tags=PERSIST)], now=1)
    assert second[0].incident != first[0].incident and s.level == "MEDIUM"
    t.fork(900, 100).setsid(100).fork(100, 105)  # the old session leader's pid leads a new session
    third, _ = s.process([alert("c", 65, pid=105, tags=EXEC)], now=2)
    assert third[0].incident != first[0].incident and s.level == "MEDIUM" and len(s) == 3
    # the same processes (same starts) still join their incidents
    out, _ = s.process([alert("d", 60, pid=105, tags=DISCOVERY), alert("e", 60, pid=101, tags=DISCOVERY)], now=3)
    assert [a.incident for a in out] == [third[0].incident, second[0].incident] and len(s) == 3


def test_a_service_main_process_does_not_pull_its_jobs_into_one_incident() -> None:
    t = Tree()
    t.fork(1, 50, "cron").setsid(50)
    for job in (60, 70):
        t.fork(50, job, "cron").setsid(job)
    s = tracker(t)
    s.process([alert("cron_alert", 60, pid=50, tags=PERSIST)], now=0)
    out, _ = s.process([alert("a", 70, pid=60, tags=CREDS), alert("b", 65, pid=70, tags=DISCOVERY)], now=1)
    assert len({a.incident for a in out}) == 2 and len(s) == 3 and s.level == "MEDIUM"


def test_self_alerts_form_their_own_incident() -> None:
    t = Tree().session(100, 101)
    s = tracker(t)
    out, _ = s.process([alert("a", 60, pid=101), Alert("ravn", "drops", 70, "d", pid=os.getpid()),
                        Alert("ravn", "memory", 60, "m", pid=os.getpid())], now=0)
    assert out[1].incident == out[2].incident != out[0].incident
    ravn = [i for i in s.open_incidents(0) if i["key"] == "ravn"]
    assert ravn[0]["root"]["comm"] == "ravn" and ravn[0]["rules"] == ["drops", "memory"]


# ------------------------------------------------------------------------------------------------ escalation
def test_independent_tactics_escalate_along_the_chain() -> None:
    t = Tree().session(100, 101, 102, 103)
    s = tracker(t)
    s.process([alert("discovery_burst", 60, pid=101, tags=DISCOVERY)], now=0)
    assert s.level == "MEDIUM"
    s.process([alert("sensitive_file_read", 60, pid=102, tags=CREDS)], now=5)
    assert s.level == "MEDIUM"
    _, updates = s.process([alert("user_account_tool", 60, pid=103, tags=PERSIST)], now=9)
    assert s.level == "HIGH" and updates[0].incidents[0]["rules"] == ["discovery_burst", "sensitive_file_read",
                                                                     "user_account_tool"]


def test_same_tactic_noise_and_repeats_do_not_escalate() -> None:
    t = Tree().session(100, *range(101, 131))
    s = tracker(t)
    # a sysadmin: many discovery rules, each many times, in one session
    s.process([alert(f"discovery_{i % 5}", 60, pid=101 + i, tags=["T1082", "T1057"]) for i in range(30)], now=0)
    assert s.level == "MEDIUM" and s.score == 70  # 60 + the capped same-tactic bonus (10)
    s.process([alert("discovery_0", 60, pid=101, tags=DISCOVERY) for _ in range(50)], now=1)
    assert s.score == 70
    [inc] = s.open_incidents(1)
    assert inc["rules"] == [f"discovery_{i}" for i in range(5)] and inc["alerts"] == 80


def test_one_noisy_rule_on_many_unrelated_processes_is_many_incidents_not_a_high_host() -> None:
    t = Tree()
    for n in range(20):
        t.session(1000 + 10 * n, 1001 + 10 * n)
    s = tracker(t)
    s.process([alert("noisy", 60, pid=1001 + 10 * n, tags=EXEC) for n in range(20)], now=0)
    assert len(s.open_incidents(0)) == 20 and s.level == "MEDIUM" and s.score == 60


# ------------------------------------------------------------------------------------------------ time
def test_incident_closes_after_quiet_time_and_the_level_falls() -> None:
    s = tracker(Tree().session(100, 101))
    s.process([alert("r", 90, pid=101)], now=0)
    _, updates = s.tick(now=100)  # within the window
    assert s.level == "HIGH" and not updates
    s.process([alert("r", 90, pid=101)], now=50)  # a repeat refreshes the rule
    _, updates = s.tick(now=140)
    assert s.level == "HIGH"
    _, updates = s.tick(now=151)
    assert s.level == "LOW" and len(s) == 0 and s.counters["incidents_closed"] == 1
    assert [(u.previous_level, u.level) for u in updates] == [("HIGH", "LOW")]
    out, _ = s.process([alert("r", 90, pid=101)], now=152)
    assert out[0].incident != "" and s.counters["incidents_opened"] == 2


def test_rules_far_apart_in_time_do_not_combine() -> None:
    s = tracker(Tree().session(100, 101))
    s.process([alert("a", 70, pid=101, tags=CREDS)], now=0)
    s.tick(now=101)
    s.process([alert("b", 65, pid=101, tags=PERSIST)], now=102)
    assert s.level == "MEDIUM" and s.score == 65


# ------------------------------------------------------------------------------------------------ corroboration
def test_corroboration_alone_is_never_above_low_and_is_held() -> None:
    t = Tree().session(100, 101)
    s = tracker(t)
    out, updates = s.process([alert("model", 100, pid=101, analyzer="onnx", corroboration=True)
                              for _ in range(10)], now=0)
    assert out == [] and updates == [] and s.level == "LOW" and s.score <= 20
    assert s.counters["corroboration_held"] == 10 and s.open_incidents(0) == []


def test_corroboration_adds_a_capped_amount_to_the_incident_of_its_process() -> None:
    t = Tree().session(100, 101, 102).session(200, 201)
    s = tracker(t)
    s.process([alert("model", 100, pid=201, analyzer="onnx", corroboration=True)], now=0)  # another session
    s.process([alert("model", 100, pid=102, analyzer="onnx", corroboration=True)], now=0)
    out, _ = s.process([alert("rule", 60, pid=101, tags=EXEC)], now=1)
    assert s.level == "MEDIUM" and s.score == 66.0
    out, _ = s.process([alert("model", 100, pid=102, analyzer="onnx", corroboration=True, description="x")],
                       now=2)
    assert len(out) == 1 and out[0].level == "LOW" and out[0].incident == s.open_incidents(2)[0]["id"]
    strong = tracker(Tree().session(100, 101))
    strong.process([alert("model", 100, pid=101, analyzer="onnx", corroboration=True),
                    alert("rule", 75, pid=101, tags=EXEC)], now=0)
    assert strong.level == "MEDIUM"
    strong.process([alert("rule2", 85, pid=101, tags=EXEC)], now=0)
    assert strong.level == "HIGH"


def test_corroboration_max_above_medium_is_rejected() -> None:
    with pytest.raises(ValueError, match="corroboration_max"):
        ThreatConfig(medium=30, high=80, corroboration_max=40)


# ------------------------------------------------------------------------------------------------ bound
def test_open_incidents_are_bounded_and_low_ones_go_first() -> None:
    t = Tree()
    for n in range(10):
        t.session(1000 + 10 * n, 1001 + 10 * n)
    s = tracker(t, max_incidents=3)
    s.process([alert("high", 90, pid=1001)], now=0)
    s.process([alert("medium", 60, pid=1011)], now=1)
    s.process([alert(f"low{n}", 30, pid=1001 + 10 * n) for n in range(2, 10)], now=2)
    shown = s.open_incidents(2)
    assert len(s) == 3 and s.counters["incidents_evicted"] == 7
    assert [i["rules"] for i in shown] == [["high"], ["medium"], ["low9"]]
    s.process([alert("medium2", 60, pid=1021)], now=3)
    s.process([alert("medium3", 60, pid=1031)], now=4)
    assert [i["rules"][0] for i in s.open_incidents(4)] == ["high", "medium3", "medium2"]  # newest first on ties
    assert s.level == "HIGH"


# ------------------------------------------------------------------------------------------------ folding
def test_repeats_fold_into_one_alert_with_count() -> None:
    s = tracker()
    first, _ = s.process([alert("r", 60)], now=0)
    assert len(first) == 1
    out, _ = s.process([alert("r", 60) for _ in range(5)], now=1)
    assert out == []
    other_pid, _ = s.process([alert("r", 60, pid=2)], now=2)
    assert len(other_pid) == 1  # folding is per process
    out, _ = s.tick(now=11)
    folded = [a for a in out if a.pid == 1]
    assert len(folded) == 1 and folded[0].count == 5 and folded[0].incident == first[0].incident
    again, _ = s.process([alert("r", 60)], now=12)
    assert len(again) == 1 and again[0].count == 1


def test_folding_never_hides_a_second_subject() -> None:
    """Issue 13.5: one process writes sudoers then shadow; the second alert must name shadow."""
    s = tracker()
    out, _ = s.process([alert("sensitive_file_written", 70, pid=7, description="bash wrote /etc/sudoers")], now=0)
    out2, _ = s.process([alert("sensitive_file_written", 70, pid=7, description="bash wrote /etc/shadow")], now=1)
    assert [a.description for a in out + out2] == ["bash wrote /etc/sudoers", "bash wrote /etc/shadow"]


# ------------------------------------------------------------------------------------------------ tactics table
def test_every_technique_of_the_shipped_rules_has_a_tactic() -> None:
    rules_dir = ROOT / "plugins/analyzers/src/ravn_analyzers/rules"
    missing = set()
    for path in rules_dir.rglob("*.yaml"):
        for item in yaml.safe_load(path.read_text()) or []:
            if isinstance(item, dict) and "rule" in item:
                for tag in item.get("tags") or []:
                    if re.fullmatch(r"T\d{4}(\.\d{3})?", str(tag)) and tactic_of([tag]) == "other":
                        missing.add(f"{tag} ({path.name}: {item['rule']})")
    assert not missing, f"add these techniques to ravn_core.threat.TACTICS: {sorted(missing)}"
    assert tactic_of([]) == "other" and tactic_of(["ravn.self"]) == "other"
    assert tactic_of(["t1059.004"]) == TACTICS["T1059"] == "execution"


def test_incident_score_and_line() -> None:
    assert incident_score([], CFG) == 0.0
    s = tracker(Tree().session(100, 101))
    s.process([alert("a", 60, pid=101, tags=EXEC),
               alert("m", 90, pid=101, analyzer="onnx", corroboration=True)], now=0)
    line = incident_line(s.open_incidents(30)[0])
    assert line.startswith(s.open_incidents(0)[0]["id"] + " MEDIUM")
    assert "age 30s" in line and "root 100 bash" in line and "rules: a [+m]" in line


def test_take_changed_reports_shown_incidents_once_per_change() -> None:
    s = tracker(Tree().session(100, 101).session(200, 201))
    assert s.take_changed(0) is None
    s.process([alert("model", 90, pid=201, analyzer="onnx", corroboration=True)], now=0)
    assert s.take_changed(0) is None  # held corroboration is not shown
    s.process([alert("a", 60, pid=101)], now=1)
    [inc] = s.take_changed(1) or []
    assert inc["rules"] == ["a"] and s.take_changed(1) is None
    s.tick(now=50)
    assert s.take_changed(50) is None
    s.tick(now=102)  # closed
    assert s.take_changed(102) == []

