"""ctypes mirrors of the syscall probe's structs in ``bpf/include/ravn_events.h`` and their decoders."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

from ravn_core.bpf import Decoder, RavnHdr, unpacker
from ravn_core.events import Batch, Event

SC_MAX = 512  # RAVN_SC_MAX
SC_SEQ = 64  # RAVN_SC_SEQ


class SyscallEvent(ctypes.Structure):
    """``struct ravn_syscall_event`` (72 bytes)."""

    _fields_ = [("hdr", RavnHdr), ("ret", ctypes.c_int64), ("nr", ctypes.c_uint32), ("has_ret", ctypes.c_uint32)]


class SyscallSummary(ctypes.Structure):
    """``struct ravn_syscall_summary`` (2248 bytes): the value of the ravn_sc_summary map."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("total", ctypes.c_uint64),
        ("seq_pos", ctypes.c_uint32),
        ("exited", ctypes.c_uint32),
        ("seq", ctypes.c_uint16 * SC_SEQ),
        ("counts", ctypes.c_uint32 * SC_MAX),
    ]


#: C struct name -> mirror, checked by the ABI test
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "ravn_syscall_event": SyscallEvent,
    "ravn_syscall_summary": SyscallSummary,
}

Header = Callable[[tuple[Any, ...]], Event]


def event_decoder(header: Header, names: Sequence[str]) -> Decoder:
    """Decoder of one ``ravn_syscall_event`` record: header fields + syscall.nr/name (+ ret)."""
    unpack = unpacker(SyscallEvent).unpack

    def decode(buf: bytes) -> Event:
        v = unpack(buf)  # 9 header values, ret, nr, has_ret
        ev = header(v)
        nr = v[10]
        ev["syscall.nr"] = nr
        ev["syscall.name"] = names[nr]
        if v[11]:
            ev["syscall.ret"] = v[9]
        return ev

    return decode


# offsets in the unpacked SyscallSummary tuple
_TOTAL, _SEQ_POS, _EXITED, _SEQ = 9, 10, 11, 12
_COUNTS = _SEQ + SC_SEQ


class SummaryFlusher:
    """Turns the ravn_sc_summary map into ``syscall_summary`` events: the deltas since the previous flush.

    Entries whose process exited (``exited`` set by the kernel's exit hook) are emitted a last time and deleted.
    """

    def __init__(self, table: Any, header: Header, names: Sequence[str]) -> None:
        self.table = table
        self.header = header
        self.names = names
        self.unpack = unpacker(SyscallSummary).unpack
        # tgid -> (total, seq_pos, counts) at the previous flush
        self.last: dict[int, tuple[int, int, tuple[int, ...]]] = {}

    def flush(self) -> Batch:
        out: Batch = []
        dead = []
        names = self.names
        for key, leaf in self.table.items():
            tgid = key.value
            v = self.unpack(bytes(leaf))
            total, seq_pos = v[_TOTAL], v[_SEQ_POS]
            prev = self.last.get(tgid)
            if prev is not None and total < prev[0]:
                prev = None  # the entry was recreated (LRU eviction or pid reuse)
            if v[_EXITED]:
                dead.append(key)
            if prev is not None and total == prev[0]:
                continue
            counts = v[_COUNTS:_COUNTS + SC_MAX]
            if prev is None:
                delta = {names[i]: c for i, c in enumerate(counts) if c}
                new_seq = seq_pos
                prev_total = 0
            else:
                delta = {names[i]: c - p for i, (c, p) in enumerate(zip(counts, prev[2], strict=True)) if c != p}
                new_seq = seq_pos - prev[1]
                prev_total = prev[0]
            n = min(new_seq, SC_SEQ)
            ring = v[_SEQ:_SEQ + SC_SEQ]
            ev = self.header(v)
            ev["syscall.counts"] = delta
            ev["syscall.seq"] = [ring[(seq_pos - n + j) % SC_SEQ] for j in range(n)]
            ev["syscall.total"] = total - prev_total
            out.append(ev)
            self.last[tgid] = (total, seq_pos, counts)
        for key in dead:
            self.last.pop(key.value, None)
            try:
                del self.table[key]
            except KeyError:
                pass
        return out
