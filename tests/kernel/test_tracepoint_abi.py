"""The syscall tracepoint records of bpf/include/ravn_events.h (struct ravn_sys_enter / ravn_sys_exit, read by every
probe's programs) agree with the running kernel's format files, for both families the probes attach to."""

from __future__ import annotations

import ctypes
import re

import pytest

from ravn_core.bpf.abi import check_abi
from ravn_core.bpf.env import TRACEFS
from ravn_core.testing import require_kernel


class SysEnter(ctypes.Structure):
    """What the header declares as struct ravn_sys_enter (checked against the C by check_abi)."""

    _fields_ = [("__common", ctypes.c_uint64), ("nr", ctypes.c_int32), ("__pad", ctypes.c_int32),
                ("a", ctypes.c_uint64 * 6)]


class SysExit(ctypes.Structure):
    """What the header declares as struct ravn_sys_exit."""

    _fields_ = [("__common", ctypes.c_uint64), ("nr", ctypes.c_int32), ("__pad", ctypes.c_int32),
                ("ret", ctypes.c_int64)]


def fields(event: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of the tracepoint's own fields (the common_* ones left out), in format-file order."""
    text = (TRACEFS / "events" / event / "format").read_text()
    out = {m[1]: (int(m[2]), int(m[3]))
           for m in re.finditer(r"field:[^;]*?(\w+)(?:\[\d+\])?;\s*offset:(\d+);\s*size:(\d+);", text)}
    return {k: v for k, v in out.items() if not k.startswith("common_")}


def test_header_declares_the_records_the_tests_mirror() -> None:
    assert check_abi({"ravn_sys_enter": SysEnter, "ravn_sys_exit": SysExit}) == []


@pytest.mark.kernel
@pytest.mark.parametrize("syscall", ["setsid", "openat", "connect", "execveat", "process_vm_readv"])
def test_syscalls_family_matches(syscall: str) -> None:
    """syscalls:sys_enter_<name> / sys_exit_<name>: int __syscall_nr at 8, each argument in an 8-byte slot."""
    require_kernel()
    enter = fields(f"syscalls/sys_enter_{syscall}")
    assert enter.pop("__syscall_nr") == (SysEnter.nr.offset, SysEnter.nr.size)
    assert len(enter) <= 6
    assert list(enter.values()) == [(SysEnter.a.offset + 8 * i, 8) for i in range(len(enter))], enter
    assert fields(f"syscalls/sys_exit_{syscall}") == {"__syscall_nr": (SysExit.nr.offset, SysExit.nr.size),
                                                      "ret": (SysExit.ret.offset, SysExit.ret.size)}


@pytest.mark.kernel
def test_raw_syscalls_family_matches() -> None:
    """raw_syscalls:sys_enter / sys_exit: long id at 8 (its low 32 bits are nr on little-endian x86_64)."""
    require_kernel()
    assert fields("raw_syscalls/sys_enter") == {"id": (SysEnter.nr.offset, 8),
                                                "args": (SysEnter.a.offset, SysEnter.a.size)}
    assert fields("raw_syscalls/sys_exit") == {"id": (SysExit.nr.offset, 8),
                                               "ret": (SysExit.ret.offset, SysExit.ret.size)}
