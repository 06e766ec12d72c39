"""``validate_event``: the event schema checked where events enter from outside the process (issue 13.2)."""

from __future__ import annotations

from typing import Any

import pytest

from ravn_core.events import (
    COMMON_FIELDS,
    EVENT_TYPES,
    FIELD_TYPES,
    MAX_FIELDS,
    MAX_ITEMS,
    MAX_STR,
    validate_event,
)

GOOD: dict[str, Any] = {"int": -7, "str": "x", "bool": True, "list[str]": ["a", ""], "list[int]": [1, -2],
                        "dict[str,int]": {"read": 1}}
BAD: dict[str, list[Any]] = {
    "int": ["7", 7.0, True, [1], None, {"a": 1}, 2**64, -(2**63) - 1],
    "str": [7, None, ["x"], {"x": 1}, True, "x" * (MAX_STR + 1)],
    "bool": [1, 0, "true", None, [True]],
    "list[str]": ["a", [1], [None], [["a"]], ["x" * (MAX_STR + 1)], ["a"] * (MAX_ITEMS + 1), {"a": 1}],
    "list[int]": [1, [1.5], ["1"], [True], [2**64], [[1]], [0] * (MAX_ITEMS + 1)],
    "dict[str,int]": [[], {"a": "1"}, {"a": True}, {"a": 2**64}, {"a": [1]}, "read=1",
                      {str(i): i for i in range(MAX_ITEMS + 1)}],
}


def base(event_type: str) -> dict[str, Any]:
    """A valid event of ``event_type`` with every field of the schema set."""
    fields = COMMON_FIELDS + EVENT_TYPES[event_type].fields
    ev = {f.name: GOOD[f.type] for f in fields}
    ev["evt.type"] = event_type
    return ev


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_type_with_every_field_is_valid(event_type: str) -> None:
    assert validate_event(base(event_type)) is None
    assert validate_event({"evt.type": event_type}) is None  # fields are not required


def test_one_type_per_field_name_across_event_types() -> None:
    for t in EVENT_TYPES.values():
        for f in COMMON_FIELDS + t.fields:
            want = FIELD_TYPES[f.name]
            assert want == {"int": int, "str": str, "bool": bool}.get(f.type, f.type), (t.name, f.name)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_wrong_type_in_every_field_is_named(event_type: str) -> None:
    for f in COMMON_FIELDS + EVENT_TYPES[event_type].fields:
        if f.name == "evt.type":
            continue
        for value in BAD[f.type]:
            ev = base(event_type)
            ev[f.name] = value
            reason = validate_event(ev)
            assert reason is not None and reason.startswith(f"{f.name}: "), (f.name, repr(value)[:60], reason)


def test_the_attack_events_of_the_review() -> None:
    ev = base("open")
    assert validate_event({**ev, "proc.pid": [1]}) == "proc.pid: a list, want int"
    assert validate_event({**ev, "evt.type": "opne"}) == "evt.type: unknown event type 'opne'"
    assert validate_event({**ev, "evt.type": 3}) == "evt.type: an int, want str"
    assert validate_event({k: v for k, v in ev.items() if k != "evt.type"}) == "evt.type: missing"
    assert validate_event([ev]) is not None and validate_event("open") is not None and validate_event(None)
    huge = validate_event({**ev, "file.path": "/" * 50_000_000})
    assert huge == f"file.path: a str of 50000000 characters (at most {MAX_STR})"


def test_fields_outside_the_schema() -> None:
    ev = base("exec")
    assert validate_event({**ev, "test.seq": 1, "x.f": 1.5, "x.n": None, "x.s": "s", "x.b": False}) is None
    deep: Any = []
    for _ in range(100_000):  # deeper than any recursion limit: the check never descends
        deep = [deep]
    assert validate_event({**ev, "x.deep": deep}) == (
        "x.deep: a list in a field outside the schema (str, int, float, bool or null only)")
    assert validate_event({**ev, "exec.argv": deep}) == "exec.argv: item 0 is a list, want str"
    assert validate_event({**ev, "proc.exe": "/bin/sh"}) == (
        "proc.exe: comes from the process tree, an event may not carry it")
    assert validate_event({**ev, "x.s": "x" * (MAX_STR + 1)}) is not None
    assert validate_event({**ev, "x.i": 2**64}) is not None
    many = {**ev, **{f"x.{i}": i for i in range(MAX_FIELDS)}}
    assert validate_event(many) == f"{len(many)} fields (at most {MAX_FIELDS})"
    # a field of another event type is held to its declared type
    assert validate_event({**base("open"), "net.dport": "443"}) == "net.dport: a str, want int"
