"""Shared base of RAVN's BCC probes: compile, load, filter, attach, decode, health (``BccProbe``).

A probe plugin subclasses :class:`BccProbe`, names its ``.bpf.c`` (shipped as package data under
``<package>/bpf/``, a symlink to the repository's ``bpf/`` directory), lists the tracepoints it attaches and the
decoders of its event structs, and gets the rest (compiling, filling the maps and attaching run in a short-lived
child, ``ravn_core.bpf_loader``; the daemon keeps only the fds):

- environment checks that raise :class:`UnusableEnvironment` (exit 3) naming the fix (root/CAP_BPF, tracefs,
  kernel headers, bcc), and compile/load errors reduced to their first error line and file;
- ``-I bpf/include`` and ``-D`` cflags (ring size, map sizes, which filters are compiled in) - never text edits;
- the in-kernel filters of ``bpf/include/ravn_common.bpf.h`` filled from :class:`ProbeFilters`; RAVN's own pid
  and all its descendants always excluded; the pid -> ppid map seeded from /proc;
- the ring buffer read directly (:class:`RingReader`: mmap + epoll, no per-record ctypes callback), each record
  turned into a flat event dict by the probe's decoders (``ravn_core/events.py`` schema; ``evt.ts`` is wall-clock
  ns = kernel monotonic + an offset taken at start);
- ``poll(timeout_ms)`` returning the batch, ``stop()`` detaching everything, ``health()`` with counters, and
  ``dump()`` for ``ravn --dump-bpf``.

The ctypes mirrors of ``bpf/include/ravn_events.h`` live next to their decoders (the header's here, each probe's
in its ``decode.py``); :func:`check_abi` compiles the header with the host C compiler and compares every field.
Per-event Python work is the budget: decoders unpack the record with one ``struct.Struct`` derived from the
ctypes mirror (:func:`unpacker`) and build one dict; a probe with one fixed-size record type can decode whole runs
of records at once (:meth:`BccProbe.fast_decoder`).
"""

from __future__ import annotations

import ctypes
import gc
import importlib.resources
import importlib.util
import mmap
import os
import select
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import Field, field_validator

from ravn_core.bpf_loader import LoadedBpf, fdinfo, load_in_child
from ravn_core.components import Health, PluginConfig, RuntimeContext, Source
from ravn_core.errors import UnusableEnvironment
from ravn_core.events import EVENT_TYPES, Batch, Event

if TYPE_CHECKING:
    from bcc import BPF

# ------------------------------------------------------------------------------------------------ ABI mirrors

#: enum ravn_event_type of ravn_events.h; one id per EVENT_TYPES entry (the ABI test checks both directions).
EVENT_TYPE_IDS: Final[dict[str, int]] = {
    "syscall": 1, "syscall_summary": 2,
    "connect": 3, "accept": 4, "close": 5, "udp_send": 6, "bind": 7, "listen": 8,
    "exec": 9, "fork": 10, "exit": 11, "cred": 12, "ptrace": 13, "module": 14, "capable": 15,
    "memfd_create": 16, "bpf": 17, "mount": 18, "unshare": 19, "setns": 20, "dup": 21,
    "open": 22, "unlink": 23, "rename": 24, "chmod": 25, "chown": 26, "link": 27, "symlink": 28, "truncate": 29,
    "setsid": 30, "process_vm": 31, "prctl": 32, "socket": 33,
}
#: C enum constant of each event type, for the ABI test (RAVN_EVT_<NAME upper>).
EVENT_TYPE_CONSTANTS: Final[dict[str, str]] = {name: f"RAVN_EVT_{name.upper()}" for name in EVENT_TYPE_IDS}
#: id -> event type name; index 0 and unknown ids map to "?"
TYPE_NAMES: Final[list[str]] = ["?"] * (max(EVENT_TYPE_IDS.values()) + 1)
for _name, _id in EVENT_TYPE_IDS.items():
    TYPE_NAMES[_id] = _name

COMM_LEN: Final = 16
HDR_TYPE_OFFSET: Final = 28  # offsetof(struct ravn_hdr, type); the ABI test checks it


class RavnHdr(ctypes.Structure):
    """Mirror of ``struct ravn_hdr`` (56 bytes), the first member of every event struct."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


#: Every mirror of the core header, C struct name -> ctypes type; probes pass theirs to check_abi too.
CORE_MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {"ravn_hdr": RavnHdr}

_SCALAR_CODES: Final[dict[Any, str]] = {
    ctypes.c_uint64: "Q", ctypes.c_int64: "q", ctypes.c_uint32: "I", ctypes.c_int32: "i",
    ctypes.c_uint16: "H", ctypes.c_int16: "h", ctypes.c_uint8: "B", ctypes.c_int8: "b",
    ctypes.c_char: "c", ctypes.c_bool: "?",
}


def _flat_fields(ctype: type[ctypes.Structure], base: int = 0, prefix: str = "") -> Iterable[tuple[str, Any, int]]:
    """(dotted name, ctypes type, absolute offset) of every leaf field; nested structs are flattened."""
    for name, ftype, *_ in ctype._fields_:
        off = base + getattr(ctype, name).offset
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure):
            yield from _flat_fields(ftype, off, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ftype, off


def unpacker(ctype: type[ctypes.Structure]) -> struct.Struct:
    """A little-endian ``struct.Struct`` that unpacks ``ctype``'s leaf fields in declaration order.

    ``char[N]`` and ``u8[N]`` come out as one ``bytes`` of N; other arrays as N values; nested structs (the
    header) are flattened, so every event's tuple starts with the 9 header values
    (ts_ns, pid, tid, ppid, uid, gid, type, cgroup_id, comm).
    """
    fmt, pos = ["<"], 0
    for name, ftype, off in _flat_fields(ctype):
        if off < pos:
            raise TypeError(f"{ctype.__name__}.{name}: overlapping field at {off}")
        if off > pos:
            fmt.append(f"{off - pos}x")
        if hasattr(ftype, "_length_"):
            elem, n = ftype._type_, ftype._length_
            code = "s" if elem in (ctypes.c_char, ctypes.c_uint8) else _SCALAR_CODES[elem]
            fmt.append(f"{n}{code}")
        else:
            fmt.append(_SCALAR_CODES[ftype])
        pos = off + ctypes.sizeof(ftype)
    if ctypes.sizeof(ctype) > pos:
        fmt.append(f"{ctypes.sizeof(ctype) - pos}x")
    s = struct.Struct("".join(fmt))
    if s.size != ctypes.sizeof(ctype):
        raise TypeError(f"{ctype.__name__}: unpacker size {s.size} != sizeof {ctypes.sizeof(ctype)}")
    return s


#: the dirfd of a path relative to the working directory (openat, execveat, ...)
AT_FDCWD: Final = -100


def normalize_path(path: str) -> str:
    """An absolute path without empty, "." or ".." components, lexically (as ``os.path.normpath``, but with one
    leading slash where POSIX lets normpath keep two)."""
    p = os.path.normpath(path)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def resolve_path(pid: int, dirfd: int, path: str) -> str | None:
    """A relative ``path`` from a record made absolute the way the kernel saw it from ``pid``: joined with
    ``/proc/<pid>/cwd`` (``dirfd`` AT_FDCWD) or ``/proc/<pid>/fd/<dirfd>``. None when /proc no longer has the
    process or the fd, or the fd is not a directory. Read when the record is decoded, so a process that changed
    directory in between is resolved against its new one."""
    try:
        base = os.readlink(f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}")
    except OSError:
        return None
    if not base.startswith("/"):
        return None  # "pipe:[..]", "anon_inode:..": not a directory
    return os.path.normpath(os.path.join(base, path))


def bpf_dir() -> Path:
    """The repository's ``bpf/`` directory (for tests and tools; probes use their package data)."""
    return Path(__file__).resolve().parent.parent / "bpf"


def check_abi(mirrors: dict[str, type[ctypes.Structure]], include_dir: Path | None = None,
              enum_constants: dict[str, int] | None = None) -> list[str]:
    """Compile ``ravn_events.h`` with the host C compiler and compare it with the ctypes mirrors.

    Returns the list of mismatches (empty when the layouts agree): struct sizes, every leaf field's offset and
    size (nested structs flattened), and ``enum_constants`` (C constant -> expected value).
    Raises ``RuntimeError`` when no C compiler works.
    """
    include_dir = include_dir or bpf_dir() / "include"
    lines = ["#define RAVN_USERSPACE_ABI 1", '#include "ravn_events.h"', "#include <stdio.h>",
             "#include <stddef.h>", "int main(void) {"]
    expected: dict[str, int] = {}
    for cname, ctype in mirrors.items():
        lines.append(f'printf("%s %zu\\n", "sizeof {cname}", sizeof(struct {cname}));')
        expected[f"sizeof {cname}"] = ctypes.sizeof(ctype)
        for dotted, ftype, off in _flat_fields(ctype):
            lines.append(f'printf("%s %zu\\n", "offsetof {cname}.{dotted}", offsetof(struct {cname}, {dotted}));')
            lines.append(f'printf("%s %zu\\n", "sizeof {cname}.{dotted}", '
                         f"sizeof(((struct {cname} *)0)->{dotted}));")
            expected[f"offsetof {cname}.{dotted}"] = off
            expected[f"sizeof {cname}.{dotted}"] = ctypes.sizeof(ftype)
    for const, value in (enum_constants or {}).items():
        lines.append(f'printf("%s %lld\\n", "enum {const}", (long long){const});')
        expected[f"enum {const}"] = value
    lines += ["return 0;", "}"]
    with tempfile.TemporaryDirectory(prefix="ravn-abi-") as tmp:
        src, exe = Path(tmp, "abi.c"), Path(tmp, "abi")
        src.write_text("\n".join(lines) + "\n")
        cc = os.environ.get("CC", "cc")
        res = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(include_dir), "-o", str(exe), str(src)],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} could not compile the ABI check: {res.stderr.strip()}")
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10, check=True).stdout
    got = {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}
    return [f"{k}: C says {got.get(k)}, Python says {v}" for k, v in expected.items() if got.get(k) != v]


# ----------------------------------------------------------------------------------------------- config models


class ProbeFilters(PluginConfig):
    """In-kernel excludes, embedded by every probe config as ``filters``. RAVN's own pid is always excluded."""

    exclude_pids: list[int] = Field(default_factory=list,
                                    description="process ids (tgids) never reported, with all their descendants")
    exclude_comms: list[str] = Field(default_factory=list,
                                     description="task comms never reported (exact match, at most 15 characters)")
    exclude_uids: list[int] = Field(default_factory=list, description="real uids never reported")
    exclude_cgroups: list[int | str] = Field(
        default_factory=list,
        description="cgroup v2 ids, or cgroup paths (absolute, or relative to the cgroup2 mount), never reported")

    @field_validator("exclude_comms")
    @classmethod
    def _comm_len(cls, v: list[str]) -> list[str]:
        for c in v:
            if not c or len(c.encode()) > COMM_LEN - 1:
                raise ValueError(f"comm {c!r} must be 1-15 bytes (the kernel truncates comm to 15)")
        return v


class BccProbeConfig(PluginConfig):
    """Keys every BCC probe accepts; a probe's config model subclasses it and adds its own."""

    ring_buffer_kb: int = Field(1024, description="BPF ring buffer size in KiB (power of two, at least 4)")
    max_processes: int = Field(32768, ge=64, description="entries of the pid -> ppid map (LRU)")
    max_excluded: int = Field(4096, ge=16, description="entries of the excluded-tgid map (RAVN, its children, "
                                                       "configured pids and their descendants)")
    max_batch: int = Field(16384, ge=1, description="at most this many events returned by one poll")
    filters: ProbeFilters = Field(default_factory=ProbeFilters, description="in-kernel excludes")

    @field_validator("ring_buffer_kb")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v < 4 or v & (v - 1):
            raise ValueError("ring_buffer_kb must be a power of two >= 4 (whole pages)")
        return v


# ------------------------------------------------------------------------------------------------ environment

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TRACEFS = Path("/sys/kernel/tracing")


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_environment() -> None:
    """Raise UnusableEnvironment naming the fix when this machine/process cannot load BCC probes."""
    caps = _effective_caps()
    has_bpf = bool(caps & (1 << CAP_SYS_ADMIN)) or (bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON)))
    if not has_bpf:
        raise UnusableEnvironment(
            "loading BPF probes needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE): run ravn as root")
    if not (TRACEFS / "events").is_dir():
        raise UnusableEnvironment(
            f"tracefs is not mounted at {TRACEFS}: run `mount -t tracefs nodev {TRACEFS}` (or `make setup`)")
    kbuild = Path("/lib/modules") / os.uname().release / "build"
    if not os.environ.get("BCC_KERNEL_SOURCE") and not (kbuild / "include").exists():
        raise UnusableEnvironment(f"no kernel headers at {kbuild} (BCC compiles against them): run `make setup`")
    if importlib.util.find_spec("bcc") is None:  # not imported here: the loader child imports it
        raise UnusableEnvironment("the bcc Python package is not importable: run `make setup` "
                                  "(Debian python3-bpfcc, linked into the venv)")


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


def read_proc_ppids() -> dict[int, int]:
    """tgid -> ppid of every process in /proc right now."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        out[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return out


def descendants(roots: Iterable[int], ppids: dict[int, int]) -> set[int]:
    """``roots`` and every process below them in the ``ppids`` tree."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        stack.extend(children.get(p, ()))
    return seen


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


def cgroup_id(spec: int | str) -> int:
    """A cgroup v2 id from an id or a path: bpf_get_current_cgroup_id() is the inode of the cgroup's directory.

    A relative path is taken under the cgroup v2 mount (``system.slice/ssh.service``)."""
    if isinstance(spec, int):
        return spec
    path = Path(spec) if spec.startswith("/") else cgroup2_root() / spec
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise UnusableEnvironment(f"filters.exclude_cgroups: cannot stat {path}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------------------ ring reader

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

    def wait(self, timeout_ms: int) -> None:
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


# ------------------------------------------------------------------------------------------------- base probe

#: record -> event. The record is bytes-like: a memoryview slice of the ring of exactly the record's size (use
#: ``struct.unpack``; do not keep it or call bytes methods on it). Typed ``bytes`` so decoders stay simple to test.
Decoder = Callable[[bytes], Event]
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
    :cvar package: import package whose ``bpf/`` directory holds ``bpf_file`` (a symlink to the repo's bpf/).
    :cvar bpf_file: the probe's ``.bpf.c`` file name.
    :ivar bpf: the probe's programs, links and maps (:class:`LoadedBpf`, fds only: compiled and attached in a
        short-lived child, see ``bpf_loader``) between start() and stop(), else None.
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
        self._expected: list[tuple[str, str]] = []
        self._ts_offset = 0
        self._rate_mark = (time.monotonic(), 0)
        self._ring: RingReader | None = None

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
        """The probe's ``.bpf.c`` inside its package data (resolving the bpf/ symlink)."""
        ref = importlib.resources.files(self.package or type(self).__module__.split(".")[0]) / "bpf"
        path = Path(str(ref)) / self.bpf_file
        if not path.is_file():
            raise UnusableEnvironment(f"{self.plugin}: BPF source {path} is missing (package data not installed; "
                                      "reinstall the plugin)")
        return path.resolve()

    def cflags(self) -> list[str]:
        cfg, f = self.config, self.config.filters
        return [
            f"-I{self.source_path().parent / 'include'}",
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
        common = path.parent / "include" / "ravn_common.bpf.h"
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
        """Compile, fill the filters and the probe's maps, attach. Runs in the loader child (``bpf_loader``)."""
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
        ring = self._ring
        if ring is None:
            time.sleep(timeout_ms / 1000)
            return []
        if not self._pending and not ring.consume():
            ring.wait(timeout_ms)
            ring.consume()
        return self._take()

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
            bpf.close()

    def close(self) -> None:
        self._teardown()

    # ------------------------------------------------------------------ health
    def drops(self) -> int:
        """Records the kernel could not put in the ring buffer (sum of the per-CPU ravn_drops counter)."""
        bpf = self.bpf
        if bpf is None:
            return 0
        return int(sum(bpf["ravn_drops"][0]))

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


def type_ids_match_schema() -> list[str]:
    """Event types that have no id or ids that name no event type (empty when EVENT_TYPE_IDS is complete)."""
    missing = [f"no id for event type {t!r}" for t in EVENT_TYPES if t not in EVENT_TYPE_IDS]
    extra = [f"id for unknown event type {t!r}" for t in EVENT_TYPE_IDS if t not in EVENT_TYPES]
    dup = len(set(EVENT_TYPE_IDS.values())) != len(EVENT_TYPE_IDS)
    return missing + extra + (["duplicate ids"] if dup else [])

