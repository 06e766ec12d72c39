"""Compile and attach BPF programs in a short-lived child process; the daemon keeps only file descriptors.

BCC compiles with clang/LLVM inside the process that calls it. Once loaded, libLLVM, libclang-cpp and BCC's
module objects stay mapped and resident for the life of that process: about 90 MB of library text and tens of
MB of compiler heap in a daemon whose own work needs neither. So :func:`load_in_child` forks; the child imports
bcc, compiles, loads, fills the maps and attaches the tracepoints (the probe's own code, unchanged), then sends
every program, map and tracepoint-link fd back over a Unix socket (``SCM_RIGHTS``) and exits. The daemon holds
the only references: the programs stay attached while it holds the link (perf event) fds and go away when it
closes them or dies. It never imports bcc.

In the daemon, :class:`LoadedBpf` is what ``BccProbe.bpf`` holds: program fds by function name, link fds by
tracepoint, and maps by name as :class:`FdMap` (lookup/update/delete/iterate through the ``bpf(2)`` syscall, with
the key and value types taken from the map's sizes: 1/2/4/8 bytes as unsigned ints, else a byte array; per-CPU
maps give one value per possible CPU).

Forking a threaded process is safe here because the child only runs the loader and leaves with ``os._exit``: it
takes no lock another thread could hold (no logging, no stdout; BCC writes compiler errors to fd 2, which the
loader captures), and a hung child is killed after ``timeout_s``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ravn_core.errors import UnusableEnvironment

if TYPE_CHECKING:
    from bcc import BPF

_SYS_BPF: Final = 321  # x86_64
_LOOKUP, _UPDATE, _DELETE, _NEXT_KEY = 1, 2, 3, 4
_LOOKUP_BATCH, _DELETE_BATCH = 24, 27
_ENOENT, _EINVAL, _ENOSPC, _EOPNOTSUPP, _ENOTSUPP = 2, 22, 28, 95, 524
_PERCPU_TYPES: Final = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
_FDS_PER_MESSAGE: Final = 200  # the kernel takes at most 253 (SCM_MAX_FD) per message
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    """The map-element part of ``union bpf_attr``."""

    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    """The batch part of ``union bpf_attr`` (BPF_MAP_LOOKUP_BATCH, BPF_MAP_DELETE_BATCH)."""

    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


_UINTS: Final[dict[int, Any]] = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def _ctype(size: int) -> Any:
    return _UINTS.get(size) or ctypes.c_ubyte * size


def fdinfo(fd: int) -> dict[str, str]:
    """``/proc/self/fdinfo/<fd>`` as a dict (``map_type``, ``key_size``, ``prog_id``, ...)."""
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return sum(int(b) - int(a) + 1 if b else 1
               for a, _, b in (part.partition("-") for part in text.split(",")))


class FdMap:
    """A BPF map held by fd, with the part of BCC's table interface RAVN uses (``m[k]``, ``m[k] = v``, ``del
    m[k]``, ``keys()``, ``items()``). Keys and values are ctypes objects (or ints, or bytes of the exact size)."""

    def __init__(self, name: str, fd: int) -> None:
        info = fdinfo(fd)
        self.name, self.fd = name, fd
        self.map_type = int(info["map_type"])
        self.key_size, self.value_size = int(info["key_size"]), int(info["value_size"])
        self.percpu = self.map_type in _PERCPU_TYPES
        self.Key, self.Leaf = _ctype(self.key_size), _ctype(self.value_size)
        self._ncpu = possible_cpus() if self.percpu else 1
        self._stride = (self.value_size + 7) & ~7 if self.percpu else self.value_size

    def _buf(self, obj: Any, size: int, ctype: Any) -> Any:
        if isinstance(obj, int):
            obj = ctype(obj)
        raw = bytes(obj)
        if len(raw) != size:
            raise ValueError(f"map {self.name}: {len(raw)} bytes given, the map's entries have {size}")
        return ctypes.create_string_buffer(raw, size)

    def _call(self, cmd: int, key: Any, value: Any = None) -> int:
        attr = _ElemAttr(self.fd, 0, ctypes.addressof(key) if key is not None else 0,
                         ctypes.addressof(value) if value is not None else 0, 0)
        if _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
            return ctypes.get_errno()
        return 0

    def _lookup(self, kbuf: Any) -> Any | None:
        vbuf = ctypes.create_string_buffer(self._stride * self._ncpu)
        err = self._call(_LOOKUP, kbuf, vbuf)
        if err:
            if err == 2:  # ENOENT
                return None
            raise OSError(err, f"bpf map {self.name}: lookup: {os.strerror(err)}")
        raw = vbuf.raw
        if self.percpu:
            return [self.Leaf.from_buffer_copy(raw, i * self._stride) for i in range(self._ncpu)]
        return self.Leaf.from_buffer_copy(raw)

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(self._buf(key, self.key_size, self.Key))
        if value is None:
            raise KeyError(key)
        if self.percpu:
            return [v.value if hasattr(v, "value") else v for v in value]
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.percpu:
            raise NotImplementedError(f"bpf map {self.name}: per-CPU update is not supported")
        err = self._call(_UPDATE, self._buf(key, self.key_size, self.Key),
                         self._buf(value, self.value_size, self.Leaf))
        if err:
            raise OSError(err, f"bpf map {self.name}: update: {os.strerror(err)}")

    def __delitem__(self, key: Any) -> None:
        err = self._call(_DELETE, self._buf(key, self.key_size, self.Key))
        if err == 2:
            raise KeyError(key)
        if err:
            raise OSError(err, f"bpf map {self.name}: delete: {os.strerror(err)}")

    def keys(self) -> Iterator[Any]:
        key = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while self._call(_NEXT_KEY, key, nxt) == 0:
            yield self.Key.from_buffer_copy(nxt.raw)
            key = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key in self.keys():
            value = self._lookup(self._buf(key, self.key_size, self.Key))
            if value is not None:  # deleted since the key was listed
                yield key, value


    def read_all(self, chunk: int = 256) -> tuple[bytes, bytes, int]:
        """Every entry at once: (keys, values) each packed back to back as the kernel stores them, and how many.

        BPF_MAP_LOOKUP_BATCH, ``chunk`` entries per ``bpf(2)`` call instead of two calls per entry; maps whose
        kernel has no batch lookup are read key by key. Not for per-CPU maps."""
        if self.percpu:
            raise NotImplementedError(f"bpf map {self.name}: read_all of a per-CPU map")
        ks, vs = self.key_size, self.value_size
        keys: list[bytes] = []
        values: list[bytes] = []
        total = 0
        token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
        kbuf, vbuf = ctypes.create_string_buffer(ks * chunk), ctypes.create_string_buffer(vs * chunk)
        first = True
        while True:
            attr = _BatchAttr(0 if first else ctypes.addressof(token_in), ctypes.addressof(token_out),
                              ctypes.addressof(kbuf), ctypes.addressof(vbuf), chunk, self.fd, 0, 0)
            err = 0
            if _libc.syscall(_SYS_BPF, _LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
                err = ctypes.get_errno()
            if err == _ENOSPC and attr.count == 0:  # one hash bucket holds more than a chunk: a bigger one
                chunk *= 2
                kbuf, vbuf = ctypes.create_string_buffer(ks * chunk), ctypes.create_string_buffer(vs * chunk)
                continue
            if err and err != _ENOENT:
                if first and err in (_EINVAL, _EOPNOTSUPP, _ENOTSUPP):
                    return self._read_all_by_key()
                raise OSError(err, f"bpf map {self.name}: lookup batch: {os.strerror(err)}")
            n = attr.count
            if n:
                keys.append(ctypes.string_at(kbuf, ks * n))
                values.append(ctypes.string_at(vbuf, vs * n))
                total += n
            if err == _ENOENT:  # the end of the map
                return b"".join(keys), b"".join(values), total
            ctypes.memmove(token_in, token_out, 8)
            first = False

    def _read_all_by_key(self) -> tuple[bytes, bytes, int]:
        pairs = [(bytes(k), bytes(v)) for k, v in self.items()]
        return b"".join(k for k, _ in pairs), b"".join(v for _, v in pairs), len(pairs)

    def delete_many(self, keys: bytes, count: int) -> None:
        """Delete ``count`` keys packed back to back (as read_all gives them) in one BPF_MAP_DELETE_BATCH; keys
        gone meanwhile are skipped. Falls back to one delete per key."""
        if not count:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        attr = _BatchAttr(0, 0, ctypes.addressof(kbuf), 0, count, self.fd, 0, 0)
        done = 0
        if _libc.syscall(_SYS_BPF, _DELETE_BATCH, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
            return
        done = attr.count  # the batch stops at the first key that fails (one gone meanwhile): the rest one by one
        ks = self.key_size
        for i in range(done, count):
            err = self._call(_DELETE, ctypes.create_string_buffer(keys[i * ks:(i + 1) * ks], ks))
            if err and err != _ENOENT:
                raise OSError(err, f"bpf map {self.name}: delete: {os.strerror(err)}")


class LoadedBpf:
    """A probe's kernel objects as the daemon holds them: fds of programs, tracepoint links and maps."""

    def __init__(self, programs: dict[str, int], links: dict[str, int], maps: dict[str, int]) -> None:
        self.programs = programs  #: BPF function name -> program fd
        self.links = links  #: "category:event" -> perf event fd (the attachment)
        self.maps = {name: FdMap(name, fd) for name, fd in maps.items()}

    def __getitem__(self, name: str | bytes) -> FdMap:
        return self.maps[name.decode() if isinstance(name, bytes) else name]

    def detach(self, tracepoint: str) -> None:
        """Detach one tracepoint (close its link)."""
        os.close(self.links.pop(tracepoint))

    def close(self) -> None:
        """Detach everything and drop the programs and maps (the kernel frees them when no one refers to them)."""
        links, self.links = list(self.links.values()), {}
        # Closing a tracepoint's perf event waits for an RCU grace period (tens of ms): one by one, a probe with
        # 70 tracepoints takes seconds to stop. The closes release the GIL, so overlap them.
        if len(links) > 2:
            with ThreadPoolExecutor(max_workers=min(32, len(links))) as pool:
                list(pool.map(os.close, links))
        else:
            for fd in links:
                os.close(fd)
        for fd in [*self.programs.values(), *(m.fd for m in self.maps.values())]:
            os.close(fd)
        self.programs, self.maps = {}, {}


# ------------------------------------------------------------------------------------------------ the child
def _map_names(bpf: BPF) -> list[str]:
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return [lib.bpf_table_name(bpf.module, i).decode() for i in range(lib.bpf_num_tables(bpf.module))]


def _send(sock: socket.socket, header: dict[str, Any], fds: list[int]) -> None:
    sock.sendall(json.dumps(header).encode())
    for i in range(0, len(fds), _FDS_PER_MESSAGE):
        socket.send_fds(sock, [b"f"], fds[i:i + _FDS_PER_MESSAGE])


def _child(sock: socket.socket, load: Callable[[], BPF]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        bpf = load()
        from bcc.libbcc import lib

        maps = {name: lib.bpf_table_fd(bpf.module, name.encode()) for name in _map_names(bpf)}
        programs = {(k.decode() if isinstance(k, bytes) else k): f.fd for k, f in bpf.funcs.items()}
        links = {(k.decode() if isinstance(k, bytes) else k): fd for k, fd in bpf.tracepoint_fds.items()}
        header = {"maps": list(maps), "programs": list(programs), "links": list(links)}
        _send(sock, header, [*maps.values(), *programs.values(), *links.values()])
        sock.recv(1)  # the daemon has the fds
    except UnusableEnvironment as exc:
        sock.sendall(json.dumps({"error": str(exc)}).encode())
    except BaseException as exc:
        sock.sendall(json.dumps({"error": f"BPF loader failed: {type(exc).__name__}: {exc}"}).encode())


def load_in_child(load: Callable[[], BPF], what: str, timeout_s: float = 180.0) -> LoadedBpf:
    """Run ``load()`` (compile, fill maps, attach; returns the ``bcc.BPF``) in a forked child and take its fds.

    Raises UnusableEnvironment with the child's message if loading failed, or naming ``what`` if the child died
    or did not answer within ``timeout_s``."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
        code = 1
        try:
            parent.close()
            _child(child, load)
            code = 0
        finally:
            os._exit(code)
    child.close()
    received: list[int] = []
    try:
        parent.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            raw = parent.recv(1 << 20)
            header = json.loads(raw) if raw else {"error": f"{what}: the BPF loader process died"}
            if "error" in header:
                raise UnusableEnvironment(str(header["error"]))
            names = [*header["maps"], *header["programs"], *header["links"]]
            while len(received) < len(names):
                parent.settimeout(max(0.1, deadline - time.monotonic()))
                _msg, fds, _flags, _addr = socket.recv_fds(parent, 16, _FDS_PER_MESSAGE)
                if not fds:
                    raise UnusableEnvironment(f"{what}: the BPF loader process died while sending")
                received += fds
            parent.sendall(b"k")
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise UnusableEnvironment(f"{what}: the BPF loader did not finish within {timeout_s:.0f} s") from None
    except BaseException:
        for fd in received:
            os.close(fd)
        raise
    finally:
        parent.close()
        os.waitpid(pid, 0)
    taken = iter(received)
    maps = {name: next(taken) for name in header["maps"]}
    programs = {name: next(taken) for name in header["programs"]}
    links = {name: next(taken) for name in header["links"]}
    try:
        return LoadedBpf(programs, links, maps)
    except BaseException:
        for fd in received:
            os.close(fd)
        raise
