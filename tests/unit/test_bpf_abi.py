"""The ctypes mirrors in ravn_core.bpf.abi match bpf/include/ravn_events.h, and the type ids cover the schema."""

from __future__ import annotations

import ctypes

import pytest

from ravn_core.bpf.abi import (
    CORE_MIRRORS,
    EVENT_TYPE_CONSTANTS,
    EVENT_TYPE_IDS,
    HDR_TYPE_OFFSET,
    TYPE_NAMES,
    RavnHdr,
    check_abi,
    type_ids_match_schema,
    unpacker,
)
from ravn_core.events import EVENT_TYPES


def test_header_and_enum_match_c() -> None:
    consts = {EVENT_TYPE_CONSTANTS[n]: i for n, i in EVENT_TYPE_IDS.items()}
    consts["RAVN_EVT_MAX"] = max(EVENT_TYPE_IDS.values()) + 1
    assert check_abi(CORE_MIRRORS, enum_constants=consts) == []


def test_every_event_type_has_an_id() -> None:
    assert type_ids_match_schema() == []
    assert set(EVENT_TYPE_IDS) == set(EVENT_TYPES)
    assert all(TYPE_NAMES[i] == n for n, i in EVENT_TYPE_IDS.items())


def test_type_offset_constant() -> None:
    assert RavnHdr.type.offset == HDR_TYPE_OFFSET
    assert ctypes.sizeof(RavnHdr) == 56


def test_check_abi_detects_drift() -> None:
    class Drifted(ctypes.Structure):  # pid and tid swapped in width: offsets after it move
        _fields_ = [(n, ctypes.c_uint64 if n == "pid" else t) for n, t in RavnHdr._fields_]

    problems = check_abi({"ravn_hdr": Drifted}, enum_constants={"RAVN_EVT_SYSCALL": 7})
    assert any("offsetof ravn_hdr.tid" in p for p in problems)
    assert any("sizeof ravn_hdr.pid" in p for p in problems)
    assert any("enum RAVN_EVT_SYSCALL" in p for p in problems)


def test_unpacker_follows_the_mirror() -> None:
    h = RavnHdr(ts_ns=1 << 40, pid=10, tid=11, ppid=9, uid=1000, gid=100, type=3, cgroup_id=77, comm=b"bash")
    v = unpacker(RavnHdr).unpack(bytes(h))
    assert v == (1 << 40, 10, 11, 9, 1000, 100, 3, 77, b"bash" + b"\0" * 12)


def test_unpacker_rejects_unknown_types() -> None:
    class Bad(ctypes.Structure):
        _fields_ = [("f", ctypes.c_double)]

    with pytest.raises(KeyError):
        unpacker(Bad)
