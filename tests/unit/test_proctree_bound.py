"""100,000 short-lived processes through ProcessTree.update(): the tree never holds more than its bound."""

from __future__ import annotations

import time
import tracemalloc

from ravn_core.proctree import ProcessTree


def fork_exit_batches(n: int, batch: int, parent: int = 1) -> list[list[dict[str, object]]]:
    out, cur = [], []
    ts = time.time_ns()
    for i in range(n):
        child = 100_000 + i
        cur.append({"evt.type": "fork", "evt.ts": ts + i, "proc.pid": parent, "proc.ppid": 0, "proc.comm": "bash",
                    "proc.uid": 0, "fork.child_pid": child, "fork.child_tid": child})
        cur.append({"evt.type": "exec", "evt.ts": ts + i, "proc.pid": child, "proc.ppid": parent, "proc.comm": "true",
                    "proc.uid": 0, "exec.ret": 0, "exec.filename": "/bin/true", "exec.argv": ["true", str(i)]})
        cur.append({"evt.type": "exit", "evt.ts": ts + i, "proc.pid": child, "proc.ppid": parent, "proc.comm": "true",
                    "proc.uid": 0})
        if len(cur) >= batch * 3:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def test_100k_forks_stay_within_the_bound() -> None:
    bound = 1000
    tree = ProcessTree(max_size=bound)
    tree.update([{"evt.type": "exec", "proc.pid": 1, "proc.ppid": 0, "proc.comm": "bash", "exec.ret": 0,
                  "exec.filename": "/bin/bash", "exec.argv": ["bash"]}])
    batches = fork_exit_batches(100_000, 1000)
    tracemalloc.start()
    peak_len = 0
    for i, b in enumerate(batches):
        tree.update(b)
        peak_len = max(peak_len, len(tree))
        if i == 9:
            base = tracemalloc.get_traced_memory()[0]
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_len <= bound and len(tree) == bound
    assert tree.evictions == 100_000 + 1 - bound
    # the newest processes are the ones kept, with their ancestry as far as it is still known
    last = tree.get(100_000 + 99_999)
    assert last is not None and last.exe == "/bin/true" and last.args == ["true", "99999"] and last.exited
    assert tree.get(100_000) is None  # the oldest were evicted
    # the exited went first: the live shell they all came from, never updated since its exec, is still known
    shell = tree.get(1)
    assert shell is not None and shell.exe == "/bin/bash" and not shell.exited
    assert last.ppid == 1 and [p.pid for p in tree.ancestors(last.pid)][:1] == [1]
    # memory is flat once the tree is full: what batch 10 held, batch 100 holds (within 10%)
    assert current < base * 1.1 + 64 * 1024, (base, current)


def test_bound_holds_when_exits_are_missing() -> None:
    """Processes whose exit event was lost (ring buffer full) are evicted by the bound all the same."""
    tree = ProcessTree(max_size=64)
    for b in fork_exit_batches(10_000, 100):
        tree.update([e for e in b if e["evt.type"] != "exit"])
        assert len(tree) <= 64
    assert not any(p.exited for p in (tree.get(100_000 + 9_999),) if p)
