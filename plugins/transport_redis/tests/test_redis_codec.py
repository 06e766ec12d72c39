"""Wire format and spool, without Redis."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from ravn_transport_redis import codec
from ravn_transport_redis.spool import Entry, Spool
from redis_helpers import event

from ravn_core.errors import DecodeError
from ravn_core.events import COMMON_FIELDS, EVENT_TYPES, SCHEMA_VERSION

# sample values per schema type, with the edges: negative (-errno), 64-bit masks, non-ASCII, empty
SAMPLES: dict[str, list[Any]] = {
    "int": [0, -13, 2**63 - 1, 2**64 - 1, -(2**63)],
    "str": ["", "ipv4", "/tmp/\u00e9t\u00e9 \U0001f600", "x" * 300],
    "bool": [True, False],
    "list[str]": [[], ["curl", "-s", "\u00fc"]],
    "list[int]": [[], [0, 59, 2**64 - 1, -1]],
    "dict[str,int]": [{}, {"read": 3, "openat": 2**40}],
}


def schema_events() -> list[dict[str, Any]]:
    """One event per type in ``ravn_core.events`` and per sample value, every field set from its declared type."""
    out = []
    for name, et in EVENT_TYPES.items():
        for i in range(2):
            ev: dict[str, Any] = {}
            for f in (*COMMON_FIELDS, *et.fields):
                values = SAMPLES[f.type]
                ev[f.name] = values[i % len(values)]
            ev["evt.type"] = name
            out.append(ev)
    return out


def test_v2_round_trip_every_schema_type() -> None:
    batch = schema_events()
    assert {f.type for et in EVENT_TYPES.values() for f in et.fields} <= set(SAMPLES)  # a new type needs samples
    fields = codec.stream_fields("h1", "h1:b:7", batch, 123)
    assert fields[b"v"] == b"2"
    d = codec.decode_stream(fields)
    assert (d.host, d.batch_id, d.ts_ns) == ("h1", "h1:b:7", 123)
    assert d.events == batch
    for got, want in zip(d.events, batch, strict=True):  # == alone would let True == 1 and [] == () pass
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
        assert list(got) == list(want)  # field order is kept too


def test_v1_entries_still_decode() -> None:
    """Rolling upgrade: workers are upgraded first and keep reading what 0.1 agents write."""
    batch = schema_events() + [{"a": i} if i % 3 else {"b": i, "c": [i]} for i in range(30)]
    fields = codec.stream_fields("h1", "h1:b:8", batch, 5, fmt=1)
    assert fields[b"v"] == b"1"
    assert codec.decode_stream(fields).events == batch


def test_values_outside_the_schema_do_not_fail_publish() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    batch = [{"a": {3}, "b": Odd(), "c": b"\x00raw", "d": 1.5, "e": (1, 2), "f": None}]
    assert codec.unpack_events(codec.pack_events(batch), 1) == [
        {"a": [3], "b": "odd", "c": b"\x00raw", "d": 1.5, "e": [1, 2], "f": None}]
    # what msgpack cannot carry at all takes a slower path instead of failing
    huge = [{"big": 2**70, "nested": {"n": [-(2**64)], 7: "int key"}}, {"ok": 1}]
    assert codec.unpack_events(codec.pack_events(huge), 2) == [
        {"big": str(2**70), "nested": {"n": [str(-(2**64))], "7": "int key"}}, {"ok": 1}]
    for fmt in (1, 2):
        assert codec.decode_stream(codec.stream_fields("h", "h:b:1", [{"x": frozenset([2])}], 0, fmt)).events == [
            {"x": [2]}]


def test_v2_is_smaller_than_json() -> None:
    batch = [event(i) for i in range(1000)]
    v2 = codec.stream_fields("h1", "h1:b:1", batch, 0)[b"d"]
    v1 = codec.stream_fields("h1", "h1:b:1", batch, 0, fmt=1)[b"d"]
    assert len(v2) < len(json.dumps(batch)) * 0.9
    assert len(v1) < len(v2) / 2  # format 1 is the compact one; format 2 trades size for CPU (module docstring)


V2_BAD = [
    ({b"v": b"3"}, "transport format version 3, this worker understands [1, 2]"),
    ({b"s": b"%d" % (SCHEMA_VERSION + 1)}, f"event schema version {SCHEMA_VERSION + 1}, this worker understands"),
    ({b"v": b"x"}, "format version field 'v' is missing or not a number"),
    ({b"d": b"\x92\x80"}, "payload is not valid msgpack (DecodeError: Input data was truncated)"),
    ({b"d": b"\x91\x80junk"}, "payload is not valid msgpack"),
    ({b"n": b"5"}, "payload holds 3 events, the header says 5"),
    ({b"n": b"two"}, "bad header field"),
    ({b"d": msgpack.packb([{"a": 1}])}, "payload holds 1 events, the header says 3"),
    ({b"d": msgpack.packb({"a": 1})}, "payload is not a list of events"),
    ({b"d": msgpack.packb([{"a": 1}, 7, {"b": 2}])}, "got `int` - at `$[1]`"),
    ({b"d": msgpack.packb([{"a": 1}, [1, 2], {"b": 2}])}, "got `array` - at `$[1]`"),
    ({b"d": msgpack.packb([{"a": 1}, {"b": 2}, {3: "c"}])}, "Expected `str`, got `int` - at `key` in `$[2]`"),
    ({b"d": msgpack.packb("nope")}, "payload is not a list of events"),
]


@pytest.mark.parametrize(("change", "reason"), V2_BAD)
def test_stream_decode_refuses_clearly(change: dict[bytes, bytes], reason: str) -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(i) for i in range(3)], 0)
    fields.update(change)
    with pytest.raises(DecodeError) as info:
        codec.decode_stream(fields)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"d": b"\x92\x91"}, "payload is not valid msgpack"),
        ({b"n": b"5"}, "payload holds 3 events, the header says 5"),
        ({b"d": msgpack.packb([[["a"]], [[[0]]], [0]])}, "payload holds 1 events, the header says 3"),
        ({b"d": msgpack.packb({"a": 1})}, "payload is not [keysets, groups, order]"),
        ({b"d": msgpack.packb([[["a"]], [[[0], [1]]], [0, 0, 0]])}, "groups do not match"),
        ({b"d": msgpack.packb([[["a"]], [[[0], [1], [2, 3]]], [0, 0, 0]])}, "row does not match its keyset"),
        ({b"d": msgpack.packb([[["a"], ["b"]], [[[0], [1]], [[2]]], [0, 1, 1]])}, "order does not match"),
        ({b"d": msgpack.packb([[["a"]], [[[0], [1], [2]]], [0, 0, 5]])}, "order does not match"),
        ({b"d": msgpack.packb([[[1]], [[[0], [1], [2]]], [0, 0, 0]])}, "keyset is not a list of field names"),
    ],
)
def test_v1_decode_refuses_clearly(change: dict[bytes, bytes], reason: str) -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(i) for i in range(3)], 0, fmt=1)
    fields.update(change)
    with pytest.raises(DecodeError) as info:
        codec.decode_stream(fields)
    assert reason in str(info.value)


@pytest.mark.parametrize("fmt", [1, 2])
def test_stream_decode_truncated_payload(fmt: int) -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(i) for i in range(50)], 0, fmt)
    fields[b"d"] = fields[b"d"][: len(fields[b"d"]) // 2]
    with pytest.raises(DecodeError, match="not valid msgpack"):
        codec.decode_stream(fields)


def test_list_element_is_json_and_versioned() -> None:
    raw = codec.list_element("h1", "h1:b:2", [event(1)], 5)
    doc = json.loads(raw)
    assert doc["v"] == codec.LIST_FORMAT and doc["schema"] == SCHEMA_VERSION and doc["events"][0]["test.seq"] == 1
    assert codec.decode_list(raw).events == [event(1)]
    doc["v"] = 2  # a stream format number is not a list format
    with pytest.raises(DecodeError, match=r"transport format version 2, this worker understands \[1\]"):
        codec.decode_list(json.dumps(doc).encode())
    with pytest.raises(DecodeError, match="not valid JSON"):
        codec.decode_list(b"{nope")


def _entry(i: int, size: int = 1000) -> Entry:
    return Entry("k", f"b{i}", {b"d": b"x" * size}, 10)


def test_spool_spills_to_file_in_order_and_drops_when_full(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(memory_bytes=5_000, file_bytes=20_000, path=str(tmp_path / "s.bin"))
    accepted = [i for i in range(40) if spool.put(_entry(i))]
    assert spool.spilled > 0 and spool.dropped_batches == 40 - len(accepted) > 0
    out = []
    while len(spool):
        got = spool.peek(3)
        out += [e.batch_id for e in got]
        spool.pop(len(got))
    assert out == [f"b{i}" for i in accepted]  # FIFO across memory and file
    assert (tmp_path / "s.bin").stat().st_size == 0  # truncated once drained
    # memory is used again after the file drained
    spool.put(_entry(99))
    assert spool.peek(1)[0].batch_id == "b99"


def test_spool_survives_close_and_reopen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "s.bin")
    spool = Spool(memory_bytes=3_000, file_bytes=100_000, path=path)
    for i in range(10):
        spool.put(_entry(i))
    spool.pop(1)
    spool.close()
    again = Spool(memory_bytes=3_000, file_bytes=100_000, path=path)
    assert again.recover() == 9
    got = again.peek(100)
    assert [e.batch_id for e in got] == [f"b{i}" for i in range(1, 10)]
    assert got[0].payload == {b"d": b"x" * 1000}
    again.pop(9)
    again.close()
    import os

    assert not os.path.exists(path)
