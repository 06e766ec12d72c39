"""Incidents on the real daemon: alerts of one session (and of a child that called setsid) add up to one incident
that escalates across ATT&CK tactics; the same behaviours in two sessions stay two incidents, each scored on its
own alerts only.

Each step alone is a MEDIUM rule: discovery_burst (60, discovery), cron_job_written (65, persistence) into the
cron directory the harness adds under its work dir, and a read of /etc/shadow (credential access). Commands run
through the harness's runner as session leaders in a cgroup of their own, so their alerts are told apart from
the rest of the host's.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any

import pytest

from ravn_core.components import Alert
from ravn_core.config import ThreatConfig
from ravn_core.threat import Contribution, incident_score, tactic_of
from tests.scenarios.harness import Daemon

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

DISCOVERY = "id; whoami; uname -a; ps >/dev/null; hostname; groups"


def _cron(daemon: Daemon, name: str) -> str:
    crondir = daemon.base / "work" / "cron_write" / "cron.d"  # in the rules' cron_paths (harness.config)
    return f"mkdir -p {crondir} && echo '* * * * * root true' > {crondir}/{name}"


def _run(daemon: Daemon, name: str, script: str,
         until: Callable[[list[dict[str, Any]]], bool]) -> tuple[int, list[dict[str, Any]]]:
    cgroup, cgroup_id = daemon._cgroup(name)
    try:
        pid, _, _, error = daemon.command(["/bin/sh", "-c", script], cgroup, str(daemon.base), 30.0)
        assert not error, error
        deadline = time.time() + 10
        while True:
            alerts = daemon.attributed(pid, cgroup_id)
            if until(alerts) or time.time() > deadline:
                return pid, alerts
            time.sleep(0.05)
    finally:
        daemon._remove_cgroup(cgroup)


def _rules(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["rule"] for a in alerts}


def test_one_session_and_its_setsid_child_escalate_to_one_high_incident(daemon: Daemon) -> None:
    want = {"discovery_burst", "sensitive_file_read", "cron_job_written"}
    script = (f"{DISCOVERY}\ncat /etc/shadow > /dev/null\n"
              f"setsid sh -c {shlex.quote(_cron(daemon, 'incident-chain'))} &\nwait\nsleep 0.5")
    pid, alerts = _run(daemon, "incident-chain", script, lambda a: want <= _rules(a))
    assert want <= _rules(alerts), alerts
    cron = [a for a in alerts if a["rule"] == "cron_job_written"]
    assert all(a["pid"] != pid for a in cron)  # written by the child that left the session
    incidents = daemon.incidents_of(alerts)
    assert len(incidents) == 1 and {a["incident"] for a in alerts} == {incidents[0]["id"]}, incidents
    inc = incidents[0]
    assert inc["root"]["pid"] == pid and want <= set(inc["rules"])
    assert {"discovery", "credential-access", "persistence"} <= set(inc["tactics"])
    assert inc["level"] == "HIGH" and inc["score"] > max(a["score"] for a in alerts), inc


def test_the_same_behaviours_in_two_sessions_are_two_incidents_that_are_not_combined(daemon: Daemon) -> None:
    pid1, first = _run(daemon, "incident-a", DISCOVERY, lambda a: "discovery_burst" in _rules(a))
    pid2, second = _run(daemon, "incident-b", _cron(daemon, "incident-b"),
                        lambda a: "cron_job_written" in _rules(a))
    assert "discovery_burst" in _rules(first) and "cron_job_written" in _rules(second)
    incidents = daemon.incidents_of(first + second)
    assert len(incidents) == 2, incidents
    by_root = {i["root"]["pid"]: i for i in incidents}
    assert set(by_root) == {pid1, pid2}
    for pid, alerts in ((pid1, first), (pid2, second)):
        assert set(by_root[pid]["rules"]) == _rules(alerts), (by_root[pid], alerts)
    assert not _rules(first) & _rules(second)
    # what the two would have scored as one incident: more than either scores apart
    together = incident_score(_contributions(first + second), ThreatConfig())
    assert together > max(by_root[pid1]["score"], by_root[pid2]["score"])
    assert by_root[pid1]["score"] == incident_score(_contributions(first), ThreatConfig())
    assert by_root[pid2]["score"] == incident_score(_contributions(second), ThreatConfig())


def _contributions(alerts: list[dict[str, Any]]) -> list[Contribution]:
    best: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a["rule"] not in best or a["score"] > best[a["rule"]]["score"]:
            best[a["rule"]] = a
    return [Contribution(a["analyzer"], a["rule"], float(a["score"]), tactic_of(a["tags"]),
                         bool(a.get("corroboration")), 0.0, 0.0, Alert(a["analyzer"], a["rule"], a["score"], ""))
            for a in best.values()]
