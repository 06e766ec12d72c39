"""Shared base of RAVN's BCC probes: compile, load, filter, attach, decode, health (:class:`BccProbe`).

A probe plugin subclasses :class:`BccProbe`, names its ``.bpf.c`` (shipped with the shared headers as package data
under ``<package>/bpf/``, see :mod:`ravn_core.bpf.sources`), lists the tracepoints it attaches and the decoders of
its event structs, and gets the rest (compiling, filling the maps and attaching run in a short-lived
child, :mod:`ravn_core.bpf.loader`; the daemon keeps only the fds):

- environment checks that raise :class:`UnusableEnvironment` (exit 3) naming the fix
  (:func:`ravn_core.bpf.env.check_environment`), and compile/load errors reduced to their first error line and file;
- ``-I bpf/include`` and ``-D`` cflags (ring size, map sizes, which filters are compiled in) - never text edits;
- the in-kernel filters of ``bpf/include/ravn_common.bpf.h`` filled from
  :class:`~ravn_core.bpf.config.ProbeFilters`; RAVN's own pid and all its descendants always excluded; the
  pid -> ppid map seeded from /proc (:mod:`ravn_core.bpf.procfs`);
- the ring buffer read directly (:class:`~ravn_core.bpf.ring.RingReader`: mmap + epoll, no per-record ctypes
  callback), each record turned into a flat event dict by the probe's decoders (``ravn_core/events.py`` schema;
  ``evt.ts`` is wall-clock ns = kernel monotonic + an offset taken at start);
- ``poll(timeout_ms)`` returning the batch (a busy ring is read at most once per ``batch_ms``), ``stop()``
  detaching everything, ``health()`` with counters, and ``dump()`` for ``ravn --dump-bpf``.

The ctypes mirrors of ``bpf/include/ravn_events.h`` live next to their decoders (the header's in
:mod:`ravn_core.bpf.abi`, each probe's in its ``decode.py``). Per-event Python work is the budget: decoders unpack
the record with one ``struct.Struct`` derived from the ctypes mirror (:func:`~ravn_core.bpf.abi.unpacker`) and build
one dict; a probe with one fixed-size record type can decode whole runs of records at once
(:meth:`BccProbe.fast_decoder`).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ravn_core.bpf.abi import TYPE_NAMES
from ravn_core.bpf.config import BccProbeConfig
from ravn_core.bpf.env import TRACEFS, check_environment
from ravn_core.bpf.loader import LoadedBpf, fdinfo, load_in_child
from ravn_core.bpf.procfs import cgroup_id, descendants, read_proc_ppids
from ravn_core.bpf.ring import Decoder, RingReader
from ravn_core.bpf.sources import package_data
from ravn_core.components import Health, RuntimeContext, Source
from ravn_core.errors import UnusableEnvironment
from ravn_core.events import Batch, Event

if TYPE_CHECKING:
    from bcc import BPF

class _CaptureStderr:
    """Redirect fd 2 into a temp file (clang and the verifier print there from C++); ``text`` after exit."""

    def __enter__(self) -> _CaptureStderr:
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode(errors="replace")
        self._tmp.close()


def first_error(log: str, main_file: str) -> str:
    """The first ``error:`` line of a clang log, with BCC's /virtual/main.c replaced by the real file."""
    for line in log.splitlines():
        if "error:" in line:
            return line.strip().replace("/virtual/main.c", main_file)
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else "no compiler output"


#: the program names in ravn_common.bpf.h and the tracepoints the base class attaches them to
BASE_TRACEPOINTS: Final[tuple[tuple[str, str], ...]] = (
    ("ravn_on_newtask", "task:task_newtask"),
    ("ravn_on_exit", "sched:sched_process_exit"),
)


class BccProbe(Source):
    """Base class of BCC-based sources.

    Subclasses set the class attributes and implement :meth:`tracepoints` and :meth:`decoders`; optionally
    :meth:`probe_cflags` (extra ``-D`` flags) and :meth:`on_loaded` (fill the probe's own maps before attach).

    :cvar plugin: the plugin name written to ``evt.source`` (``ebpf_syscall``).
    :cvar package: import package whose package data ``bpf/`` holds ``bpf_file`` and ``include/`` (default: the
        top-level package of the subclass's module).
    :cvar bpf_file: the probe's ``.bpf.c`` file name.
    :ivar bpf: the probe's programs, links and maps (:class:`LoadedBpf`, fds only: compiled and attached in a
        short-lived child, see ``ravn_core.bpf.loader``) between start() and stop(), else None.
    :ivar counters: ``events``, ``decode_errors``; the health counters add drops and attach state.
    """

    plugin: ClassVar[str] = ""
    package: ClassVar[str] = ""
    bpf_file: ClassVar[str] = ""

    config: BccProbeConfig

    def __init__(self, name: str, config: BccProbeConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.bpf: LoadedBpf | None = None
        self.counters: dict[str, int] = {"events": 0, "decode_errors": 0}
        self._pending: Batch = []
        self._drops_before = 0  # kernel drops of the programs loaded before the current ones (restarts, stop)
        self._expected: list[tuple[str, str]] = []
        self._ts_offset = 0
        self._rate_mark = (time.monotonic(), 0)
        self._ring: RingReader | None = None
        self._batch_s = config.batch_ms / 1000
        self._hold_until = 0.0  # see poll

    # ------------------------------------------------------------------ what subclasses provide
    def tracepoints(self) -> list[tuple[str, str]]:
        """(BPF function name, ``category:event``) pairs to attach, besides the base fork/exit programs.

        One function may appear with many tracepoints (it is loaded once)."""
        raise NotImplementedError

    def decoders(self) -> dict[int, Decoder]:
        """Event type id (``EVENT_TYPE_IDS``) -> function(record) -> event dict (see ``Decoder``). Called at
        start, after the wall-clock offset is known, so decoders may capture ``self.event_header()``. A decoder
        that raises costs that record (counted in ``decode_errors``), never the batch."""
        raise NotImplementedError

    def probe_cflags(self) -> list[str]:
        """Extra ``-D`` flags for this probe's program."""
        return []

    def fast_decoder(self) -> tuple[int, Callable[[memoryview], Batch]] | None:
        """Optional: (record size, decode_many) when every record in the ring has that one size and type; see
        RingReader. decode_many must give exactly what the per-record decoder gives (test both)."""
        return None

    def on_loaded(self, bpf: BPF) -> None:
        """Fill the probe's own maps after compile, before any probe tracepoint is attached. Runs in the loader
        child with the ``bcc.BPF`` object: change maps only, not ``self`` (the daemon would not see it)."""

    # ------------------------------------------------------------------ files and flags
    def source_path(self) -> Path:
        """The probe's ``.bpf.c``: package data ``<package>/bpf/<bpf_file>`` (see ``ravn_core.bpf.sources``)."""
        return package_data(self._package(), f"bpf/{self.bpf_file}")

    def include_dir(self) -> Path:
        """The shared headers (``ravn_events.h``, ``ravn_common.bpf.h``): package data ``<package>/bpf/include``."""
        return package_data(self._package(), "bpf/include")

    def _package(self) -> str:
        return self.package or type(self).__module__.split(".")[0]

    def cflags(self) -> list[str]:
        cfg, f = self.config, self.config.filters
        return [
            f"-I{self.include_dir()}",
            f"-DRAVN_RINGBUF_PAGES={cfg.ring_buffer_kb // 4}",
            f"-DRAVN_MAX_PROCS={cfg.max_processes}",
            f"-DRAVN_MAX_EXCLUDED={cfg.max_excluded}",
            f"-DRAVN_FILTER_UIDS={int(bool(f.exclude_uids))}",
            f"-DRAVN_FILTER_COMMS={int(bool(f.exclude_comms))}",
            f"-DRAVN_FILTER_CGROUPS={int(bool(f.exclude_cgroups))}",
            *self.probe_cflags(),
        ]

    def program_text(self) -> str:
        """What BCC compiles: ravn_common.bpf.h then the probe's .bpf.c, as ONE main file.

        BCC rewrites map calls only in the main file (in a header they become indirect calls the verifier
        rejects), so the shared helpers must be part of it; ``#line`` markers keep compiler errors pointing at
        the real files. ravn_events.h stays a normal include (no map calls in it)."""
        path = self.source_path()
        common = self.include_dir() / "ravn_common.bpf.h"
        return (f'#line 1 "{common}"\n{common.read_text()}\n'
                f'#line 1 "{path}"\n{path.read_text()}')

    def dump(self) -> str:
        """The BPF C that start() compiles and its cflags, for ``ravn --dump-bpf``."""
        return "\n".join([f"// ravn {self.plugin} ({self.name}): {self.source_path()}",
                          "// cflags: " + " ".join(self.cflags()), self.program_text()])

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        check_environment()
        self._expected = [*BASE_TRACEPOINTS, *self.tracepoints()]
        self._ts_offset = time.time_ns() - time.monotonic_ns()
        self.bpf = load_in_child(self._load, self.plugin)
        try:
            self._open_ring(self.bpf)
        except BaseException:
            self._teardown()
            raise
        self._rate_mark = (time.monotonic(), self.counters["events"])

    def _load(self) -> BPF:
        """Compile, fill the filters and the probe's maps, attach. Runs in the loader child
        (``ravn_core.bpf.loader``)."""
        from bcc import BPF

        path = self.source_path()
        cflags = self.cflags()
        try:
            with _CaptureStderr() as cap:
                bpf = BPF(text=self.program_text().encode(), cflags=cflags)
        except Exception:
            raise UnusableEnvironment(f"{self.plugin}: BPF compile failed: {first_error(cap.text, str(path))}"
                                      ) from None
        for fn, tp in BASE_TRACEPOINTS:
            self._attach(bpf, fn, tp)
        self._fill_filters(bpf)
        self.on_loaded(bpf)
        for fn, tp in self._expected[len(BASE_TRACEPOINTS):]:
            self._attach(bpf, fn, tp)
        return bpf

    def _attach(self, bpf: BPF, fn: str, tp: str) -> None:
        from bcc import BPF

        category, event = tp.split(":")
        if not (TRACEFS / "events" / category / event).is_dir():
            raise UnusableEnvironment(f"{self.plugin}: tracepoint {tp} does not exist on this kernel")
        try:
            with _CaptureStderr() as cap:
                bpf.load_func(fn.encode(), BPF.TRACEPOINT)
                bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        except Exception as exc:
            detail = first_error(cap.text, self.bpf_file) if cap.text.strip() else str(exc)
            raise UnusableEnvironment(f"{self.plugin}: cannot load/attach {fn} to {tp}: {detail}") from None

    def _fill_filters(self, bpf: BPF) -> None:
        f = self.config.filters
        one = ctypes.c_uint8(1)
        excluded = bpf[b"ravn_excluded"]
        roots = {self.context.ravn_pid, *f.exclude_pids}
        for pid in roots:  # before the /proc walk: forks from now on propagate in the kernel
            excluded[ctypes.c_uint32(pid)] = one
        ppids = read_proc_ppids()
        ppid_map = bpf[b"ravn_ppid"]
        for pid, ppid in ppids.items():
            ppid_map[ctypes.c_uint32(pid)] = ctypes.c_uint32(ppid)
        for pid in descendants(roots, ppids) - roots:
            excluded[ctypes.c_uint32(pid)] = one
        if f.exclude_uids:
            m = bpf[b"ravn_ex_uids"]
            for uid in f.exclude_uids:
                m[ctypes.c_uint32(uid)] = one
        if f.exclude_comms:
            m = bpf[b"ravn_ex_comms"]
            for comm in f.exclude_comms:
                key = m.Key()
                key.comm = comm.encode()
                m[key] = one
        if f.exclude_cgroups:
            m = bpf[b"ravn_ex_cgroups"]
            for spec in f.exclude_cgroups:
                m[ctypes.c_uint64(cgroup_id(spec))] = one

    def event_header(self) -> Callable[[tuple[Any, ...]], Event]:
        """A function(unpacked tuple) -> dict holding evt.* and proc.* from the first 9 values (see unpacker)."""
        off, src, names = self._ts_offset, self.plugin, TYPE_NAMES
        comms: dict[bytes, str] = {}

        def header(v: tuple[Any, ...]) -> Event:
            comm = comms.get(v[8])
            if comm is None:
                if len(comms) > 4096:
                    comms.clear()
                comm = comms[v[8]] = v[8].split(b"\0", 1)[0].decode(errors="replace")
            return {"evt.type": names[v[6]], "evt.source": src, "evt.ts": v[0] + off,
                    "proc.pid": v[1], "proc.tid": v[2], "proc.ppid": v[3], "proc.uid": v[4], "proc.gid": v[5],
                    "proc.comm": comm, "proc.cgroup": v[7]}

        return header

    def _open_ring(self, bpf: LoadedBpf) -> None:
        self._ring = RingReader(bpf["ravn_events"].fd, self.config.ring_buffer_kb * 1024, self.decoders(),
                                self._pending, self.counters, self.config.max_batch, self.fast_decoder())

    def poll(self, timeout_ms: int) -> Batch:
        """The events in the ring, waiting at most ``timeout_ms`` for the first one.

        Batching (``batch_ms``): a poll right after one that returned events first lets the ring fill for the
        rest of ``batch_ms`` (never longer than ``timeout_ms``), so a busy ring is read, and its events handed to
        the next stage, once per ``batch_ms`` instead of once per wakeup. A quiet ring is still read as soon as a
        record arrives: the kernel wakes a consumer that has caught up on the first record after the drain, and
        that record goes out at once; only what follows it within ``batch_ms`` waits."""
        ring = self._ring
        if ring is None:
            time.sleep(timeout_ms / 1000)
            return []
        timeout = timeout_ms / 1000
        hold = min(self._hold_until - time.monotonic(), timeout)
        if hold > 0:
            time.sleep(hold)
            timeout -= hold
        if not self._pending and not ring.consume():
            ring.wait(timeout * 1000)
            ring.consume()
        batch = self._take()
        if batch:
            self._hold_until = time.monotonic() + self._batch_s
        return batch

    def _take(self) -> Batch:
        batch = self._pending[:]
        self._pending.clear()  # the reader holds this list object
        self.counters["events"] += len(batch)
        return batch

    def drain(self) -> Batch:
        if self._ring is not None:
            while self._ring.consume():
                pass
        return self._take()

    def stop(self) -> None:
        self._teardown()

    def _teardown(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()  # before the map fd goes: the mmap would keep the map alive
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            try:
                self._drops_before += int(sum(bpf["ravn_drops"][0]))
            except Exception:  # the map is unreadable: what it counted is lost with it
                pass
            bpf.close()

    def close(self) -> None:
        self._teardown()

    # ------------------------------------------------------------------ health
    def drops(self) -> int:
        """Records the kernel could not put in the ring buffer (sum of the per-CPU ravn_drops counter), over the
        probe's life: a reload or a stop keeps what the programs before counted, so the count never goes back."""
        bpf = self.bpf
        if bpf is None:
            return self._drops_before
        return self._drops_before + int(sum(bpf["ravn_drops"][0]))

    def attached(self) -> int:
        """Expected programs that are attached now: their perf event fd is still open and still a perf event."""
        bpf = self.bpf
        if bpf is None:
            return 0
        n = 0
        for _fn, tp in self._expected:
            fd = bpf.links.get(tp)
            if fd is not None:
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[perf_event]":
                        n += 1
                except OSError:
                    pass
        return n

    def program_ids(self) -> set[int]:
        """Kernel ids of this probe's loaded programs (as ``bpftool prog list`` shows them)."""
        bpf = self.bpf
        ids = set()
        for fd in bpf.programs.values() if bpf is not None else ():
            try:
                ids.add(int(fdinfo(fd)["prog_id"]))
            except (OSError, KeyError):  # closed (and maybe reused) by a concurrent stop()
                pass
        return ids

    def health(self) -> Health:
        """Called from the health thread; tolerates a concurrent stop() (reports "stopped")."""
        bpf = self.bpf
        if bpf is None:
            return Health("stopped", f"{self.plugin} not loaded", dict(self.counters))
        try:
            return self._health(bpf)
        except Exception as exc:  # torn down under us: maps closed
            if self.bpf is None:
                return Health("stopped", f"{self.plugin} not loaded", dict(self.counters))
            return Health("failed", f"health check failed: {type(exc).__name__}: {exc}", dict(self.counters))

    def _health(self, bpf: LoadedBpf) -> Health:
        now, events = time.monotonic(), self.counters["events"]
        t0, e0 = self._rate_mark
        rate = (events - e0) / (now - t0) if now > t0 else 0.0
        self._rate_mark = (now, events)
        attached, expected = self.attached(), len(self._expected)
        counters: dict[str, float] = {**self.counters, "drops": self.drops(), "programs_attached": attached,
                                      "programs_expected": expected, "events_per_s": round(rate, 1)}
        if attached < expected:
            missing = [tp for _fn, tp in self._expected if tp not in bpf.links]
            return Health("failed", f"{attached}/{expected} programs attached; missing {', '.join(missing)}",
                          counters)
        return Health("ok", "", counters)
