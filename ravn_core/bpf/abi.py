"""The user-space side of ``bpf/include/ravn_events.h``: event type ids, the header's ctypes mirror, the
``struct.Struct`` unpackers decoders use, and :func:`check_abi`, which compiles the header with the host C compiler
and compares it with the mirrors field by field (each probe's mirrors live in its ``decode.py``)."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from ravn_core.events import EVENT_TYPES

#: enum ravn_event_type of ravn_events.h; one id per EVENT_TYPES entry (the ABI test checks both directions).
EVENT_TYPE_IDS: Final[dict[str, int]] = {
    "syscall": 1, "syscall_summary": 2,
    "connect": 3, "accept": 4, "close": 5, "udp_send": 6, "bind": 7, "listen": 8,
    "exec": 9, "fork": 10, "exit": 11, "cred": 12, "ptrace": 13, "module": 14, "capable": 15,
    "memfd_create": 16, "bpf": 17, "mount": 18, "unshare": 19, "setns": 20, "dup": 21,
    "open": 22, "unlink": 23, "rename": 24, "chmod": 25, "chown": 26, "link": 27, "symlink": 28, "truncate": 29,
    "setsid": 30, "process_vm": 31, "prctl": 32, "socket": 33, "chattr": 34,
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


def bpf_dir() -> Path:
    """The repository's ``bpf/`` directory (for tests and tools; probes use their package data)."""
    return Path(__file__).resolve().parents[2] / "bpf"


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



def type_ids_match_schema() -> list[str]:
    """Event types that have no id or ids that name no event type (empty when EVENT_TYPE_IDS is complete)."""
    missing = [f"no id for event type {t!r}" for t in EVENT_TYPES if t not in EVENT_TYPE_IDS]
    extra = [f"id for unknown event type {t!r}" for t in EVENT_TYPE_IDS if t not in EVENT_TYPES]
    dup = len(set(EVENT_TYPE_IDS.values())) != len(EVENT_TYPE_IDS)
    return missing + extra + (["duplicate ids"] if dup else [])
