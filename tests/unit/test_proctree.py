from __future__ import annotations

import os
import subprocess

from ravn_core.proctree import ProcessTree, read_proc
from ravn_core.testing import synthetic_event


def fork(parent: int, child: int, comm: str = "sh") -> dict:  # type: ignore[type-arg]
    return synthetic_event("fork", **{"proc.pid": parent, "proc.comm": comm, "fork.child_pid": child,
                                      "fork.child_tid": child})


def exec_(pid: int, exe: str, ppid: int = 0) -> dict:  # type: ignore[type-arg]
    return synthetic_event("exec", **{"proc.pid": pid, "proc.ppid": ppid, "proc.comm": os.path.basename(exe),
                                      "exec.filename": exe, "exec.argv": [exe, "-x"], "exec.ret": 0})


def test_ancestry_from_fork_and_exec() -> None:
    t = ProcessTree()
    t.update([exec_(10, "/usr/sbin/sshd", 1), fork(10, 11), exec_(11, "/bin/bash"), fork(11, 12),
              exec_(12, "/usr/bin/nc")])
    assert t.get(12).exe == "/usr/bin/nc" and t.get(12).args == ["/usr/bin/nc", "-x"]  # type: ignore[union-attr]
    assert [a.exe for a in t.ancestors(12)] == ["/bin/bash", "/usr/sbin/sshd"]
    assert t.lineage(12)[0]["pid"] == 12 and len(t.lineage(12)) == 3


def test_failed_exec_does_not_change_exe() -> None:
    t = ProcessTree()
    t.update([exec_(10, "/bin/bash")])
    bad = exec_(10, "/nope")
    bad["exec.ret"] = -2
    t.update([bad])
    assert t.get(10).exe == "/bin/bash"  # type: ignore[union-attr]


def test_bounded_under_churn_and_counts_misses() -> None:
    t = ProcessTree(max_size=1000)
    for base in range(0, 100_000, 1000):
        batch = []
        for pid in range(base + 2, base + 1002):
            batch += [fork(1, pid), synthetic_event("exit", **{"proc.pid": pid, "exit.code": 0})]
        t.update(batch)
        assert len(t) <= 1000
    assert t.evictions >= 99_000
    assert t.get(5) is None and t.misses == 1


def test_peek_reads_without_counting_a_miss() -> None:
    t = ProcessTree()
    t.update([exec_(10, "/bin/bash", 1)])
    info = t.peek(10)
    assert info is not None and info.exe == "/bin/bash" and info is t.get(10)
    assert t.peek(11) is None and t.misses == 0
    assert t.get(11) is None and t.misses == 1


def test_loop_in_parent_links_terminates() -> None:
    t = ProcessTree()
    t.update([exec_(20, "/a", ppid=21), exec_(21, "/b", ppid=20)])
    assert [a.pid for a in t.ancestors(20)] == [21]


def test_seed_from_proc_matches_ground_truth() -> None:
    t = ProcessTree()
    assert t.seed_from_proc() > 1
    me = t.get(os.getpid())
    assert me is not None and me.ppid == os.getppid()
    assert read_proc(os.getpid()).exe == os.readlink("/proc/self/exe")  # type: ignore[union-attr]


def test_exited_processes_are_forgotten_after_the_grace_period() -> None:
    t = ProcessTree(exit_grace_s=60)
    s = 1_000_000_000
    t.update([{**fork(1, 50), "evt.ts": 0}, {**exec_(50, "/bin/sh"), "evt.ts": 1 * s},
              {"evt.type": "exit", "proc.pid": 50, "exit.code": 0, "evt.ts": 2 * s}])
    t.update([{**exec_(60, "/bin/true", ppid=1), "evt.ts": 30 * s}])
    assert 50 in t  # within the grace period: alerts on its last events still find it
    t.update([{**exec_(61, "/bin/true", ppid=1), "evt.ts": 63 * s}])
    assert 50 not in t and 60 in t and 61 in t


def test_a_reused_pid_is_not_forgotten_with_its_dead_predecessor() -> None:
    t = ProcessTree(exit_grace_s=1)
    s = 1_000_000_000
    t.update([{**exec_(70, "/bin/old"), "evt.ts": 0},
              {"evt.type": "exit", "proc.pid": 70, "exit.code": 0, "evt.ts": 1},
              {**fork(1, 70), "evt.ts": 2}])  # pid 70 reused by a new process
    t.update([{**exec_(71, "/bin/x"), "evt.ts": 10 * s}])
    assert 70 in t and not t.get(70).exited  # type: ignore[union-attr]


def test_bad_timestamps_do_not_break_the_tree() -> None:
    t = ProcessTree(exit_grace_s=1)
    t.update([{**exec_(80, "/bin/x"), "evt.ts": "yesterday"},
              {"evt.type": "exit", "proc.pid": 80, "evt.ts": None}, {"evt.type": "open", "evt.ts": [1]}])
    assert 80 in t


def test_session_id_seeded_from_proc_inherited_at_fork_and_set_by_setsid() -> None:
    # a session leader of our own: the test's own session may be 0 here (a leader outside this pid namespace)
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        t = ProcessTree()
        t.seed_from_proc()
        seeded = t.get(leader.pid)
        assert seeded is not None and seeded.sid == os.getsid(leader.pid) == leader.pid
    finally:
        leader.kill()
        leader.wait()
    child = 4_000_000  # above pid_max: never a live pid
    t.update([fork(leader.pid, child)])
    assert t.get(child).sid == leader.pid  # type: ignore[union-attr]
    t.update([synthetic_event("setsid", **{"proc.pid": child, "setsid.sid": child})])
    assert t.get(child).sid == child  # type: ignore[union-attr]
    t.update([fork(child, child + 1)])
    assert t.get(child + 1).sid == child and t.lineage(child + 1)[0]["sid"] == child
    t.update([synthetic_event("setsid", **{"proc.pid": child + 1, "setsid.sid": -1})])  # failed setsid: no change
    assert t.get(child + 1).sid == child  # type: ignore[union-attr]
