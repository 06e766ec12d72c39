"""Events -> model tokens (feature schema ``ravn-token-lm`` version 1).

A process's token stream is, in arrival order:
- a syscall: its x86_64 number as a string (``"59"``), from ``syscall`` events (``syscall.nr``) or from
  ``syscall_summary`` events (``syscall.seq``, oldest first; ``"@gap"`` first when the summary counted more
  syscalls than its sequence holds, i.e. some were not kept);
- any other probe event: ``"@" + evt.type`` with a few coarse refinements that matter for intrusions:
  ``@exec:shell`` (sh, bash, dash, zsh, ksh, busybox), ``@exec:tmp`` (exec from /tmp, /dev/shm, /var/tmp or a
  memfd), ``@open:w`` (open for writing), ``@connect:fail`` (refused, unreachable: ret < 0 and not EINPROGRESS),
  ``@exit``. Nothing else of the event (paths, addresses, argv) enters the model.

Changing anything here changes what a trained model means: bump FEATURE_VERSION in model.py with it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable

from ravn_core.events import Event

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "busybox", "ash", "fish", "tcsh", "csh"})
TMP_PREFIXES = ("/tmp/", "/dev/shm/", "/var/tmp/", "/run/shm/")
EINPROGRESS = -115

#: token -> ATT&CK technique guessed when the token is in a window that scored high
TECHNIQUE_HINTS = {
    "@exec:shell": "T1059.004",
    "@exec:tmp": "T1204.002",
    "@ptrace": "T1055.008",
    "@module": "T1547.006",
    "@memfd_create": "T1620",
    "@cred": "T1548",
    "@bpf": "T1014",
    "@connect:fail": "T1046",
}


# One shared string object per token: a process keeps its pending tokens, and a fresh str per syscall would
# cost ~50 bytes each (16,384 processes x 200 tokens = 160 MB instead of 26 MB of list slots).
_NR = tuple(str(i) for i in range(1024))
_EVT: dict[str, str] = {}


def _nr(n: int) -> str:
    return _NR[n] if 0 <= n < 1024 else str(n)


def event_tokens(ev: Event) -> list[str]:
    """The tokens one event contributes to its process's stream (often one, possibly none)."""
    t = ev.get("evt.type")
    if t == "syscall":
        nr = ev.get("syscall.nr")
        return [_nr(nr)] if isinstance(nr, int) else []
    if t == "syscall_summary":
        seq = ev.get("syscall.seq") or []
        toks = [_nr(n) for n in seq if isinstance(n, int)]
        total = ev.get("syscall.total")
        if isinstance(total, int) and total > len(toks) and toks:
            return ["@gap", *toks]
        return toks
    if not isinstance(t, str):
        return []
    if t == "exec":
        fn = str(ev.get("exec.filename") or "")
        base = fn.rsplit("/", 1)[-1]
        if ev.get("exec.memfd") or fn.startswith(TMP_PREFIXES):
            return ["@exec:tmp"]
        if base in SHELLS:
            return ["@exec:shell"]
        return ["@exec"]
    if t == "open":
        return ["@open:w" if ev.get("file.write") else "@open"]
    if t == "connect":
        ret = ev.get("net.ret", 0)
        return ["@connect:fail" if isinstance(ret, int) and ret < 0 and ret != EINPROGRESS else "@connect"]
    tok = _EVT.get(t)
    if tok is None:
        tok = _EVT[t] = sys.intern("@" + t) if len(_EVT) < 1024 else "@" + t
    return [tok]


def sequence_of(events: Iterable[Event]) -> list[str]:
    """All tokens of events (one process's, in order)."""
    out: list[str] = []
    for ev in events:
        out.extend(event_tokens(ev))
    return out


@functools.cache
def _syscall_names() -> Callable[[int], str]:
    try:  # the syscall probe's table, when that plugin is installed (display only)
        from ravn_ebpf_syscall.syscalls import names_by_nr

        names = names_by_nr()
        return lambda nr: names[nr] if 0 <= nr < len(names) else f"nr{nr}"
    except Exception:
        return lambda nr: f"nr{nr}"


def display(token: str) -> str:
    """A token as people read it: syscall numbers become names (``"59"`` -> ``"execve"``)."""
    if token.isdigit():
        return _syscall_names()(int(token))
    return token
