"""Wire format and spool, without Redis."""

from __future__ import annotations

import json

import msgpack
import pytest
from ravn_transport_redis import codec
from ravn_transport_redis.spool import Entry, Spool
from redis_helpers import event

from ravn_core.errors import DecodeError
from ravn_core.events import SCHEMA_VERSION


def test_stream_round_trip_keeps_types() -> None:
    batch = [event(i) for i in range(100)]
    batch.append({"evt.type": "syscall_summary", "syscall.counts": {"read": 3}, "syscall.seq": [0, 1, 2]})
    d = codec.decode_stream(codec.stream_fields("h1", "h1:b:7", batch, 123))
    assert (d.host, d.batch_id, d.ts_ns) == ("h1", "h1:b:7", 123)
    assert d.events == batch
    assert isinstance(d.events[-1]["syscall.seq"], list)


def test_event_order_is_kept_across_keysets() -> None:
    batch = [{"a": i} if i % 3 else {"b": i, "c": [i]} for i in range(30)]
    assert codec.unpack_events(codec.pack_events(batch), 30) == batch


def test_values_outside_the_schema_do_not_fail_publish() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    batch = [{"a": {3}, "b": Odd(), "c": b"\x00raw", "d": 1.5}]
    assert codec.unpack_events(codec.pack_events(batch), 1) == [{"a": [3], "b": "odd", "c": b"\x00raw", "d": 1.5}]


def test_stream_entry_is_compact() -> None:
    batch = [event(i) for i in range(1000)]
    fields = codec.stream_fields("h1", "h1:b:1", batch, 0)
    plain = msgpack.packb(batch)
    assert len(fields[b"d"]) < len(plain) / 2  # field names are not repeated per event


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"v": b"2"}, "transport format version 2, this worker understands [1]"),
        ({b"s": b"%d" % (SCHEMA_VERSION + 1)}, f"event schema version {SCHEMA_VERSION + 1}, this worker understands"),
        ({b"v": b"x"}, "format version field 'v' is missing or not a number"),
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
def test_stream_decode_refuses_clearly(change: dict[bytes, bytes], reason: str) -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(i) for i in range(3)], 0)
    fields.update(change)
    with pytest.raises(DecodeError, match=None) as info:
        codec.decode_stream(fields)
    assert reason in str(info.value)


def test_stream_decode_truncated_payload() -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(i) for i in range(50)], 0)
    fields[b"d"] = fields[b"d"][: len(fields[b"d"]) // 2]
    with pytest.raises(DecodeError, match="not valid msgpack"):
        codec.decode_stream(fields)


def test_row_not_matching_keyset() -> None:
    fields = codec.stream_fields("h1", "h1:b:1", [event(1)], 0)
    fields[b"d"] = msgpack.packb([[["a", "b"]], [[[0, 1, 2]]], [0]])
    with pytest.raises(DecodeError, match="does not match its keyset"):
        codec.decode_stream(fields)


def test_list_element_is_json_and_versioned() -> None:
    raw = codec.list_element("h1", "h1:b:2", [event(1)], 5)
    doc = json.loads(raw)
    assert doc["v"] == codec.FORMAT_VERSION and doc["schema"] == SCHEMA_VERSION and doc["events"][0]["test.seq"] == 1
    assert codec.decode_list(raw).events == [event(1)]
    doc["v"] = 9
    with pytest.raises(DecodeError, match="transport format version 9, this worker understands"):
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
