"""ebpf_syscall without the kernel: ABI of its structs, config model, decoders."""

from __future__ import annotations

import ctypes

import pydantic
import pytest
from ravn_ebpf_syscall.config import DEFAULT_SYSCALLS, SyscallConfig
from ravn_ebpf_syscall.decode import (
    MIRRORS,
    NOTHING,
    SummaryFlusher,
    SyscallEvent,
    SyscallFinal,
    SyscallSummary,
    event_decoder,
)
from ravn_ebpf_syscall.source import SyscallSource
from ravn_ebpf_syscall.syscalls import names_by_nr, table

from ravn_core.bpf.abi import RavnHdr, check_abi, unpacker
from ravn_core.testing import make_context

HOT = {"read", "write", "pread64", "pwrite64", "readv", "writev", "poll", "ppoll", "select", "pselect6",
       "epoll_wait", "epoll_pwait", "epoll_pwait2", "futex", "mmap", "munmap", "mprotect", "brk", "openat", "close",
       "fstat", "newfstatat", "statx", "lseek", "recvfrom", "sendto", "recvmsg", "sendmsg", "clock_gettime",
       "nanosleep", "getpid", "gettid", "rt_sigprocmask", "sched_yield", "ioctl", "fcntl"}


def test_abi() -> None:
    assert check_abi(MIRRORS) == []
    assert ctypes.sizeof(SyscallEvent) == 72
    assert ctypes.sizeof(SyscallSummary) == 2320
    assert ctypes.sizeof(SyscallFinal) == 392


def test_table() -> None:
    t = table()
    assert t["getppid"].nr == 110 and t["kill"].nr == 62 and t["execve"].nr == 59
    assert t["uname"].tracepoint == "newuname" and t["umount2"].tracepoint == "umount"
    assert names_by_nr()[110] == "getppid" and names_by_nr()[511] == "nr511"


def test_default_config() -> None:
    cfg = SyscallConfig()
    assert cfg.mode == "summary" and cfg.effective_hook() == "tracepoints"
    assert 40 <= len(cfg.selected()) <= 70
    assert not HOT & set(cfg.selected())
    assert {"execve", "ptrace", "setuid", "bpf", "memfd_create", "mount", "connect"} <= set(DEFAULT_SYSCALLS)


def test_config_errors() -> None:
    with pytest.raises(pydantic.ValidationError, match="unknown x86_64 syscall"):
        SyscallConfig(syscalls=["getppid", "nosuchcall"])
    with pytest.raises(pydantic.ValidationError, match="non-empty"):
        SyscallConfig(hook="tracepoints", syscalls=[])
    with pytest.raises(pydantic.ValidationError, match="events only"):
        SyscallConfig(mode="summary", return_values=True)
    with pytest.raises(pydantic.ValidationError, match="power of two"):
        SyscallConfig(ring_buffer_kb=1000)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        SyscallConfig(bogus=1)  # type: ignore[call-arg]
    assert SyscallConfig(syscalls=[]).effective_hook() == "raw"
    assert SyscallConfig(exclude_syscalls=["kill"]).selected().count("kill") == 0


def test_tracepoint_plan() -> None:
    src = SyscallSource("ebpf_syscall", SyscallConfig(mode="events", return_values=True,
                                                      syscalls=["getppid", "exit_group", "uname"]), make_context())
    assert src.tracepoints() == [("ravn_sc_exit_tp", "syscalls:sys_exit_getppid"),
                                 ("ravn_sc_enter_tp", "syscalls:sys_enter_exit_group"),
                                 ("ravn_sc_exit_tp", "syscalls:sys_exit_newuname")]
    raw = SyscallSource("ebpf_syscall", SyscallConfig(syscalls=[]), make_context())
    assert raw.tracepoints() == [("ravn_sc_enter_raw", "raw_syscalls:sys_enter")]
    assert "-DRAVN_SC_SUMMARY=1" in raw.cflags() and "-DRAVN_RINGBUF_PAGES=256" in raw.cflags()


def _hdr(**kw: object) -> RavnHdr:
    base = dict(ts_ns=5_000, pid=42, tid=43, ppid=1, uid=1000, gid=100, type=1, cgroup_id=9, comm=b"sh")
    base.update(kw)
    return RavnHdr(**base)


def _header(v: tuple[object, ...]) -> dict[str, object]:
    return {"proc.pid": v[1], "proc.tid": v[2], "evt.ts": v[0]}


def test_event_decoder() -> None:
    src = SyscallSource("ebpf_syscall", SyscallConfig(mode="events", syscalls=["kill"]), make_context())
    src._ts_offset = 1_000_000
    header = src.event_header()
    dec = event_decoder(header, names_by_nr())
    rec = SyscallEvent(hdr=_hdr(), ret=-3, nr=62, has_ret=1)
    e = dec(bytes(rec))
    assert e == {"evt.type": "syscall", "evt.source": "ebpf_syscall", "evt.ts": 1_005_000, "proc.pid": 42,
                 "proc.tid": 43, "proc.ppid": 1, "proc.uid": 1000, "proc.gid": 100, "proc.comm": "sh",
                 "proc.cgroup": 9, "syscall.nr": 62, "syscall.name": "kill", "syscall.ret": -3}
    # the common fields are exactly what the base class's header function makes
    assert {k: v for k, v in e.items() if not k.startswith("syscall.")} == header(unpacker(SyscallEvent).unpack(
        bytes(rec)))
    assert "syscall.ret" not in dec(bytes(SyscallEvent(hdr=_hdr(), ret=0, nr=110, has_ret=0)))
    assert dec(bytes(SyscallEvent(hdr=_hdr(), nr=70000)))["syscall.name"] == "nr70000"  # never raises


class _Table:
    """The two operations SummaryFlusher uses of a bcc table: items() and del."""

    def __init__(self) -> None:
        self.entries: list[tuple[ctypes.c_uint32, SyscallSummary]] = []

    def items(self) -> list[tuple[ctypes.c_uint32, SyscallSummary]]:
        return list(self.entries)

    def __delitem__(self, key: ctypes.c_uint32) -> None:
        self.entries = [(k, v) for k, v in self.entries if k.value != key.value]


def _live_process() -> tuple[_Table, SyscallSummary, SummaryFlusher]:
    """A map holding one live process (tgid 42) with nothing counted yet, and a flusher over it."""
    m = _Table()
    s = SyscallSummary(hdr=_hdr(type=2))
    m.entries.append((ctypes.c_uint32(42), s))
    return m, s, SummaryFlusher(m, _header, names_by_nr())


def test_summary_deltas_and_exit() -> None:
    """The flusher turns cumulative map values into per-flush deltas, and deletes exited entries."""
    m, s, flusher = _live_process()

    def bump(nr: int, n: int) -> None:
        for _ in range(n):
            s.counts[nr] += 1
            s.total += 1
            s.seq[s.seq_pos % 64] = nr
            s.seq_pos += 1

    bump(62, 3)
    (e,) = flusher.flush()
    assert e["syscall.counts"] == {"kill": 3} and e["syscall.seq"] == [62] * 3 and e["syscall.total"] == 3
    assert flusher.flush() == []  # nothing new
    bump(110, 100)
    s.exited = 1
    (e,) = flusher.flush()
    assert e["syscall.counts"] == {"getppid": 100} and e["syscall.total"] == 100
    assert e["syscall.seq"] == [110] * 64
    assert m.entries == []  # exited: deleted after the last flush


def _final(s: SyscallSummary) -> bytes:
    """The ravn_syscall_final record the kernel's exit program makes of an entry (bpf/syscall.bpf.c)."""
    nd = min(s.ndistinct, 32)
    f = SyscallFinal(hdr=s.hdr, total=s.total, seq_pos=s.seq_pos, ndistinct=nd)
    f.seq[:] = s.seq[:]
    for i in range(nd):
        f.nrs[i] = s.distinct[i]
        f.counts[i] = s.counts[s.distinct[i]]
    return bytes(f)


def _count(s: SyscallSummary, nr: int, n: int) -> None:
    """What the kernel does per counted syscall (bpf/syscall.bpf.c ravn_sc_count)."""
    for _ in range(n):
        if not s.counts[nr]:
            s.distinct[s.ndistinct] = nr
            s.ndistinct += 1
        s.counts[nr] += 1
        s.total += 1
        s.seq[s.seq_pos % 64] = nr
        s.seq_pos += 1


def test_final_record_of_a_process_never_flushed() -> None:
    flusher = SummaryFlusher(_Table(), _header, names_by_nr())
    s = SyscallSummary(hdr=_hdr(type=2))
    _count(s, 59, 1)
    _count(s, 62, 2)
    _count(s, 231, 1)
    e = flusher.decode_final(_final(s))
    assert e == {"proc.pid": 42, "proc.tid": 43, "evt.ts": 5_000, "syscall.counts": {"execve": 1, "kill": 2,
                 "exit_group": 1}, "syscall.seq": [59, 62, 62, 231], "syscall.total": 4}
    s = SyscallSummary(hdr=_hdr(type=2, pid=44))
    _count(s, 62, 64)
    _count(s, 110, 1)
    _count(s, 231, 1)
    e = flusher.decode_final(_final(s))  # 66 syscalls: the window is the ring's last 64, wrapped
    assert e["syscall.seq"] == [62] * 62 + [110, 231] and e["syscall.total"] == 66
    with pytest.raises(ValueError, match="syscall_summary record of 391 bytes, expected 392"):
        flusher.decode_final(_final(s)[:-1])


def test_final_record_after_flushes_gives_the_rest() -> None:
    """A process flushed from the map while alive, then exiting: the final record emits only what came after the
    last flush; the events' counts add up to the process's, and its sequence continues where it stopped."""
    m, s, flusher = _live_process()
    _count(s, 62, 70)
    (first,) = flusher.flush()
    assert first["syscall.counts"] == {"kill": 70} and len(first["syscall.seq"]) == 64
    _count(s, 110, 3)
    _count(s, 62, 1)
    _count(s, 231, 1)
    m.entries.clear()  # the kernel deleted the entry when it sent the record
    e = flusher.decode_final(_final(s))
    assert e["syscall.counts"] == {"getppid": 3, "kill": 1, "exit_group": 1} and e["syscall.total"] == 5
    assert e["syscall.seq"] == [110, 110, 110, 62, 231]  # the ring wrapped (seq_pos 75)
    assert flusher.last == {}
    assert flusher.flush() == []


def test_final_record_with_nothing_new_emits_nothing() -> None:
    """Flushed after its last counted syscall (e.g. killed by a signal later): the final record adds nothing, and
    the source leaves the NOTHING placeholder out of its batch."""
    m, s, flusher = _live_process()
    _count(s, 62, 5)
    assert len(flusher.flush()) == 1
    assert flusher.decode_final(_final(s)) is NOTHING and flusher.nothing == 1
    assert flusher.last == {}
    again = SummaryFlusher(m, _header, names_by_nr())  # the ring's fast path leaves it out itself
    assert len(again.flush()) == 1
    size, many = again.final_batch()
    assert many(memoryview(size.to_bytes(4, "little") + b"\0" * 4 + _final(s))) == [] and again.last == {}


def test_a_corrupt_final_record_still_decodes() -> None:
    """Values the kernel never writes (ndistinct above 32, a syscall number past the table, a sequence position
    behind the last flush) give an event with what can be read, not an IndexError that loses the batch."""
    _, s, flusher = _live_process()
    _count(s, 62, 5)
    assert len(flusher.flush()) == 1
    f = SyscallFinal.from_buffer_copy(_final(s))
    f.ndistinct, f.nrs[0], f.nrs[1], f.counts[1] = 1000, 62, 60000, 9
    f.total, f.seq_pos = 7, 1  # more syscalls than the flush saw, yet a sequence position behind it
    e = flusher.decode_final(bytes(f))
    assert e["syscall.counts"] == {} and e["syscall.seq"] == [] and e["syscall.total"] == 2


def test_final_fast_path_gives_the_same_events() -> None:
    def flusher() -> SummaryFlusher:
        return SummaryFlusher(_Table(), _header, names_by_nr())

    recs = []
    for i in range(5):
        s = SyscallSummary(hdr=_hdr(pid=100 + i, tid=100 + i, type=2))
        for nr in (59, 62, 231)[: i + 1]:
            _count(s, nr, 10 * i + 1)
        recs.append(_final(s))
    size, many = flusher().final_batch()
    assert size == ctypes.sizeof(SyscallFinal)
    frames = b"".join(size.to_bytes(4, "little") + b"\0" * 4 + r for r in recs)
    one = flusher()
    assert many(memoryview(frames)) == [one.decode_final(r) for r in recs]


def test_fast_path_gives_the_same_events() -> None:
    """RingReader's batch decoder (ring frames -> events) equals the per-record decoder, key for key."""
    from ravn_ebpf_syscall.decode import events_batch_decoder

    src = SyscallSource("ebpf_syscall", SyscallConfig(mode="events", syscalls=["getppid"]), make_context())
    header = src.event_header()
    one = event_decoder(header, names_by_nr())
    size, many = events_batch_decoder(header, names_by_nr())
    assert size == ctypes.sizeof(SyscallEvent)
    recs = [bytes(SyscallEvent(hdr=_hdr(pid=100 + i, tid=200 + i, comm=b"c%d" % (i % 3)), ret=0, nr=nr))
            for i, nr in enumerate([110, 62, 59, 0, 511, 4_000_000_000])]
    frames = b"".join(size.to_bytes(4, "little") + b"\0" * 4 + r for r in recs)  # ring header: len, pg_off
    got = many(memoryview(frames))
    assert got == [one(r) for r in recs]
    assert [e["proc.comm"] for e in got] == ["c0", "c1", "c2", "c0", "c1", "c2"]


def test_dump_shows_what_is_compiled() -> None:
    src = SyscallSource("ebpf_syscall", SyscallConfig(mode="events", syscalls=["getppid"]), make_context())
    text = src.dump()
    assert "-DRAVN_SC_SUMMARY=0" in text and "-DRAVN_RINGBUF_PAGES=256" in text
    assert "int ravn_sc_enter_tp(" in text and "static __always_inline int ravn_filtered(" in text
    assert text.count('#line 1 "') == 2
