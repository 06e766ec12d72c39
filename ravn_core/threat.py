"""Incidents: alerts that share a process lineage form one incident with its own score; the host's threat level is
its worst open incident.

Joining (lineage). An alert on pid P joins an open incident of its host when, walking P and then its ancestors
(nearest first), a process is found whose pid already alerted in that incident, or whose session id (``sid``,
from the process tree) is a session of that incident. The walk stops before pid 1, kernel threads and a service's
main process (a process whose parent is pid 1), unless P is that process: one alert in ``sshd`` or ``cron`` does
not pull every later login or job into its incident. So ``setsid nohup ./x &`` from an attacker's shell stays in
the shell's incident (x's parent belongs to it). When nothing matches, a new incident starts, keyed by P's session
(sid > 1; for a process whose session is not known yet, its nearest ancestor's) or, with no session known, by its
ancestry root: the nearest session leader, else the topmost ancestor below a service's main process (P itself when
P is one). The joining process's pid and
session are added to the incident. Self-alerts (analyzer ``ravn``: drops, memory, quarantine) form one incident
of their own, rooted at RAVN.

Score of an incident (settings in ``ravn.threat``):

1. Each distinct (analyzer, rule) counts once, with its highest score: repeats never escalate.
2. A rule's tactic is the ATT&CK tactic of its first tag (``TACTICS`` maps technique ids to tactics; a missing
   or unknown tag is the tactic ``other``). Rule authors put the technique that says what the rule is first.
3. Per tactic: ``g = best + min(same_tactic_max, same_tactic_weight * sum(other scores of that tactic))``.
   Several discovery rules stay near the best one; a sysadmin's burst of discovery commands is not HIGH.
4. Across tactics, ``g`` sorted from the highest: ``score = 100 * (1 - (1 - g1/100) * prod(1 - w * gi/100))``
   with ``w = cross_tactic_weight``. Never below the best rule. With the defaults (w = 0.75): 60 + 60 in two
   tactics = 78 (MEDIUM), in three = 87.9 (HIGH); credential read 70 + persistence 55 = 82.4 (HIGH).
5. Corroboration: alerts with ``corroboration=True`` (the sequence model) form one more group worth
   ``min(corroboration_max, corroboration_weight * best corroborating score)``, combined like a tactic. An incident
   holding nothing else is capped at ``medium``: corroboration alone is never above LOW. A corroborating alert's own
   level is LOW, and it reaches the sinks only when its incident holds a non-corroborating alert; otherwise it is
   kept in the incident (listed in its rules) and counted as ``corroboration_held``.
6. Time: a rule's contribution lasts ``incident_window_s`` after its last alert (repeats refresh it); an incident
   without a live contribution closes.

The host score is the score of the worst open incident, and its level comes from ``medium``/``high``. A level
change produces a ``ThreatUpdate`` naming the incident(s) at that level; ``take_changed`` gives the runtime the
open incidents, once a tick, when they changed (for ``Sink.emit_incidents``). At most ``max_incidents`` are open
per host; beyond that the least recently active LOW incident is evicted first, then MEDIUM, then HIGH
(``incidents_evicted``).

Folding: the first alert of an (analyzer, rule, pid, description) goes out at once; repeats within
``fold_window_s`` are counted, and when the window closes with repeats one alert goes out again with ``count`` =
the repeats folded. The rendered description is in the key, so an alert naming another subject (sudoers, then
shadow, from one process) is never hidden behind the first.
"""

from __future__ import annotations

import os
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ravn_core.components import Alert, Level, ThreatUpdate
from ravn_core.config import ThreatConfig

if TYPE_CHECKING:
    from ravn_core.proctree import ProcessTree, ProcInfo

_LEVELS: dict[str, int] = {"LOW": 0, "MEDIUM": 1, "HIGH": 2}
SELF_ANALYZER = "ravn"
CORROBORATION = "corroboration"
OTHER = "other"
MAX_PIDS = 1024  # member pids and sessions kept per incident (a fork storm does not grow one without bound)
MAX_SIDS = 256

# ATT&CK technique (without sub-technique) -> the tactic a rule with it as first tag counts under. Techniques that
# belong to several tactics are put where Linux detections of them usually point.
TACTICS: dict[str, str] = {
    # initial access
    "T1078": "initial-access", "T1133": "initial-access", "T1190": "initial-access", "T1195": "initial-access",
    "T1199": "initial-access", "T1189": "initial-access", "T1200": "initial-access", "T1566": "initial-access",
    # execution
    "T1059": "execution", "T1072": "execution", "T1106": "execution", "T1129": "execution", "T1203": "execution",
    "T1204": "execution", "T1569": "execution", "T1609": "execution", "T1610": "execution", "T1651": "execution",
    # persistence
    "T1037": "persistence", "T1053": "persistence", "T1098": "persistence", "T1136": "persistence",
    "T1176": "persistence", "T1505": "persistence", "T1525": "persistence", "T1542": "persistence",
    "T1543": "persistence", "T1546": "persistence", "T1547": "persistence", "T1554": "persistence",
    "T1556": "persistence", "T1574": "persistence", "T1205": "persistence",
    # privilege escalation
    "T1055": "privilege-escalation", "T1068": "privilege-escalation", "T1134": "privilege-escalation",
    "T1484": "privilege-escalation", "T1548": "privilege-escalation", "T1611": "privilege-escalation",
    # defense evasion
    "T1006": "defense-evasion", "T1014": "defense-evasion", "T1027": "defense-evasion", "T1036": "defense-evasion",
    "T1070": "defense-evasion", "T1140": "defense-evasion", "T1202": "defense-evasion", "T1211": "defense-evasion",
    "T1218": "defense-evasion", "T1222": "defense-evasion", "T1480": "defense-evasion", "T1497": "defense-evasion",
    "T1562": "defense-evasion", "T1564": "defense-evasion", "T1612": "defense-evasion", "T1620": "defense-evasion",
    "T1622": "defense-evasion", "T1553": "defense-evasion", "T1578": "defense-evasion", "T1599": "defense-evasion",
    "T1600": "defense-evasion", "T1601": "defense-evasion",
    # credential access
    "T1003": "credential-access", "T1040": "credential-access", "T1056": "credential-access",
    "T1110": "credential-access", "T1212": "credential-access", "T1552": "credential-access",
    "T1555": "credential-access", "T1557": "credential-access", "T1558": "credential-access",
    "T1539": "credential-access", "T1606": "credential-access", "T1621": "credential-access",
    # discovery
    "T1007": "discovery", "T1016": "discovery", "T1018": "discovery", "T1033": "discovery", "T1046": "discovery",
    "T1049": "discovery", "T1057": "discovery", "T1069": "discovery", "T1082": "discovery", "T1083": "discovery",
    "T1087": "discovery", "T1124": "discovery", "T1135": "discovery", "T1201": "discovery", "T1518": "discovery",
    "T1613": "discovery", "T1614": "discovery", "T1010": "discovery", "T1120": "discovery", "T1217": "discovery",
    "T1580": "discovery", "T1619": "discovery", "T1652": "discovery", "T1654": "discovery",
    # lateral movement
    "T1021": "lateral-movement", "T1563": "lateral-movement", "T1570": "lateral-movement",
    "T1080": "lateral-movement", "T1210": "lateral-movement", "T1550": "lateral-movement",
    # collection
    "T1005": "collection", "T1074": "collection", "T1113": "collection", "T1115": "collection",
    "T1119": "collection", "T1123": "collection", "T1125": "collection", "T1560": "collection",
    "T1025": "collection", "T1039": "collection", "T1114": "collection", "T1185": "collection",
    "T1213": "collection", "T1530": "collection", "T1602": "collection",
    # command and control
    "T1001": "command-and-control", "T1008": "command-and-control", "T1071": "command-and-control",
    "T1090": "command-and-control", "T1095": "command-and-control", "T1102": "command-and-control",
    "T1105": "command-and-control", "T1132": "command-and-control", "T1219": "command-and-control",
    "T1568": "command-and-control", "T1571": "command-and-control", "T1572": "command-and-control",
    "T1573": "command-and-control", "T1104": "command-and-control", "T1659": "command-and-control",
    # exfiltration
    "T1020": "exfiltration", "T1030": "exfiltration", "T1041": "exfiltration", "T1048": "exfiltration",
    "T1537": "exfiltration", "T1567": "exfiltration", "T1011": "exfiltration", "T1029": "exfiltration",
    "T1052": "exfiltration",
    # impact
    "T1485": "impact", "T1486": "impact", "T1489": "impact", "T1490": "impact", "T1491": "impact",
    "T1496": "impact", "T1498": "impact", "T1499": "impact", "T1529": "impact", "T1531": "impact",
    "T1561": "impact", "T1565": "impact", "T1495": "impact", "T1657": "impact",
}


def level_for(score: float, cfg: ThreatConfig) -> Level:
    if score > cfg.high:
        return "HIGH"
    if score > cfg.medium:
        return "MEDIUM"
    return "LOW"


def tactic_of(tags: Iterable[str]) -> str:
    """The tactic of the first tag (``T1059.004`` -> ``execution``); ``other`` when it is missing or unknown."""
    for tag in tags:
        return TACTICS.get(str(tag).split(".", 1)[0].upper(), OTHER)
    return OTHER


@dataclass
class Contribution:
    """One distinct (analyzer, rule) of an incident: its best score, when it was first and last seen."""

    analyzer: str
    rule: str
    score: float
    tactic: str
    corroboration: bool
    first_ts: float
    last_ts: float
    alert: Alert
    alerts: int = 1


def incident_score(contributions: Iterable[Contribution], cfg: ThreatConfig) -> float:
    """The score of an incident from its live contributions (module docstring, points 1-5)."""
    groups: dict[str, list[float]] = {}
    corroborating: list[float] = []
    for c in contributions:
        if c.corroboration:
            corroborating.append(c.score)
        else:
            groups.setdefault(c.tactic, []).append(c.score)
    values: list[float] = []
    for scores in groups.values():
        scores.sort(reverse=True)
        bonus = min(cfg.same_tactic_max, cfg.same_tactic_weight * sum(scores[1:]))
        values.append(min(100.0, scores[0] + bonus))
    if corroborating:
        values.append(min(cfg.corroboration_max, cfg.corroboration_weight * max(corroborating)))
    if not values:
        return 0.0
    values.sort(reverse=True)
    remaining = 1.0 - min(values[0], 100.0) / 100.0
    for v in values[1:]:
        remaining *= 1.0 - cfg.cross_tactic_weight * min(v, 100.0) / 100.0
    score = 100.0 * (1.0 - remaining)
    if not groups:
        score = min(score, cfg.medium)
    return round(score, 2)


@dataclass
class Incident:
    """Alerts of one process lineage. ``rules`` keeps first-seen order.

    :ivar key: what started it: ``sid:<n>`` (a session), ``pid:<n>`` (an ancestry root), ``ravn`` (self-alerts),
        ``rule:<analyzer>/<rule>`` (an alert without a process).
    :ivar root: the process the incident is rooted at: pid, comm, exe.
    """

    id: str
    host: str
    key: str
    root: dict[str, Any]
    first_ts: float
    last_ts: float
    pids: set[int] = field(default_factory=set)
    sids: set[int] = field(default_factory=set)
    # when each member pid and session leader started (ProcInfo.start_ts; 0 unknown): a reused pid is another process
    starts: dict[int, int] = field(default_factory=dict)
    sid_starts: dict[int, int] = field(default_factory=dict)
    rules: dict[tuple[str, str], Contribution] = field(default_factory=dict)
    alerts: int = 0
    score: float = 0.0
    peak: float = 0.0
    level: Level = "LOW"
    shown: bool = False  # holds a non-corroborating alert (ever): shown in listings, its changes reported
    oldest: float = 0.0  # at most the oldest last_ts of its rules (tick scans the rules only when it is old)

    @property
    def corroborated_only(self) -> bool:
        return all(c.corroboration for c in self.rules.values())

    def summary(self, now: float) -> dict[str, Any]:
        """What status, /status, ``ravn top``, threat updates and the Redis hash show of an incident."""
        rules = [c.rule for c in self.rules.values() if not c.corroboration]
        return {
            "id": self.id, "host": self.host, "key": self.key, "root": dict(self.root),
            "rules": rules, "corroboration": [c.rule for c in self.rules.values() if c.corroboration],
            "tactics": sorted({c.tactic for c in self.rules.values() if not c.corroboration}),
            "score": self.score, "peak": self.peak, "level": self.level, "alerts": self.alerts,
            "processes": len(self.pids), "first_ts": self.first_ts, "last_ts": self.last_ts,
            "age_s": round(max(0.0, now - self.first_ts), 1),
        }


def _same_start(a: int, b: int) -> bool:
    """Two start times of one pid name the same process (or one of them is unknown)."""
    return not a or not b or a == b


def incident_line(summary: dict[str, Any]) -> str:
    """One line of text for an incident summary (``ravn status``, ``ravn top``)."""
    root = summary.get("root") or {}
    who = f"{root.get('pid', 0)} {root.get('comm', '') or '?'}"
    if root.get("exe"):
        who += f" ({root['exe']})"
    rules = " > ".join(summary.get("rules") or []) or "-"
    corr = summary.get("corroboration") or []
    if corr:
        rules += f" [+{', '.join(corr)}]"
    return (f"{summary.get('id', '?')} {summary.get('level', 'LOW'):<6} {float(summary.get('score', 0)):5.1f} "
            f"age {_age(float(summary.get('age_s', 0)))}  root {who}  rules: {rules}")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@dataclass
class _Fold:
    alert: Alert
    until: float
    repeats: int = 0


class IncidentTracker:
    """One per host: joins alerts into incidents, folds repeats, keeps the host's level.

    Not thread-safe: the runtime calls it under its threat lock. ``tree`` is the host's process tree (None: every
    process is its own lineage, as for alerts from a host whose tree is unknown).
    """

    def __init__(self, host: str, cfg: ThreatConfig, tree: ProcessTree | None = None,
                 max_folds: int = 10000) -> None:
        self.host = host
        self.cfg = cfg
        self.tree = tree
        self.level: Level = "LOW"
        self.score = 0.0
        self.folded = 0
        self.counters: dict[str, int] = {"incidents_opened": 0, "incidents_closed": 0, "incidents_evicted": 0,
                                         "corroboration_held": 0}
        self._folds: dict[tuple[str, str, int, str], _Fold] = {}
        self._max_folds = max_folds
        self._open: OrderedDict[str, Incident] = OrderedDict()  # least recently active first
        self._by_pid: dict[int, Incident] = {}
        self._by_sid: dict[int, Incident] = {}
        self._by_key: dict[str, Incident] = {}
        self._salt = secrets.token_hex(2)
        self._seq = 0
        self.changed = False  # an incident shown by open_incidents opened, closed or changed since take_changed()

    # ------------------------------------------------------------------------------------------ scoring
    def process(self, alerts: list[Alert], now: float) -> tuple[list[Alert], list[ThreatUpdate]]:
        """Join, fold and score ``alerts``; returns the alerts to emit and any level change."""
        out: list[Alert] = self._expire_folds(now)
        for alert in alerts:
            alert.host = alert.host or self.host
            incident = self._join(alert, now)
            alert.incident = incident.id
            self._contribute(incident, alert, now)
            if alert.corroboration:
                alert.level = "LOW"
                if incident.corroborated_only:
                    self.counters["corroboration_held"] += 1
                    continue
            else:
                alert.level = level_for(alert.score, self.cfg)
            key = (alert.analyzer, alert.rule, alert.pid, alert.description)
            fold = self._folds.get(key)
            if fold is not None and now < fold.until:
                fold.repeats += alert.count
                self.folded += alert.count
                if alert.score > fold.alert.score:
                    fold.alert = alert
                continue
            self._folds.pop(key, None)  # re-inserted at the end: the map stays in expiry order
            self._folds[key] = _Fold(alert, now + self.cfg.fold_window_s)
            out.append(alert)
        if len(self._folds) > self._max_folds:
            out.extend(self._expire_folds(now, force=True))
        self._bound()
        return out, self._rescore(now)

    def tick(self, now: float) -> tuple[list[Alert], list[ThreatUpdate]]:
        """Close expired fold windows and quiet incidents. Call about once a second."""
        out = self._expire_folds(now)
        window = self.cfg.incident_window_s
        for incident in list(self._open.values()):
            if now - incident.oldest <= window:
                continue  # no rule of it can have gone quiet yet
            stale = [k for k, c in incident.rules.items() if now - c.last_ts > window]
            for k in stale:
                del incident.rules[k]
            incident.oldest = min((c.last_ts for c in incident.rules.values()), default=now)
            if not stale:
                continue
            if incident.rules:
                self._score_incident(incident)
            else:
                self._close(incident)
                self.counters["incidents_closed"] += 1
        return out, self._rescore(now)

    def open_incidents(self, now: float, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of the open incidents, worst first (incidents of held corroboration only are left out)."""
        shown = [i for i in self._open.values() if not i.corroborated_only]
        shown.sort(key=lambda i: (i.score, i.last_ts), reverse=True)
        return [i.summary(now) for i in shown[:limit]]

    def open_by_level(self) -> dict[str, int]:
        """How many shown incidents are open at each level (for /metrics)."""
        out = dict.fromkeys(_LEVELS, 0)
        for i in self._open.values():
            if not i.corroborated_only:
                out[i.level] += 1
        return out

    def take_changed(self, now: float) -> list[dict[str, Any]] | None:
        """The open incidents when they changed since the last call (for ``Sink.emit_incidents``), else None."""
        if not self.changed:
            return None
        self.changed = False
        return self.open_incidents(now)

    def __len__(self) -> int:
        return len(self._open)

    def top_alerts(self, now: float) -> list[Alert]:
        """The best alert of each rule of the worst incident, highest first."""
        worst = self._worst_incidents()
        if not worst:
            return []
        ranked = sorted(worst[0].rules.values(), key=lambda c: c.score, reverse=True)
        return [c.alert for c in ranked[: self.cfg.top_alerts]]

    # ------------------------------------------------------------------------------------------ lineage
    def _join(self, alert: Alert, now: float) -> Incident:
        if alert.analyzer == SELF_ANALYZER:
            return self._by_key.get("ravn") or self._new(
                "ravn", {"pid": alert.pid or os.getpid(), "comm": "ravn", "exe": ""}, now)
        pid = alert.pid
        if pid <= 0:
            key = f"rule:{alert.analyzer}/{alert.rule}"
            return self._by_key.get(key) or self._new(key, {"pid": 0, "comm": alert.comm, "exe": ""}, now)
        chain = self._chain(pid)
        incident: Incident | None = None
        for i, p in enumerate(chain):
            if i > 0 and _boundary(p):
                break
            incident = self._by_pid.get(p.pid)
            if incident is not None and not _same_start(incident.starts.get(p.pid, 0), p.start_ts):
                incident = None  # the pid was reused: another process than the one that alerted
            if incident is None and p.sid > 1:
                incident = self._by_sid.get(p.sid)
                if incident is not None and not _same_start(incident.sid_starts.get(p.sid, 0),
                                                             self._start_of(p.sid)):
                    incident = None  # a new session whose leader reused the old leader's pid
            if incident is not None:
                break
        me = chain[0] if chain else None
        sid = 0  # the session: P's own, else (not seen yet) the nearest known one of its ancestors
        for i, p in enumerate(chain):
            if i > 0 and _boundary(p):
                break
            if p.sid > 1:
                sid = p.sid
                break
        if incident is None:
            if sid:
                key, root = f"sid:{sid}", _root(self._proc(sid) or me, alert)
                same = self._by_key.get(key)
                if same is not None and not _same_start(same.sid_starts.get(sid, 0), self._start_of(sid)):
                    same = None  # that session's leader pid now leads another session
            else:
                top = me
                for i, p in enumerate(chain):
                    if i > 0 and _boundary(p):
                        break  # not a service's main process: its other children are other lineages
                    top = p
                    if p.pid == p.sid:
                        break
                key, root = f"pid:{top.pid if top else pid}", _root(top, alert)
                same = self._by_key.get(key)
                if same is not None and top is not None and not _same_start(same.starts.get(top.pid, 0),
                                                                            top.start_ts):
                    same = None  # another process with that pid
            if same is None:
                same = self._new(key, root, now)
                self._by_key[key] = same
            incident = same
        self._add_pid(incident, pid, me.start_ts if me is not None else 0)
        if sid and sid not in incident.sids and len(incident.sids) < MAX_SIDS:
            incident.sids.add(sid)
            incident.sid_starts[sid] = start = self._start_of(sid)
            held = self._by_sid.get(sid)
            if held is None or not _same_start(held.sid_starts.get(sid, 0), start):
                self._by_sid[sid] = incident  # first, or the old session's leader pid was reused by this one
        return incident

    def _start_of(self, pid: int) -> int:
        """When the process ``pid`` now names started (0 unknown)."""
        info = self._proc(pid)
        return info.start_ts if info is not None else 0

    def _chain(self, pid: int) -> list[ProcInfo]:
        tree = self.tree
        if tree is None:
            return []
        me = tree.get(pid)
        return [me, *tree.ancestors(pid)] if me is not None else []

    def _proc(self, pid: int) -> ProcInfo | None:
        return self.tree.get(pid) if self.tree is not None and pid in self.tree else None

    def _add_pid(self, incident: Incident, pid: int, start: int = 0) -> None:
        if pid > 0 and pid not in incident.pids and len(incident.pids) < MAX_PIDS:
            incident.pids.add(pid)
            incident.starts[pid] = start
            held = self._by_pid.get(pid)
            if held is None or not _same_start(held.starts.get(pid, 0), start):
                self._by_pid[pid] = incident  # first, or a reused pid: the new process is this incident's

    def _new(self, key: str, root: dict[str, Any], now: float) -> Incident:
        self._seq += 1
        incident = Incident(f"{self._salt}-{self._seq}", self.host, key, root, now, now, oldest=now)
        self._open[incident.id] = incident
        self._by_key.setdefault(key, incident)
        self.counters["incidents_opened"] += 1
        return incident

    def _contribute(self, incident: Incident, alert: Alert, now: float) -> None:
        rk = (alert.analyzer, alert.rule)
        c = incident.rules.get(rk)
        if c is None:
            incident.rules[rk] = Contribution(alert.analyzer, alert.rule, float(alert.score), tactic_of(alert.tags),
                                              alert.corroboration, now, now, alert, alert.count)
        else:
            c.last_ts = now
            c.alerts += alert.count
            if alert.score > c.score:
                c.score, c.alert = float(alert.score), alert
        incident.alerts += alert.count
        incident.last_ts = now
        self._open.move_to_end(incident.id)
        incident.shown = incident.shown or not alert.corroboration
        self._score_incident(incident)

    def _score_incident(self, incident: Incident) -> None:
        self.changed = self.changed or incident.shown
        incident.score = incident_score(incident.rules.values(), self.cfg)
        incident.peak = max(incident.peak, incident.score)
        incident.level = level_for(incident.score, self.cfg)

    def _close(self, incident: Incident) -> None:
        self._open.pop(incident.id, None)
        self.changed = self.changed or incident.shown
        for pid in incident.pids:
            if self._by_pid.get(pid) is incident:
                del self._by_pid[pid]
        for sid in incident.sids:
            if self._by_sid.get(sid) is incident:
                del self._by_sid[sid]
        if self._by_key.get(incident.key) is incident:
            del self._by_key[incident.key]

    def _bound(self) -> None:
        excess = len(self._open) - self.cfg.max_incidents
        if excess <= 0:
            return
        for level in ("LOW", "MEDIUM", "HIGH"):
            for incident in list(self._open.values()):
                if excess <= 0:
                    return
                if incident.level == level:
                    self._close(incident)
                    self.counters["incidents_evicted"] += 1
                    excess -= 1

    def _rescore(self, now: float) -> list[ThreatUpdate]:
        worst = max((i.score for i in self._open.values()), default=0.0)
        self.score = worst
        level = level_for(worst, self.cfg)
        if level == self.level:
            return []
        previous, self.level = self.level, level
        shown = self._worst_incidents()
        return [ThreatUpdate(self.host, level, self.score, previous, self.top_alerts(now), ts=now,
                             incidents=[i.summary(now) for i in shown[: max(1, self.cfg.top_alerts)]])]

    def _worst_incidents(self) -> list[Incident]:
        """The shown incidents at the host's level, worst first."""
        return sorted((i for i in self._open.values() if i.level == self.level and not i.corroborated_only),
                      key=lambda i: i.score, reverse=True)

    # ------------------------------------------------------------------------------------------ folding
    def _expire_folds(self, now: float, force: bool = False) -> list[Alert]:
        out = []
        # insertion order is expiry order (until = the time of insertion + fold_window_s): stop at the first open one
        expired = []
        for key, fold in self._folds.items():
            if not force and now < fold.until:
                break
            expired.append(key)
        for key in expired:
            fold = self._folds.pop(key)
            if fold.repeats:
                out.append(replace(fold.alert, count=fold.repeats, ts=now))
        return out


def _boundary(p: ProcInfo) -> bool:
    """Where the ancestry walk stops: pid 1, kernel threads and their parent, a service's main process."""
    return p.pid <= 2 or p.ppid <= 2


def _root(p: ProcInfo | None, alert: Alert) -> dict[str, Any]:
    if p is None:
        return {"pid": alert.pid, "comm": alert.comm, "exe": ""}
    return {"pid": p.pid, "comm": p.comm, "exe": p.exe}

