"""The x86_64 syscall table, bundled as ``data/syscall_64.tbl`` (copied from the kernel tree)."""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

MAX_NR = 512  # RAVN_SC_MAX in ravn_events.h: every common/64 number is below it


@dataclass(frozen=True)
class Syscall:
    nr: int
    name: str
    entry: str  # kernel entry point, e.g. sys_newuname

    @property
    def tracepoint(self) -> str:
        """The syscalls:sys_enter_<x> event name part (<x> is the entry point without sys_: uname -> newuname)."""
        return self.entry.removeprefix("sys_")


@functools.cache
def table() -> dict[str, Syscall]:
    """name -> Syscall for the native (common and 64) ABI."""
    text = importlib.resources.files(__package__).joinpath("data/syscall_64.tbl").read_text()
    out: dict[str, Syscall] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[1] not in ("common", "64") or len(parts) < 4:
            continue
        out[parts[2]] = Syscall(int(parts[0]), parts[2], parts[3])
    return out


@functools.cache
def names_by_nr() -> tuple[str, ...]:
    """Index = syscall number (0..MAX_NR-1); unknown numbers are "nr<N>"."""
    names = [f"nr{i}" for i in range(MAX_NR)]
    for sc in table().values():
        if sc.nr < MAX_NR:
            names[sc.nr] = sc.name
    return tuple(names)


#: syscalls that never return to the caller: with return values on they are emitted at entry
NORETURN = frozenset({"exit", "exit_group", "rt_sigreturn"})
