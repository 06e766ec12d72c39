"""Reading a BPF ring buffer map from Python (:class:`RingReader`) and the decoder signature it calls."""

from __future__ import annotations

import gc
import mmap
import select
import struct
from collections.abc import Callable

from ravn_core.bpf.abi import HDR_TYPE_OFFSET
from ravn_core.events import Batch, Event

#: record -> event. The record is bytes-like: a memoryview slice of the ring of exactly the record's size (use
#: ``struct.unpack``; do not keep it or call bytes methods on it). Typed ``bytes`` so decoders stay simple to test.
Decoder = Callable[[bytes], Event]

_BUSY, _DISCARD, _RB_HDR = 1 << 31, 1 << 30, 8
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q")


class RingReader:
    """Consumes a BPF ring buffer map directly from Python: no libbpf callback per record.

    libbpf's ring_buffer__poll calls a C callback per record, which BCC turns into a ctypes call into Python
    (~1.3 us each here) and the record into bytes (string_at, ~1 us): more than the decode itself. The ring's
    protocol is small (kernel/bpf/ringbuf.c, tools/lib/bpf/ringbuf.c), so this reads it the way libbpf does:
    mmap the consumer page read-write and the producer page + data (mapped twice, so a record that wraps is
    contiguous) read-only; walk records from consumer_pos to producer_pos, each an 8-byte header (length with
    BUSY/DISCARD bits, page offset) then the sample, 8-byte aligned; stop at a record still BUSY; publish the new
    consumer_pos. x86-64 loads/stores are ordered enough for the acquire/release pairs libbpf uses. Waiting is
    epoll on the map fd (EPOLLIN while producer_pos != consumer_pos; the kernel wakes a caught-up consumer).

    Each decoder gets a memoryview slice of exactly the record (bytes-like: ``struct.unpack`` it, do not keep it).

    Fast path (``fast=(record_size, decode_many)``, for probes whose ring carries one fixed-size record type): a
    run of k committed records is recognised with one strided read of their length words and handed to
    ``decode_many(memoryview of k frames)`` at once (a list comprehension over ``struct.iter_unpack``, each
    frame being the 8-byte ring header + the record padded to 8). Records of another size, BUSY or DISCARDed ones
    end the run and take the per-record path.
    """

    FAST_CHUNK = 4096  # records per fast-path call; consumer_pos is published after each

    def __init__(self, map_fd: int, size: int, decoders: dict[int, Decoder], pending: Batch,
                 counters: dict[str, int], max_batch: int,
                 fast: tuple[int, Callable[[memoryview], Batch]] | None = None) -> None:
        page = mmap.PAGESIZE
        self.size, self.mask, self.base = size, size - 1, page
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._cons = memoryview(self._cons_map)
        self._data = memoryview(self._data_map)
        self._data32 = self._data.cast("I")
        self.fast = fast
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.decoders: list[Decoder | None] = [decoders.get(i) for i in range(256)]
        self.pending = pending
        self.counters = counters
        self.max_batch = max_batch

    def wait(self, timeout_ms: float) -> None:
        self._ep.poll(timeout_ms / 1000)

    def consume(self) -> int:
        """Decode the committed records into ``pending`` (up to max_batch in it); return how many were read."""
        data, cons_mv = self._data, self._cons
        cons = _U64.unpack_from(cons_mv, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        if cons == prod:
            return 0
        base, mask, decoders, pending = self.base, self.mask, self.decoders, self.pending
        room = self.max_batch - len(pending)
        append = pending.append
        n = errors = 0
        fast = self.fast
        if fast is not None:
            rec_size, decode_many = fast
            frame = (rec_size + _RB_HDR + 7) & ~7
            fw, d32 = frame // 4, self._data32
        while cons < prod and n < room:
            if fast is not None:
                k = min((prod - cons) // frame, room - n, self.FAST_CHUNK)
                if k > 1:
                    off = base + (cons & mask)
                    i = off >> 2
                    lens = d32[i:i + k * fw:fw].tolist()  # the length word of each frame
                    good = k
                    if lens.count(rec_size) != k:
                        good = next(j for j, x in enumerate(lens) if x != rec_size)
                    if good:
                        try:
                            pending.extend(decode_many(data[off:off + good * frame]))
                        except Exception:
                            errors += good
                        cons += good * frame
                        n += good
                        _U64.pack_into(cons_mv, 0, cons)
                        continue
            off = base + (cons & mask)
            ln = _U32(data, off)[0]
            if ln & _BUSY:
                break
            size = ln & ~(_BUSY | _DISCARD)
            cons += (size + _RB_HDR + 7) & ~7
            n += 1
            if not ln & _DISCARD:
                rec = off + _RB_HDR
                try:
                    append(decoders[data[rec + HDR_TYPE_OFFSET]](data[rec:rec + size]))  # None: decode error
                except Exception:
                    errors += 1
            if not n & 63:
                _U64.pack_into(cons_mv, 0, cons)  # hand space back to the producers while we decode
        _U64.pack_into(cons_mv, 0, cons)
        if errors:
            self.counters["decode_errors"] += errors
        return n

    def close(self) -> None:
        self._ep.close()
        self._cons.release()
        self._data32.release()
        self._data.release()
        try:
            self._cons_map.close()
            self._data_map.close()
        except BufferError:  # a decoder kept a slice: collect it, then unmap (else the map outlives stop())
            gc.collect()
            self._cons_map.close()
            self._data_map.close()
