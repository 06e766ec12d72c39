"""Wire formats. Both are versioned twice: the transport format (``STREAM_FORMAT`` / ``LIST_FORMAT``, this module)
and the event schema (``ravn_core.events.SCHEMA_VERSION``). A worker that meets a version it does not understand
refuses the entry with a reason naming both versions (it goes to the dead-letter stream); it never guesses.

Stream mode, one entry per batch (field names are one byte to keep entries small)::

    XADD <prefix>events:{<host>} MAXLEN ~ N * v 2 s <schema> h <host> b <batch id> n <events> t <ns> d <msgpack>

Format 2 (what agents write): ``d`` is msgpack of the batch as it is, a list of maps (``[{"evt.type": "open",
...}, ...]``), encoded and decoded by msgspec in C with reusable ``Encoder``/``Decoder`` objects. The decoder is
typed (``list[dict[str, Any]]``): msgspec checks in C, without a Python loop per event, that the payload is a list
whose every element is a map with str keys; the worker checks the count against ``n``. Field names repeat per
event (about 230 bytes per event, 2.7x the size of format 1), but msgspec caches them while decoding, and per
event it costs ~0.4 us to encode and ~1.3 us to decode, against ~1.5 and ~2.4 us for format 1 (1000-event
batches, this project's 2-vCPU VM).

Format 1 (written by earlier agents; still decoded, so workers can be upgraded before agents): ``d`` is msgpack of
``[keysets, groups, order]``: ``keysets`` lists each distinct tuple of field names in the batch once, ``groups[i]``
holds the value rows of the events with keyset ``i`` and ``order[j]`` says which group event ``j`` comes from.

``b`` is ``<host>:<boot id>:<sequence>``, unique per batch and readable without decoding ``d`` (the agent checks it
after a reconnect, workers drop duplicates by it). Values outside the event schema's types never make ``publish``
fail: sets become lists, ints beyond 64 bits and other objects become their ``str``.

List mode, one element per batch, JSON (format 1, unchanged since the first release)::

    LPUSH <prefix>events:raw {"v": 1, "schema": 1, "host": ..., "id": ..., "n": ..., "ts": ..., "events": [...]}

Decoding checks the structure only; ``invalid_events`` then checks each event against the event schema
(``ravn_core.events.validate_event``), in C for a whole batch when all is well (a msgspec type built from the
schema's tables), in Python per event to name what is wrong when not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Required, TypedDict

import msgpack
import msgspec

from ravn_core.errors import DecodeError
from ravn_core.events import (
    EVENT_TYPES,
    FIELD_TYPES,
    INT_MAX,
    INT_MIN,
    MAX_ITEMS,
    MAX_STR,
    SCHEMA_VERSION,
    Batch,
    Event,
    validate_event,
)

STREAM_FORMAT: Final = 2  # what ``stream_fields`` writes
LIST_FORMAT: Final = 1  # what ``list_element`` writes
SUPPORTED_FORMATS: Final = frozenset({1, 2})  # stream entries this worker decodes
SUPPORTED_LIST_FORMATS: Final = frozenset({1})
SUPPORTED_SCHEMAS: Final = frozenset({SCHEMA_VERSION})


@dataclass
class Decoded:
    """A batch read back from Redis."""

    host: str
    batch_id: str
    events: Batch
    ts_ns: int


def stream_fields(host: str, batch_id: str, batch: Batch, ts_ns: int, fmt: int = STREAM_FORMAT) -> dict[bytes, bytes]:
    """The fields of one stream entry, in transport format ``fmt`` (1 only to test rolling upgrades)."""
    return {
        b"v": b"%d" % fmt,
        b"s": b"%d" % SCHEMA_VERSION,
        b"h": host.encode(),
        b"b": batch_id.encode(),
        b"n": b"%d" % len(batch),
        b"t": b"%d" % ts_ns,
        b"d": pack_events(batch) if fmt == 2 else pack_events_v1(batch),
    }


# ------------------------------------------------------------------------------------------------ format 2
_MAX_INT = 2**64 - 1
_MIN_INT = -(2**63)


def _enc_hook(value: Any) -> Any:
    """Called by msgspec for a type it cannot encode (sets, bytes, datetimes, ... it can): the ``str``."""
    return str(value)


_ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
# A typed decode checks the shape in C; untyped decoding is no faster on these batches (measured).
_DECODER: Final = msgspec.msgpack.Decoder(list[dict[str, Any]])


def pack_events(batch: Batch) -> bytes:
    """Format 2: the batch (a list of maps) as msgpack. Never fails on values outside the schema."""
    try:
        return _ENCODER.encode(batch)
    except (OverflowError, TypeError, ValueError, RecursionError):
        # ints beyond 64 bits, unencodable keys, cycles: rare, so a slow pass that makes the batch encodable
        return _ENCODER.encode([_plain(e, 0) for e in batch])


def _plain(value: Any, depth: int) -> Any:
    """``value`` with what msgpack cannot carry turned into text (ints beyond 64 bits, odd keys, deep nesting)."""
    if depth > 32:
        return str(value)
    if isinstance(value, bool | float | str | bytes | None):
        return value
    if isinstance(value, int):
        return value if _MIN_INT <= value <= _MAX_INT else str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    return str(value)


def unpack_events(payload: bytes, n: int) -> Batch:
    """Format 2: a list of ``n`` maps with str keys, or ``DecodeError`` saying what is wrong."""
    try:
        events = _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"payload is not a list of events with str field names ({exc})") from None
    except Exception as exc:  # msgspec.DecodeError (truncated, malformed), RecursionError, ...
        raise DecodeError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if len(events) != n:
        raise DecodeError(f"payload holds {len(events)} events, the header says {n} (truncated?)")
    return events


# ------------------------------------------------------------------------------------------------ format 1
def pack_events_v1(batch: Batch) -> bytes:
    """Format 1: ``[keysets, groups, order]`` as msgpack (see the module docstring). Kept for tests."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    order_keys = []
    for event in batch:
        keys = tuple(event)
        rows = groups.get(keys)
        if rows is None:
            rows = groups[keys] = []
        rows.append(tuple(event.values()))
        order_keys.append(keys)
    index = {keys: i for i, keys in enumerate(groups)}
    return msgpack.packb([list(groups), list(groups.values()), [index[k] for k in order_keys]], use_bin_type=True,
                         default=_fallback)


def _fallback(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def unpack_events_v1(payload: bytes, n: int) -> Batch:
    """Format 1, as earlier agents write it."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not (isinstance(doc, list) and len(doc) == 3 and all(isinstance(x, list) for x in doc)):
        raise DecodeError("payload is not [keysets, groups, order]")
    keysets, groups, order = doc
    if len(order) != n:
        raise DecodeError(f"payload holds {len(order)} events, the header says {n} (truncated?)")
    if len(keysets) != len(groups) or sum(map(len, groups)) != n:
        raise DecodeError("payload groups do not match its keysets and order")
    for keys, rows in zip(keysets, groups, strict=True):
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise DecodeError("a keyset is not a list of field names")
        if not all(isinstance(r, list) for r in rows) or set(map(len, rows)) - {len(keys)}:
            raise DecodeError("an event row does not match its keyset")
    # lengths were checked above; strict zips would cost ~20% of the decode
    nexts = [iter([dict(zip(keys, row, strict=False)) for row in rows]).__next__
             for keys, rows in zip(keysets, groups, strict=False)]
    try:
        return [nexts[i]() for i in order]
    except (IndexError, TypeError, StopIteration) as exc:
        raise DecodeError(f"the event order does not match the groups ({type(exc).__name__})") from None


_UNPACK: Final = {1: unpack_events_v1, 2: unpack_events}


def _version(raw: Any, what: str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise DecodeError(f"{what} is missing or not a number: {raw!r:.40}") from None


def _check_versions(fmt: int, schema: int, formats: frozenset[int] = SUPPORTED_FORMATS) -> None:
    if fmt not in formats:
        raise DecodeError(
            f"transport format version {fmt}, this worker understands {sorted(formats)}; "
            "upgrade the workers before the agents")
    if schema not in SUPPORTED_SCHEMAS:
        raise DecodeError(
            f"event schema version {schema}, this worker understands {sorted(SUPPORTED_SCHEMAS)}; "
            "upgrade the workers before the agents")


def _check_events(events: Any, n: int) -> Batch:
    if not isinstance(events, list):
        raise DecodeError(f"payload is a {type(events).__name__}, not a list of events")
    if len(events) != n:
        raise DecodeError(f"payload holds {len(events)} events, the header says {n} (truncated?)")
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            raise DecodeError(f"event {i} is a {type(e).__name__}, not a mapping")
    return events


def decode_stream(fields: dict[bytes, bytes]) -> Decoded:
    """Decode one stream entry; ``DecodeError`` says exactly what is wrong with it."""
    fmt = _version(fields.get(b"v"), "format version field 'v'")
    schema = _version(fields.get(b"s"), "schema version field 's'")
    _check_versions(fmt, schema)
    try:
        host = fields[b"h"].decode()
        batch_id = fields[b"b"].decode()
        n = int(fields[b"n"])
        ts = int(fields.get(b"t", b"0"))
        payload = fields[b"d"]
    except KeyError as exc:
        raise DecodeError(f"field {exc.args[0]!r} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad header field: {exc}") from None
    return Decoded(host, batch_id, _UNPACK[fmt](payload, n), ts)


def list_element(host: str, batch_id: str, batch: Batch, ts_ns: int) -> bytes:
    """One list element (JSON)."""
    doc = {"v": LIST_FORMAT, "schema": SCHEMA_VERSION, "host": host, "id": batch_id, "n": len(batch),
           "ts": ts_ns, "events": batch}
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


def decode_list(raw: bytes) -> Decoded:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"element is not valid JSON ({exc})") from None
    except RecursionError:
        raise DecodeError("element is nested too deeply to be a batch of events") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"element is a JSON {type(doc).__name__}, not an object")
    _check_versions(_version(doc.get("v"), "format version 'v'"), _version(doc.get("schema"), "schema version"),
                    SUPPORTED_LIST_FORMATS)
    try:
        host, batch_id, n = str(doc["host"]), str(doc["id"]), int(doc["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"bad or missing header field: {exc}") from None
    return Decoded(host, batch_id, _check_events(doc.get("events"), n), int(doc.get("ts") or 0))


def peek_batch_id(raw: bytes) -> str | None:
    """The batch id of a list element without trusting the rest of it (reconnect check)."""
    try:
        doc = json.loads(raw)
        return str(doc["id"]) if isinstance(doc, dict) and "id" in doc else None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------ schema check
_INT = Annotated[int, msgspec.Meta(ge=INT_MIN, le=INT_MAX)]
_STR = Annotated[str, msgspec.Meta(max_length=MAX_STR)]
_MSGSPEC_TYPES: Final[dict[Any, Any]] = {
    int: _INT, str: _STR, bool: bool,
    "list[str]": Annotated[list[_STR], msgspec.Meta(max_length=MAX_ITEMS)],
    "list[int]": Annotated[list[_INT], msgspec.Meta(max_length=MAX_ITEMS)],
    "dict[str,int]": Annotated[dict[_STR, _INT], msgspec.Meta(max_length=MAX_ITEMS)],
}
# Every schema field with its type, evt.type required and one of EVENT_TYPES. Fields outside the schema are not
# in it (msgspec skips them): ``_KNOWN.issuperset`` sends an event that has any to ``validate_event``, and an
# event of known fields only has at most len(_KNOWN) < MAX_FIELDS of them.
_EVENT_FIELDS: Final[dict[str, Any]] = {name: _MSGSPEC_TYPES[t] for name, t in FIELD_TYPES.items()}
_EVENT_FIELDS["evt.type"] = Required[Literal[tuple(EVENT_TYPES)]]
SchemaEvent = TypedDict("SchemaEvent", _EVENT_FIELDS, total=False)  # type: ignore[misc]  # built from the schema
_KNOWN: Final = frozenset(_EVENT_FIELDS)


def _all_valid(events: Batch) -> bool:
    """Whether every event fits the schema, checked in C (no Python loop per event): False may be a false alarm
    (an event with a field outside the schema; ``invalid_events`` then asks ``validate_event``), True never is."""
    if not all(map(_KNOWN.issuperset, events)):
        return False
    try:
        msgspec.convert(events, list[SchemaEvent])
    except (msgspec.ValidationError, RecursionError):
        return False
    return True


def invalid_events(events: Batch) -> list[tuple[int, str]]:
    """(index, reason) of each event that does not fit the event schema; [] for a clean batch."""
    if _all_valid(events):
        return []
    return [(i, r) for i, e in enumerate(events) if (r := validate_event(e)) is not None]


def preview(event: Event, max_fields: int = 40, max_chars: int = 200) -> str:
    """A bounded JSON rendering of a (possibly hostile) event for the dead-letter stream and logs."""
    if not isinstance(event, dict):
        return json.dumps(f"<{type(event).__name__}>")
    out: dict[str, Any] = {}
    for k, v in list(event.items())[:max_fields]:
        key = str(k)[:100]
        if isinstance(v, str):
            out[key] = v if len(v) <= max_chars else f"{v[:max_chars]}... ({len(v)} characters)"
        elif isinstance(v, bool | float) or v is None:
            out[key] = v
        elif isinstance(v, int):
            out[key] = v if INT_MIN <= v <= INT_MAX else f"{str(v)[:40]}... (an int of {v.bit_length()} bits)"
        else:
            size = len(v) if hasattr(v, "__len__") else "?"
            out[key] = f"<{type(v).__name__} of {size} items>"
    return json.dumps(out)
