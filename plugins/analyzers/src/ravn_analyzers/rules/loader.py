"""Reading rule files: YAML -> checked, compiled rules. Every error names the file, the line and the rule.

A rule file is a YAML list of three kinds of items, in any order (lists and macros are global to all the
files loaded together; a later definition replaces an earlier one, ``append: true`` extends a list)::

    - list: shell_binaries
      items: [bash, sh, dash, zsh]

    - macro: spawned_by_package_manager
      condition: proc.anames intersects (package_managers)

    - rule: shadow_file_read                        # unique name; a later file's rule of the same name wins
      description: "{proc.comm} read {file.path}"   # template filled from the triggering event(s)
      score: 70                                     # 0-100; the core maps >50 to MEDIUM, >80 to HIGH
      tags: [T1003.008]                             # ATT&CK technique ids (and free-form lower-case tags)
      events: [open]                                # event types it applies to (ravn_core/events.py)
      condition: file.path in (/etc/shadow, /etc/gshadow)
      exceptions:                                   # allowlist entries: the rule does not fire if one matches
        - {name: password_tools, condition: proc.exe in (/usr/bin/passwd, /usr/sbin/chpasswd)}
      enabled: true

A stateful rule adds ``sequence`` (steps, each with its own events and condition, within ``window`` seconds,
per value of ``by``) or ``threshold`` (``count`` distinct values of ``distinct`` within ``window`` seconds,
per value of ``by``); see docs/PLUGINS.md and the default rules for examples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ravn_analyzers.rules.lang import (
    FIELD_TYPES,
    Compiler,
    ConditionError,
    Env,
    Parts,
    Predicate,
    Resolvers,
    any_of,
    compile_template,
    fields_of,
    template_fields,
)
from ravn_core.config import parse_yaml_lines, read_text
from ravn_core.errors import ConfigError
from ravn_core.events import EVENT_TYPES

DEFAULT_RULES_DIR = Path(__file__).resolve().parent / "default"
_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_TAG = re.compile(r"^(T\d{4}(\.\d{3})?|[a-z][a-z0-9_-]*)$")


# ---------------------------------------------------------------------------------------------- file models
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListItem(_Model):
    name: str = Field(alias="list", pattern=_NAME)  # `list:` in YAML (not a field name: it shadows the type)
    items: list[str | int]
    append: bool = False


class MacroItem(_Model):
    macro: str = Field(pattern=_NAME)
    condition: str


class ExceptionItem(_Model):
    name: str = Field(pattern=_NAME)
    condition: str


class StepItem(_Model):
    events: list[str] = Field(min_length=1)
    condition: str = Field(min_length=1)
    # this step's field -> the previous step's field that must hold the same value (e.g. dup.oldfd: net.fd)
    join: dict[str, str] = Field(default_factory=dict)
    # the key field for this step's events when it differs from the sequence's ``by`` (e.g. file.path for an
    # open, then exec.filename for the exec of that same file)
    by: str | None = None


class UnlessItem(_Model):
    events: list[str] = Field(min_length=1)
    condition: str = Field(min_length=1)
    # this event's field -> the FIRST step's field that must hold the same value (e.g. net.sport: net.sport)
    join: dict[str, str] = Field(default_factory=dict)


class SequenceItem(_Model):
    by: str = "proc.pid"
    window: float = Field(gt=0, le=3600)
    steps: list[StepItem] = Field(min_length=2, max_length=8)
    # with by: proc.pid, a step may also be taken by a child of the process that took the previous step
    inherit: bool = False
    # an event that ends the sequence in progress for its key (e.g. the connection of the first step closed)
    unless: UnlessItem | None = None


class ThresholdItem(_Model):
    by: str = "proc.pid"
    distinct: str
    count: int = Field(ge=2, le=10_000)
    window: float = Field(gt=0, le=3600)


class RuleItem(_Model):
    rule: str = Field(pattern=_NAME)
    description: str = Field(min_length=1)
    score: int = Field(ge=0, le=100)
    tags: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)
    condition: str | None = None
    exceptions: list[ExceptionItem] = Field(default_factory=list)
    sequence: SequenceItem | None = None
    threshold: ThresholdItem | None = None
    enabled: bool = True
    details: str = ""

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for t in tags:
            if not _TAG.match(t):
                raise ValueError(f"tag {t!r} is neither an ATT&CK id (T1059.004) nor a lower-case word")
        return tags


# ---------------------------------------------------------------------------------------------- compiled rules
@dataclass
class Step:
    events: tuple[str, ...]
    match: Predicate
    join: tuple[tuple[str, str], ...]
    parts: Parts  # the step's condition and exceptions, as trees


@dataclass
class Unless:
    """Drops the sequence in progress for the event's key when ``match`` holds and ``join`` ties the event to the
    sequence's first event."""

    events: tuple[str, ...]
    match: Predicate
    join: tuple[tuple[str, str], ...]


@dataclass
class Rule:
    """A compiled rule. ``match`` includes the exceptions; for a sequence it is true when any step matches."""

    name: str
    kind: Literal["simple", "sequence", "threshold"]
    description: str
    render: Any  # Callable[[list[Event]], str]
    score: int
    tags: list[str]
    events: tuple[str, ...]
    match: Predicate
    source: str  # file:line
    details: str = ""
    by: str = "proc.pid"
    window: float = 0.0
    steps: list[Step] = field(default_factory=list)
    inherit: bool = False
    unless: Unless | None = None
    distinct: str = ""
    count: int = 0
    step_by: dict[str, str] = field(default_factory=dict)  # event type -> key field, for steps with their own by
    srcs: dict[str, Parts] = field(default_factory=dict)  # event type -> conjunct and exception trees of ``match``
    keyfns: dict[str, Any] = field(default_factory=dict)  # event type -> key getter (set by the engine)
    distinctfn: Any = None  # getter of the threshold's distinct field (set by the engine)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "score": self.score, "tags": self.tags,
                "source": self.source, "details": self.details}


@dataclass
class RuleSet:
    rules: list[Rule]
    files: list[str]
    lists: dict[str, list[Any]]
    macros: dict[str, str]
    resolvers: Resolvers
    compiler: Compiler

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class _Raw:
    item: RuleItem
    where: str
    lines: dict[tuple[str | int, ...], int]
    index: int

    def line(self, *path: str | int) -> int:
        key: tuple[str | int, ...] = (self.index, *path)
        while len(key) > 1 and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key, 1)


def rule_files(paths: list[str], dirs: list[str]) -> list[Path]:
    """The files to load, in order: each of ``paths`` ("default" = the packaged ruleset; a directory means
    its *.yaml sorted), then each directory's *.yaml / *.yml sorted by name."""
    out: list[Path] = []
    for p in paths:
        path = DEFAULT_RULES_DIR if p == "default" else Path(p)
        out.extend(_dir_files(path) if path.is_dir() else [path])
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise ConfigError(f"{d}: rule directory does not exist")
        out.extend(_dir_files(path))
    return out


def _dir_files(d: Path) -> list[Path]:
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")])


def load_rules(
    paths: list[str | Path],
    *,
    texts: list[tuple[str, str]] | None = None,
    disabled: set[str] | frozenset[str] = frozenset(),
    score_overrides: dict[str, int] | None = None,
    list_overrides: dict[str, list[Any]] | None = None,
    append_lists: dict[str, list[Any]] | None = None,
    macro_overrides: dict[str, str] | None = None,
    extra_exceptions: dict[str, list[str]] | None = None,
) -> RuleSet:
    """Load, check and compile rule files (and/or ``texts``: (name, yaml text) pairs, for tests).

    Raises ConfigError "file:line: rule 'x': problem" on the first problem.
    """
    docs: list[tuple[str, list[Any], dict[tuple[str | int, ...], int]]] = []
    for p in paths:
        data, lines = _load_list(str(p))
        docs.append((str(p), data, lines))
    for name, text in texts or []:
        data, lines = _parse_list(text, name)
        docs.append((name, data, lines))

    env = Env()
    raws: dict[str, _Raw] = {}
    for where, data, lines in docs:
        for i, entry in enumerate(data):
            line = lines.get((i,), 1)
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}:{line}: item {i}: expected a mapping with list:, macro: or rule:")
            kinds = [k for k in ("list", "macro", "rule") if k in entry]
            if len(kinds) != 1:
                raise ConfigError(f"{where}:{line}: item {i}: needs exactly one of list:, macro:, rule:")
            models: dict[str, type[_Model]] = {"list": ListItem, "macro": MacroItem, "rule": RuleItem}
            model = models[kinds[0]]
            label = f"{kinds[0]} {entry[kinds[0]]!r}"
            try:
                item = model.model_validate(entry)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = (i, *err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                key = loc
                while len(key) > 1 and key not in lines:
                    key = key[:-1]
                path = ".".join(str(x) for x in err["loc"])
                raise ConfigError(f"{where}:{lines.get(key, line)}: {label}: {path}: {msg}") from None
            if isinstance(item, ListItem):
                base = env.lists.get(item.name, []) if item.append else []
                env.lists[item.name] = [*base, *_expand_items(item.items, env.lists)]
            elif isinstance(item, MacroItem):
                env.macros[item.macro] = item.condition
            else:
                assert isinstance(item, RuleItem)
                raws[item.rule] = _Raw(item, where, lines, i)

    for name, items in (list_overrides or {}).items():
        env.lists[name] = list(items)
    for name, items in (append_lists or {}).items():
        if name not in env.lists:
            raise ConfigError(f"append_lists: list {name!r} is not defined in {_names(docs)}")
        env.lists[name] = [*env.lists[name], *items]
    for name, cond in (macro_overrides or {}).items():
        env.macros[name] = cond
    for name in (*(score_overrides or {}), *(extra_exceptions or {}), *disabled):
        if name not in raws:
            raise ConfigError(f"rule {name!r} named in the analyzer_rules config does not exist in {_names(docs)}")

    resolvers = Resolvers()
    compiler = Compiler(env, resolvers)
    # Check every macro once, so a broken macro is reported even if no rule uses it.
    for mname in env.macros:
        try:
            compiler.gen(compiler.macro(mname, ()), None, (mname,))
        except ConditionError as exc:
            raise ConfigError(f"macro {mname!r}: {exc}") from None
    rules = []
    for name, raw in raws.items():
        if not raw.item.enabled or name in disabled:
            continue
        extra = (extra_exceptions or {}).get(name, [])
        rule = _compile_rule(raw, compiler, resolvers, extra)
        if score_overrides and name in score_overrides:
            rule.score = score_overrides[name]
        rules.append(rule)
    return RuleSet(rules, [d[0] for d in docs], env.lists, env.macros, resolvers, compiler)


def _names(docs: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(d[0] for d in docs) or "no rule files"


def _expand_items(items: list[str | int], lists: dict[str, list[Any]]) -> list[Any]:
    out: list[Any] = []
    for it in items:
        if isinstance(it, str) and it in lists:
            out.extend(lists[it])
        else:
            out.append(it)
    return out


def _load_list(where: str) -> tuple[list[Any], dict[tuple[str | int, ...], int]]:
    return _parse_list(read_text(where, "rule"), where)


def _parse_list(text: str, where: str) -> tuple[list[Any], dict[tuple[str | int, ...], int]]:
    """The items of a rule file and the line of every key path in it (RAVN's one YAML reader,
    ``ravn_core.config.parse_yaml_lines``: alias bombs, recursive aliases, duplicate keys are errors)."""
    data, lines = parse_yaml_lines(text, where)
    if data is None:
        return [], {}
    if not isinstance(data, list):
        raise ConfigError(f"{where}:1: a rule file is a YAML list of list:, macro: and rule: items")
    return data, lines


def _compile_rule(raw: _Raw, compiler: Compiler, resolvers: Resolvers, extra_exc: list[str]) -> Rule:
    item = raw.item
    label = f"rule {item.rule!r}"

    def fail(msg: str, *path: str | int) -> ConfigError:
        return ConfigError(f"{raw.where}:{raw.line(*path)}: {label}: {msg}")

    def check_events(events: list[str], *path: str | int) -> tuple[str, ...]:
        for e in events:
            if e not in EVENT_TYPES:
                raise fail(f"unknown event type {e!r} (known: {', '.join(sorted(EVENT_TYPES))})", *path)
        return tuple(dict.fromkeys(events))

    kinds = [k for k in ("sequence", "threshold") if getattr(item, k) is not None]
    if len(kinds) > 1:
        raise fail("a rule has either sequence: or threshold:, not both", "threshold")
    kind: Literal["simple", "sequence", "threshold"] = kinds[0] if kinds else "simple"  # type: ignore[assignment]
    source = f"{raw.where}:{raw.line()}"
    steps: list[Step] = []

    if kind == "sequence":
        seq = item.sequence
        assert seq is not None
        if item.condition is not None or item.events:
            raise fail("a sequence rule puts events: and condition: in each step, not at the top", "sequence")
        all_events: list[str] = []
        prev_fields: set[str] = set()
        step_by: dict[str, str] = {}
        for i, st in enumerate(seq.steps):
            evs = check_events(st.events, "sequence", "steps", i, "events")
            allowed = fields_of(evs)
            match, step_parts = _rule_predicate(item, st.condition, extra_exc, compiler, allowed, fail,
                                                ("sequence", "steps", i, "condition"))
            for mine, theirs in st.join.items():
                if i == 0:
                    raise fail("the first step cannot join a previous one", "sequence", "steps", i, "join")
                if mine not in allowed or theirs not in prev_fields:
                    raise fail(f"join {mine}: {theirs}: {mine} must be a field of this step's events and "
                               f"{theirs} of the previous step's", "sequence", "steps", i, "join")
            if st.by is not None:
                if st.by not in allowed:
                    raise fail(f"by: {st.by!r} is not a field of this step's events", "sequence", "steps", i, "by")
                for e in evs:
                    step_by[e] = st.by
            steps.append(Step(evs, match, tuple(st.join.items()), step_parts))
            all_events.extend(evs)
            prev_fields = allowed
        unless: Unless | None = None
        if seq.unless is not None:
            u = seq.unless
            evs = check_events(u.events, "sequence", "unless", "events")
            allowed = fields_of(evs)
            match, _ = _rule_predicate(item, u.condition, [], compiler, allowed, fail,
                                       ("sequence", "unless", "condition"), exceptions=False)
            first = fields_of(steps[0].events)
            for mine, theirs in u.join.items():
                if mine not in allowed or theirs not in first:
                    raise fail(f"join {mine}: {theirs}: {mine} must be a field of unless's events and {theirs} of "
                               "the first step's", "sequence", "unless", "join")
            unless = Unless(evs, match, tuple(u.join.items()))
            all_events.extend(evs)
        events = tuple(dict.fromkeys(all_events))
        by = seq.by
        if by != "host" and by not in FIELD_TYPES:
            raise fail(f"sequence.by: unknown field {by!r} (or 'host')", "sequence", "by")

        step_list = steps
        stop = unless

        def any_step(ev: dict[str, Any]) -> bool:
            t = ev.get("evt.type")
            return (any(t in s.events and s.match(ev) for s in step_list)
                    or (stop is not None and t in stop.events and stop.match(ev)))

        rule_match: Predicate = any_step
        srcs: dict[str, Parts] = {}
        texts = [e.condition for e in item.exceptions] + list(extra_exc)
        for t in events:
            of_t = [compiler.rule_parts(st.condition, texts, fields_of(st.events), etype=t)
                    for st in seq.steps if t in st.events]
            if seq.unless is not None and t in seq.unless.events:  # the rule's exceptions do not apply to it
                of_t.append(compiler.rule_parts(seq.unless.condition, [], fields_of(seq.unless.events), etype=t))
            srcs[t] = any_of(of_t)
        render_fields = set().union(*(fields_of(s.events) for s in steps))
    else:
        if not item.events:
            raise fail("events: is required (the event types the rule applies to)", "events")
        if item.condition is None:
            raise fail("condition: is required", "condition")
        events = check_events(item.events, "events")
        allowed = fields_of(events)
        rule_match, _ = _rule_predicate(item, item.condition, extra_exc, compiler, allowed, fail,
                                        ("condition",))
        texts = [e.condition for e in item.exceptions] + list(extra_exc)
        srcs = {t: compiler.rule_parts(item.condition, texts, allowed, etype=t) for t in events}
        render_fields = allowed
        by = item.threshold.by if item.threshold else "proc.pid"
        if item.threshold is not None:
            if by != "host" and by not in allowed:
                raise fail(f"threshold.by: {by!r} is not a field of the rule's events (or 'host')", "threshold", "by")
            if item.threshold.distinct not in allowed:
                raise fail(f"threshold.distinct: {item.threshold.distinct!r} is not a field of the rule's events",
                           "threshold", "distinct")

    for f in template_fields(item.description):
        if f not in render_fields:
            raise fail(f"description: {{{f}}} is not a field of the rule's events", "description")

    rule = Rule(item.rule, kind, item.description, compile_template(item.description, resolvers), item.score,
                list(item.tags), events, rule_match, source, item.details, by=by, srcs=srcs)
    if item.sequence is not None:
        rule.window, rule.steps, rule.inherit = item.sequence.window, steps, item.sequence.inherit
        rule.unless = unless
        rule.step_by = step_by
        if rule.inherit and by != "proc.pid":
            raise fail("sequence.inherit needs by: proc.pid", "sequence", "inherit")
    if item.threshold is not None:
        rule.window, rule.distinct, rule.count = item.threshold.window, item.threshold.distinct, item.threshold.count
    return rule


def _rule_predicate(item: RuleItem, text: str, extra: list[str], compiler: Compiler, allowed: set[str], fail: Any,
                    path: tuple[str | int, ...], exceptions: bool = True) -> tuple[Predicate, Parts]:
    try:
        compiler.compile(text, allowed)
    except ConditionError as exc:
        raise fail(f"{path[-1]}: {exc}", *path) from None
    items = item.exceptions if exceptions else []
    for i, e in enumerate(items):
        try:
            compiler.compile(e.condition, allowed)
        except ConditionError as exc:
            raise fail(f"exceptions[{i}] ({e.name}): {exc}", "exceptions", i, "condition") from None
    texts = [e.condition for e in items] + list(extra)
    try:
        parts = compiler.rule_parts(text, texts, allowed)
        return compiler.make_parts(parts), parts
    except ConditionError as exc:
        raise fail(f"exceptions from the analyzer_rules config: {exc}", "exceptions") from None
