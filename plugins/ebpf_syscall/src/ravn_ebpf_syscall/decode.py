"""ctypes mirrors of the syscall probe's structs in ``bpf/include/ravn_events.h`` and their decoders."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ravn_core.bpf.abi import RavnHdr, unpacker
from ravn_core.bpf.ring import Decoder
from ravn_core.events import Batch, Event

SC_MAX = 512  # RAVN_SC_MAX
SC_SEQ = 64  # RAVN_SC_SEQ
SC_DISTINCT = 32  # RAVN_SC_DISTINCT


class SyscallEvent(ctypes.Structure):
    """``struct ravn_syscall_event`` (72 bytes)."""

    _fields_ = [("hdr", RavnHdr), ("ret", ctypes.c_int64), ("nr", ctypes.c_uint32), ("has_ret", ctypes.c_uint32)]


class SyscallSummary(ctypes.Structure):
    """``struct ravn_syscall_summary`` (2320 bytes): the value of the ravn_sc_summary map."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("total", ctypes.c_uint64),
        ("ndistinct", ctypes.c_uint64),
        ("seq_pos", ctypes.c_uint32),
        ("exited", ctypes.c_uint32),
        ("seq", ctypes.c_uint16 * SC_SEQ),
        ("distinct", ctypes.c_uint16 * SC_DISTINCT),
        ("counts", ctypes.c_uint32 * SC_MAX),
    ]


class SyscallFinal(ctypes.Structure):
    """``struct ravn_syscall_final`` (392 bytes): an exited process's summary, sent through the ring."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("total", ctypes.c_uint64),
        ("seq_pos", ctypes.c_uint32),
        ("ndistinct", ctypes.c_uint32),
        ("seq", ctypes.c_uint16 * SC_SEQ),
        ("nrs", ctypes.c_uint16 * SC_DISTINCT),
        ("counts", ctypes.c_uint32 * SC_DISTINCT),
    ]


#: C struct name -> mirror, checked by the ABI test
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "ravn_syscall_event": SyscallEvent,
    "ravn_syscall_summary": SyscallSummary,
    "ravn_syscall_final": SyscallFinal,
}

Header = Callable[[tuple[Any, ...]], Event]


class _Names(dict[int, str]):
    """nr -> name; a number outside the table (a corrupt or future record) reads as "nr<N>", never raises."""

    def __missing__(self, nr: int) -> str:
        return f"nr{nr}"


def _names(names: Sequence[str]) -> _Names:
    return _Names(enumerate(names))


def event_decoder(header: Header, names: Sequence[str]) -> Decoder:
    """Decoder of one ``ravn_syscall_event`` record: header fields + syscall.nr/name (+ ret).

    The hot path of events mode: one unpack and one dict display with every key (no helper call, no resize);
    the common fields come out exactly as ``header`` makes them (the probe's tests compare both)."""
    unpack = unpacker(SyscallEvent).unpack
    table = _names(names)
    proto = header(unpack(bytes(ctypes.sizeof(SyscallEvent))))
    src, off = proto["evt.source"], proto["evt.ts"]  # ts of a zero record is the wall-clock offset
    comms: dict[bytes, str] = {}

    def decode(buf: bytes) -> Event:
        ts, pid, tid, ppid, uid, gid, _t, cg, rawcomm, ret, nr, has_ret = unpack(buf)
        comm = comms.get(rawcomm)
        if comm is None:
            if len(comms) > 4096:
                comms.clear()
            comm = comms[rawcomm] = rawcomm.split(b"\0", 1)[0].decode(errors="replace")
        if has_ret:
            return {"evt.type": "syscall", "evt.source": src, "evt.ts": ts + off, "proc.pid": pid, "proc.tid": tid,
                    "proc.ppid": ppid, "proc.uid": uid, "proc.gid": gid, "proc.comm": comm, "proc.cgroup": cg,
                    "syscall.nr": nr, "syscall.name": table[nr], "syscall.ret": ret}
        return {"evt.type": "syscall", "evt.source": src, "evt.ts": ts + off, "proc.pid": pid, "proc.tid": tid,
                "proc.ppid": ppid, "proc.uid": uid, "proc.gid": gid, "proc.comm": comm, "proc.cgroup": cg,
                "syscall.nr": nr, "syscall.name": table[nr]}

    return decode


class CommCache(dict[bytes, str]):
    """raw 16-byte comm -> str, decoded once (bounded)."""

    def __missing__(self, raw: bytes) -> str:
        if len(self) > 4096:
            self.clear()
        comm = self[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return comm


def events_batch_decoder(header: Header, names: Sequence[str]) -> tuple[int, Callable[[memoryview], Batch]]:
    """RingReader fast path for events mode without return values: k ring frames (8-byte ring header + record)
    -> k events, one comprehension over struct.iter_unpack. Same dicts as event_decoder (tested)."""
    rec = unpacker(SyscallEvent)
    frame = struct.Struct("<8x" + rec.format.lstrip("<"))
    assert frame.size == 8 + rec.size and frame.size % 8 == 0
    iter_unpack = frame.iter_unpack
    table = _names(names)
    proto = header(rec.unpack(bytes(rec.size)))
    src, off = proto["evt.source"], proto["evt.ts"]
    comms = CommCache()

    def decode_many(region: memoryview) -> Batch:
        return [{"evt.type": "syscall", "evt.source": src, "evt.ts": ts + off, "proc.pid": pid, "proc.tid": tid,
                 "proc.ppid": ppid, "proc.uid": uid, "proc.gid": gid, "proc.comm": comms[raw], "proc.cgroup": cg,
                 "syscall.nr": nr, "syscall.name": table[nr]}
                for ts, pid, tid, ppid, uid, gid, _t, cg, raw, _ret, nr, _has_ret in iter_unpack(region)]

    return rec.size, decode_many


#: the summary fields after the header, as numpy reads a run of map values (offsets from the ctypes mirror)
_SUMMARY_DTYPE = np.dtype({
    "names": ["total", "seq_pos", "exited", "seq", "counts"],
    "formats": ["<u8", "<u4", "<u4", ("<u2", SC_SEQ), ("<u4", SC_MAX)],
    "offsets": [SyscallSummary.total.offset, SyscallSummary.seq_pos.offset, SyscallSummary.exited.offset,
                SyscallSummary.seq.offset, SyscallSummary.counts.offset],
    "itemsize": ctypes.sizeof(SyscallSummary),
})
_HDR = unpacker(RavnHdr)


#: a final record is read in parts: the header, total, seq_pos and ndistinct first, then only the ndistinct
#: (nr, count) pairs and the sequence slots it needs (a /bin/true is 2 of each, of 32 and 64)
_FINAL_SIZE = ctypes.sizeof(SyscallFinal)
_FINAL_HEAD = struct.Struct("<" + unpacker(RavnHdr).format.lstrip("<") + "QII")
_F_SEQ, _F_NRS, _F_COUNTS = SyscallFinal.seq.offset, SyscallFinal.nrs.offset, SyscallFinal.counts.offset
_U16 = [struct.Struct(f"<{n}H") for n in range(SC_SEQ + 1)]
_U32 = [struct.Struct(f"<{n}I") for n in range(SC_DISTINCT + 1)]

#: what a final record's decoder returns when the record adds nothing to what the last flush emitted; the
#: source leaves it out of the batch (a ring decoder must return an event)
NOTHING: Event = {}


class SummaryFlusher:
    """Turns per-process syscall summaries into ``syscall_summary`` events: the deltas since the previous one.

    Two ways in. A process that exits is sent by the kernel as one ``ravn_syscall_final`` ring record (only the
    counts of the syscalls it used) and its map entry deleted: :meth:`decode_final` / :meth:`final_batch`
    emit it once. Live processes stay in the ravn_sc_summary map and :meth:`flush` reads it every
    flush_interval_ms: the whole map in a few ``bpf(2)`` batch calls when the table has ``read_all``/
    ``delete_many`` (``FdMap``; else ``items()`` and ``del``), its values decoded as one numpy record array (a
    process costs one header unpack and a comparison of its 512 counters). Entries the kernel marked exited
    (their final record could not be sent) are emitted a last time and deleted. Both ways use ``last``, so an
    exit after a flush emits only what came after it. One thread calls all of them (the source's poll).
    """

    def __init__(self, table: Any, header: Header, names: Sequence[str]) -> None:
        self.table = table
        self.header = header
        self.names = names
        # tgid -> (total, seq_pos, counts) at the previous flush
        self.last: dict[int, tuple[int, int, np.ndarray[Any, Any]]] = {}
        self.nothing = 0  #: NOTHING results of decode_final not yet taken out of a batch

    def _final(self, buf: Any, at: int) -> Event | None:
        """The final record at offset ``at`` of ``buf`` -> event, None when it adds nothing to the last flush."""
        v = _FINAL_HEAD.unpack_from(buf, at)
        total, seq_pos, nd = v[9], v[10], min(v[11], SC_DISTINCT)  # the kernel writes at most SC_DISTINCT
        prev = self.last.pop(v[1], None)
        names = self.names
        pairs = [(nr, c) for nr, c in zip(_U16[nd].unpack_from(buf, at + _F_NRS),
                                          _U32[nd].unpack_from(buf, at + _F_COUNTS), strict=True) if nr < SC_MAX]
        if prev is None or total < prev[0]:  # never flushed, or the flushed entry was recreated since
            counts = {names[nr]: c for nr, c in pairs}
            new_seq = seq_pos
        else:
            if total == prev[0]:
                return None
            before = prev[2]
            counts = {}
            for nr, c in pairs:
                d = c - int(before[nr])
                if d:
                    counts[names[nr]] = d
            new_seq, total = seq_pos - prev[1], total - prev[0]
        n = max(0, min(new_seq, SC_SEQ))
        start = (seq_pos - n) % SC_SEQ
        if start + n <= SC_SEQ:
            seq = list(_U16[n].unpack_from(buf, at + _F_SEQ + 2 * start))
        else:  # the window wraps: its older part is at the end of the ring
            seq = [*_U16[SC_SEQ - start].unpack_from(buf, at + _F_SEQ + 2 * start),
                   *_U16[start + n - SC_SEQ].unpack_from(buf, at + _F_SEQ)]
        ev = self.header(v)
        ev["syscall.counts"] = counts
        ev["syscall.seq"] = seq
        ev["syscall.total"] = total
        return ev

    def decode_final(self, buf: bytes) -> Event:
        """Ring decoder of one ``ravn_syscall_final`` record (NOTHING when it adds nothing)."""
        if len(buf) != _FINAL_SIZE:
            raise ValueError(f"syscall_summary record of {len(buf)} bytes, expected {_FINAL_SIZE}")
        ev = self._final(buf, 0)
        if ev is None:
            self.nothing += 1
            return NOTHING
        return ev

    def final_batch(self) -> tuple[int, Callable[[memoryview], Batch]]:
        """RingReader fast path: k ring frames (8-byte ring header + record) of final records -> their events."""
        frame = (8 + _FINAL_SIZE + 7) & ~7
        final = self._final

        def decode_many(region: memoryview) -> Batch:
            out = []
            for at in range(8, len(region), frame):
                ev = final(region, at)
                if ev is not None:
                    out.append(ev)
            return out

        return _FINAL_SIZE, decode_many

    def _read(self) -> tuple[list[int], bytes, bytes]:
        read_all = getattr(self.table, "read_all", None)
        if read_all is not None:
            kraw, vraw, n = read_all()
            return np.frombuffer(kraw, "<u4", n).tolist(), kraw, vraw
        items = list(self.table.items())
        keys = [k.value for k, _ in items]
        return keys, np.array(keys, "<u4").tobytes(), b"".join(bytes(v) for _, v in items)

    def flush(self) -> Batch:
        tgids, kraw, vraw = self._read()
        out: Batch = []
        if not tgids:
            return out
        rec = np.frombuffer(vraw, _SUMMARY_DTYPE, len(tgids))
        totals, seq_poss, exiteds = rec["total"].tolist(), rec["seq_pos"].tolist(), rec["exited"].tolist()
        all_counts, all_seqs = rec["counts"], rec["seq"]
        size, hdr, names, last = _SUMMARY_DTYPE.itemsize, _HDR.unpack_from, self.names, self.last
        dead: list[int] = []
        for i, tgid in enumerate(tgids):
            total, seq_pos = totals[i], seq_poss[i]
            prev = last.get(tgid)
            if prev is not None and total < prev[0]:
                prev = None  # the entry was recreated (LRU eviction or pid reuse)
            if exiteds[i]:
                dead.append(i)
            if prev is not None and total == prev[0]:
                continue
            counts = all_counts[i]
            if prev is None:
                nz = np.flatnonzero(counts)
                deltas = counts[nz].tolist()
                new_seq, prev_total = seq_pos, 0
            else:
                diff = counts.astype(np.int64) - prev[2]
                nz = np.flatnonzero(diff)
                deltas = diff[nz].tolist()
                new_seq, prev_total = seq_pos - prev[1], prev[0]
            n = max(0, min(new_seq, SC_SEQ))
            ring = all_seqs[i].tolist()
            ev = self.header(hdr(vraw, i * size))
            ev["syscall.counts"] = dict(zip([names[j] for j in nz.tolist()], deltas, strict=True))
            ev["syscall.seq"] = [ring[(seq_pos - n + j) % SC_SEQ] for j in range(n)]
            ev["syscall.total"] = total - prev_total
            out.append(ev)
            last[tgid] = (total, seq_pos, counts.copy())
        if dead:
            for i in dead:
                last.pop(tgids[i], None)
            delete_many = getattr(self.table, "delete_many", None)
            if delete_many is not None:
                delete_many(b"".join(kraw[4 * i:4 * i + 4] for i in dead), len(dead))
            else:
                for i in dead:
                    try:
                        del self.table[ctypes.c_uint32(tgids[i])]
                    except KeyError:
                        pass
        return out
