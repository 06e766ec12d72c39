"""analyzer_rules: the YAML rule engine, and the commented reference analyzer for third parties.

What a RAVN analyzer does, shown here end to end:

1. Its typed config model (``RulesConfig``, a ``PluginConfig``) is validated from the YAML section before the
   analyzer is built; unknown keys are errors and every field says what it is for.
2. The factory (the class itself: ``RulesAnalyzer(name, config, context)``) does all the slow work once:
   here it loads, checks and compiles the rule files, and raises ``ConfigError`` naming file, line and rule.
3. ``analyze(batch, ctx)`` runs on an analysis thread for every batch and returns alerts. It must be fast
   and must not block: rules are pre-compiled lambdas, dispatched by ``evt.type`` through a dict, so a rule
   costs nothing on events it cannot match. It does not fold repeats or compute threat levels: the core
   does both (ravn_core/threat.py).
4. ``tick(ctx)`` (about once a second) expires time-window state; ``reload()`` (SIGHUP) re-reads the rule
   files and keeps the old set when the new one is invalid; ``health()`` reports counters.

Stateful rules keep their state in bounded LRU tables (``max_state_keys`` per rule) with expiry, so memory
does not grow with process churn. Time is event time (``evt.ts``), so a replay of recorded events behaves as
the live run did.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from ravn_analyzers.rules.loader import Rule, RuleSet, load_rules, rule_files
from ravn_core.components import Alert, Analyzer, BatchContext, Health, PluginConfig, RuntimeContext
from ravn_core.errors import ConfigError
from ravn_core.events import Batch, Event

ANALYZER = "analyzer_rules"


class RulesConfig(PluginConfig):
    """The ``analyzers: [{plugin: analyzer_rules, ...}]`` section."""

    rule_files: list[str] = Field(
        default_factory=lambda: ["default"],
        description="rule files or directories, in load order; 'default' is the packaged ruleset",
    )
    rule_dirs: list[str] = Field(
        default_factory=list, description="extra directories whose *.yaml rule files load after rule_files"
    )
    disabled_rules: list[str] = Field(default_factory=list, description="names of rules not to run")
    score_overrides: dict[str, int] = Field(default_factory=dict, description="rule name -> score (0-100)")
    lists: dict[str, list[str | int]] = Field(default_factory=dict, description="list name -> items (replaces)")
    append_lists: dict[str, list[str | int]] = Field(
        default_factory=dict, description="list name -> items added to the list (e.g. a watched temp dir)"
    )
    macros: dict[str, str] = Field(default_factory=dict, description="macro name -> condition (replaces)")
    exceptions: dict[str, list[str]] = Field(
        default_factory=dict, description="rule name -> extra exception conditions (allowlist entries)"
    )
    max_state_keys: int = Field(4096, ge=16, le=1_000_000, description="keys (processes) kept per stateful rule")
    max_evidence_events: int = Field(20, ge=1, le=1000, description="events kept in a threshold alert's evidence")


class _Table:
    """A bounded LRU of per-key state: the least recently touched key goes first."""

    __slots__ = ("d", "evictions", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.d: OrderedDict[Any, Any] = OrderedDict()
        self.max_keys = max_keys
        self.evictions = 0

    def put(self, key: Any, value: Any) -> None:
        d = self.d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self.max_keys:
            d.popitem(last=False)
            self.evictions += 1

    def expire(self, now: float, window: float) -> int:
        """Drop state last touched more than ``window`` seconds before ``now``."""
        d = self.d
        n = 0
        while d:
            key, value = next(iter(d.items()))
            if now - value.last <= window:
                break
            del d[key]
            n += 1
        return n


class _Seq:
    __slots__ = ("events", "idx", "last", "t0")

    def __init__(self, idx: int, events: list[Event], t0: float, last: float) -> None:
        self.idx = idx  # the next step to match
        self.events = events
        self.t0 = t0
        self.last = last


class _Thr:
    __slots__ = ("events", "last", "seen")

    def __init__(self, maxlen: int) -> None:
        self.seen: OrderedDict[Any, float] = OrderedDict()  # distinct value -> last time, oldest first
        self.events: deque[Event] = deque(maxlen=maxlen)
        self.last = 0.0


Handler = Callable[[Rule, Event, BatchContext], "Alert | None"]


class RulesAnalyzer(Analyzer):
    """Matches events against YAML rules (docs/PLUGINS.md, docs/DETECTIONS.md)."""

    def __init__(self, name: str, config: RulesConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.config: RulesConfig = config
        self.matched = 0
        self.alerts = 0
        self.reload_errors = 0
        self._clock = 0.0  # latest event time seen (s)
        self.ruleset = self._load()  # raises ConfigError: the daemon refuses to start with bad rules
        self._install(self.ruleset)

    # ------------------------------------------------------------------------------------------ loading
    def _paths(self) -> list[Path]:
        base = Path(self.context.config_path).parent if self.context.config_path else Path.cwd()

        def resolve(p: str) -> str:
            return p if p == "default" or Path(p).is_absolute() else str(base / p)

        return rule_files([resolve(p) for p in self.config.rule_files], [resolve(d) for d in self.config.rule_dirs])

    def _load(self) -> RuleSet:
        c = self.config
        return load_rules(
            list(self._paths()), disabled=set(c.disabled_rules), score_overrides=c.score_overrides,
            list_overrides=dict(c.lists), append_lists=dict(c.append_lists), macro_overrides=c.macros,
            extra_exceptions=c.exceptions,
        )

    def _install(self, ruleset: RuleSet) -> None:
        """Build the dispatch table: evt.type -> (one generated function over all its rules, [(handler, rule)]),
        and fresh state tables."""
        handlers: dict[str, Handler] = {"simple": self._on_simple, "sequence": self._on_sequence,
                                        "threshold": self._on_threshold}
        per_type: dict[str, list[Rule]] = {}
        for rule in ruleset.rules:
            for t in rule.events:
                per_type.setdefault(t, []).append(rule)
        self._dispatch = {
            t: (ruleset.compiler.make_dispatch([r.srcs[t] for r in rules], f"dispatch_{t}"),
                [(handlers[r.kind], r) for r in rules])
            for t, rules in per_type.items()
        }
        self._tables = {r.name: _Table(self.config.max_state_keys) for r in ruleset.rules if r.kind != "simple"}
        res = ruleset.resolvers
        for r in ruleset.rules:
            r.keyfns = {t: _getter(r.step_by.get(t, r.by), res) for t in r.events}
            r.distinctfn = _getter(r.distinct, res) if r.distinct else None
        self.ruleset = ruleset

    def reload(self) -> None:
        """SIGHUP: re-read the rule files; an invalid new set is logged and the old one kept."""
        try:
            ruleset = self._load()
        except ConfigError as exc:
            self.reload_errors += 1
            self.log.error("rules reload failed, keeping the %d loaded rules: %s", len(self.ruleset.rules), exc)
            return
        self._install(ruleset)
        self.log.info("rules reloaded: %d rules from %d files", len(ruleset.rules), len(ruleset.files))

    # ------------------------------------------------------------------------------------------ analysis
    def analyze(self, batch: Batch, ctx: BatchContext) -> list[Alert]:
        res = self.ruleset.resolvers
        res.tree = ctx.proctree
        res.host = ctx.host
        dispatch = self._dispatch
        alerts: list[Alert] = []
        matched = 0
        get = dispatch.get
        for ev in batch:
            entry = get(ev.get("evt.type"))  # type: ignore[arg-type]
            if entry is None:
                continue  # no rule applies to this event type: it costs one dict lookup
            hits = entry[0](ev)
            if not hits:
                continue
            handlers = entry[1]
            matched += len(hits)
            for i in hits:
                handler, rule = handlers[i]
                alert = handler(rule, ev, ctx)
                if alert is not None:
                    alerts.append(alert)
        self.matched += matched
        if batch:
            ts = batch[-1].get("evt.ts")
            if isinstance(ts, int) and ts / 1e9 > self._clock:
                self._clock = ts / 1e9
        self.alerts += len(alerts)
        return alerts

    def tick(self, ctx: BatchContext) -> list[Alert]:
        """Expire window state. The clock is event time (the latest seen), so replays behave like live runs."""
        now = self._clock or ctx.now
        by_name = self.ruleset.by_name()
        for name, table in self._tables.items():
            table.expire(now, by_name[name].window)
        return []

    def _now(self, ev: Event, ctx: BatchContext) -> float:
        ts = ev.get("evt.ts")
        return ts / 1e9 if isinstance(ts, int) and ts > 0 else ctx.now

    def _on_simple(self, rule: Rule, ev: Event, ctx: BatchContext) -> Alert | None:
        return self._alert(rule, [ev], ctx)

    def _on_sequence(self, rule: Rule, ev: Event, ctx: BatchContext) -> Alert | None:
        """Advance the key's progress through the steps; alert when the last step matches in the window."""
        etype = ev["evt.type"]
        key = rule.keyfns[etype](ev)
        table = self._tables[rule.name]
        st = table.d.get(key)
        unless = rule.unless
        if unless is not None and etype in unless.events and unless.match(ev):
            # e.g. the first step's connection closed: its fd number may now be another file's
            if st is not None and _joined(unless.join, ev, st.events[0]):
                del table.d[key]
                st = None
            if not any(etype in step.events for step in rule.steps):
                return None
        if st is None and not rule.inherit and etype not in rule.steps[0].events:
            return None  # a later step with nothing in progress for this key: the common case, kept cheap
        ts = ev.get("evt.ts")
        now = ts / 1e9 if ts else ctx.now
        inherited = False
        if st is None and rule.inherit and ev.get("proc.ppid"):
            st = table.d.get(ev["proc.ppid"])  # a child continuing its parent's progress
            inherited = st is not None
        if st is not None and now - st.t0 > rule.window:
            if not inherited:
                del table.d[key]
            st = None
        if st is not None:
            step = rule.steps[st.idx]
            if etype in step.events and step.match(ev) and _joined(step.join, ev, st.events[-1]):
                events = [*st.events, dict(ev)]
                if st.idx + 1 == len(rule.steps):
                    if not inherited:
                        table.d.pop(key, None)
                    return self._alert(rule, events, ctx)
                table.put(key, _Seq(st.idx + 1, events, st.t0, now))
                return None
        first = rule.steps[0]
        if etype in first.events and first.match(ev) and (st is None or inherited or st.idx <= 1):
            # Start (or restart from the newest first step, unless later steps were already reached).
            table.put(key, _Seq(1, [dict(ev)], now, now))
        return None

    def _on_threshold(self, rule: Rule, ev: Event, ctx: BatchContext) -> Alert | None:
        """Count distinct values per key within the window; alert at ``count`` and start over."""
        value = rule.distinctfn(ev)
        if value is None:
            return None
        if value.__class__ is list:
            value = tuple(value)
        ts = ev.get("evt.ts")
        now = ts / 1e9 if ts else ctx.now
        key = rule.keyfns[ev["evt.type"]](ev)
        table = self._tables[rule.name]
        d = table.d
        st = d.get(key)
        if st is None:
            st = _Thr(min(rule.count, self.config.max_evidence_events))
            table.put(key, st)
        else:
            d.move_to_end(key)
        st.last = now
        seen = st.seen
        if value in seen:
            seen.move_to_end(value)
        seen[value] = now
        for oldest in seen:  # drop values last seen before the window (oldest first)
            if now - seen[oldest] <= rule.window:
                break
            del seen[oldest]
            break  # at most one per event: keeps this O(1); the rest go on the next events
        st.events.append(ev)
        if len(seen) < rule.count:
            return None
        while seen and now - next(iter(seen.values())) > rule.window:  # exact count before firing
            seen.popitem(last=False)
        if len(seen) < rule.count:
            return None
        del d[key]
        distinct = list(seen)[-50:]
        return self._alert(rule, [dict(e) for e in st.events], ctx,
                           {"distinct": {"field": rule.distinct, "count": len(seen), "values": distinct}})

    def _alert(self, rule: Rule, events: list[Event], ctx: BatchContext, extra: dict[str, Any] | None = None
               ) -> Alert:
        ev = events[-1]
        pid = ev.get("proc.pid", 0)
        info = ctx.proctree.peek(pid)
        process = info.to_dict() if info is not None else {
            "pid": pid, "ppid": ev.get("proc.ppid", 0), "comm": ev.get("proc.comm", ""), "exe": "", "args": [],
            "uid": ev.get("proc.uid", -1)}
        evidence: dict[str, Any] = {
            "events": [e if e is not ev or rule.kind != "simple" else dict(e) for e in events],
            "process": process,
            "ancestry": ctx.proctree.lineage(pid),
            "rule": rule.summary(),
        }
        if extra:
            evidence.update(extra)
        return Alert(
            analyzer=ANALYZER, rule=rule.name, score=rule.score, description=rule.render(events), pid=pid,
            comm=str(ev.get("proc.comm", "")), tags=list(rule.tags), evidence=evidence,
            ts=self._now(ev, ctx), host=ctx.host,
        )

    # ------------------------------------------------------------------------------------------ health
    def state_keys(self) -> int:
        return sum(len(t.d) for t in self._tables.values())

    def health(self) -> Health:
        return Health("ok", f"{len(self.ruleset.rules)} rules", {
            "rules": len(self.ruleset.rules), "matched": self.matched, "alerts": self.alerts,
            "state_keys": self.state_keys(), "state_evictions": sum(t.evictions for t in self._tables.values()),
            "reload_errors": self.reload_errors,
        })


def _getter(name: str, res: Any) -> Callable[[Event], Any]:
    """A function reading ``name`` from an event: a plain field, a resolved one, or the host."""
    if name == "host":
        return lambda ev: res.host
    if name in res.funcs:
        fn: Callable[[Event], Any] = res.funcs[name]
        return fn
    return lambda ev: ev.get(name)


def _joined(join: tuple[tuple[str, str], ...], ev: Event, prev: Event) -> bool:
    return all(ev.get(mine) is not None and ev.get(mine) == prev.get(theirs) for mine, theirs in join)
