"""ebpf_syscall on the real kernel: decoded fields against ground truth, summaries, filters, exclusion of RAVN,
clean stop, compile errors, health. Every test starts its own probe (compile ~0.5 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ravn_ebpf_syscall.config import SyscallConfig
from ravn_ebpf_syscall.decode import SyscallSummary
from ravn_ebpf_syscall.source import SyscallSource
from ravn_ebpf_syscall.syscalls import table

from ravn_core.bpf.env import TRACEFS
from ravn_core.bpf.testing import (
    Orphan,
    bpf_programs,
    bystander,
    collect,
    fresh_cgroup,
    program_map_ids,
    ravn_programs,
)
from ravn_core.errors import EXIT_ENVIRONMENT, UnusableEnvironment
from ravn_core.testing import make_context, require_kernel, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

ESRCH = 3
NO_SUCH_PID = 4_000_000  # above pid_max's ceiling (4194304 is the max; use one never allocated in tests)

# A child that waits for a line on stdin, runs n x (getppid, uname, kill(NO_SUCH_PID, 0)) in `threads` threads
# (0: the main thread), prints its ground truth as JSON and exits. C, so that any uid can run it.
CHILD_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
static int n;
static pid_t tids[64];
static void *work(void *arg) {
    struct utsname u;
    tids[(long)arg] = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < n; i++) { syscall(SYS_getppid); uname(&u); kill(NO_SUCH_PID, 0); }
    return NULL;
}
int main(int argc, char **argv) {
    char line[16], comm[32] = "";
    n = atoi(argv[1]);
    int threads = atoi(argv[2]);
    if (!fgets(line, sizeof line, stdin)) return 1;
    if (threads == 0) { work((void *)0); threads = 1; }
    else {
        pthread_t t[64];
        for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)i);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    }
    int ppid = -1;  /* from /proc, not getppid(): that would be one more traced syscall */
    char stat[512];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) { size_t k = fread(stat, 1, sizeof stat - 1, f); stat[k] = 0; fclose(f);
             char *p = strrchr(stat, ')'); if (p) sscanf(p + 2, "%*c %d", &ppid); }
    f = fopen("/proc/self/comm", "r");
    if (f) { if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = 0; fclose(f); }
    printf("{\"pid\": %d, \"ppid\": %d, \"uid\": %d, \"gid\": %d, \"comm\": \"%s\", \"tids\": [",
           getpid(), ppid, getuid(), getgid(), comm);
    for (int i = 0; i < threads; i++) printf("%s%d", i ? ", " : "", tids[i]);
    printf("]}\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def child_exe() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="ravn-sc-child-"))
    d.chmod(0o755)
    (d / "child.c").write_text(CHILD_C)
    subprocess.run(["cc", "-O1", f"-DNO_SUCH_PID={NO_SUCH_PID}", "-pthread", "-o", str(d / "sc_child"),
                    str(d / "child.c")], check=True, timeout=60)
    yield str(d / "sc_child")
    shutil.rmtree(d, ignore_errors=True)


CHILD = ""


def spawn(n: int, threads: int = 0, exe: str = "", **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([exe or CHILD, str(n), str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, **kw)


def go(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdin and child.stdout
    child.stdin.write("go\n")
    child.stdin.flush()
    truth: dict[str, Any] = json.loads(child.stdout.readline())
    child.wait(10)
    return truth


@pytest.fixture(autouse=True)
def _child(child_exe: str) -> None:
    global CHILD
    CHILD = child_exe


@pytest.fixture
def probe() -> Iterator[Any]:
    """probe(**config) -> a started SyscallSource whose ravn_pid is a bystander (the test process is visible)."""
    require_kernel()
    started: list[SyscallSource] = []
    with bystander() as other:

        def make(ravn_pid: int = other, **cfg: Any) -> SyscallSource:
            src = SyscallSource("ebpf_syscall", SyscallConfig(**cfg), make_context(ravn_pid=ravn_pid))
            src.start()
            started.append(src)
            return src

        try:
            yield make
        finally:
            for s in started:
                s.stop()


def test_events_match_ground_truth(probe: Any) -> None:
    n = 20
    src = probe(mode="events", return_values=True, syscalls=["getppid", "uname", "kill"])
    with fresh_cgroup() as cg:
        child = spawn(n, user=65534, group=65534)
        (cg / "cgroup.procs").write_text(str(child.pid))
        truth = go(child)
        events = collect(src, lambda e: e["proc.pid"] == child.pid, count=3 * n, settle_s=0.2)
        cg_id = os.stat(cg).st_ino
    assert len(events) == 3 * n
    by_name: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_name.setdefault(e["syscall.name"], []).append(e)
    assert {k: len(v) for k, v in by_name.items()} == {"getppid": n, "uname": n, "kill": n}
    for e in events:
        assert e["evt.type"] == "syscall" and e["evt.source"] == "ebpf_syscall"
        assert e["proc.tid"] == truth["pid"]  # single-threaded child
        assert e["proc.ppid"] == os.getpid() == truth["ppid"]
        assert (e["proc.uid"], e["proc.gid"]) == (65534, 65534) == (truth["uid"], truth["gid"])
        assert e["proc.comm"] == truth["comm"]
        assert e["proc.cgroup"] == cg_id != 1
        assert abs(e["evt.ts"] - time.time_ns()) < 30e9  # wall clock, not boot time
    assert {e["syscall.nr"] for e in by_name["getppid"]} == {110}
    assert {e["syscall.ret"] for e in by_name["getppid"]} == {os.getpid()}
    assert {e["syscall.ret"] for e in by_name["uname"]} == {0} and by_name["uname"][0]["syscall.nr"] == 63
    assert {e["syscall.ret"] for e in by_name["kill"]} == {-ESRCH}
    ts = [e["evt.ts"] for e in events]
    assert ts == sorted(ts)


def test_threads_report_tid_and_share_the_process_ppid(probe: Any) -> None:
    """New threads are not new processes: no ppid-map entry of their own; their events carry the tgid's ppid."""
    src = probe(mode="events", syscalls=["getppid"])
    child = spawn(5, threads=4)
    truth = go(child)
    events = collect(src, lambda e: e["proc.pid"] == child.pid, count=20, settle_s=0.2)
    assert len(events) == 20
    assert {e["proc.tid"] for e in events} == set(truth["tids"])
    assert {e["proc.ppid"] for e in events} == {os.getpid()}
    assert "syscall.ret" not in events[0]


def test_ppid_map_tracks_processes_not_threads(probe: Any) -> None:
    src = probe(mode="events", syscalls=["getppid"])
    code = "import threading,os,sys; ts=[threading.Thread(target=sys.stdin.readline) for _ in range(3)]; " \
           "[t.start() for t in ts]; print(' '.join(str(t.native_id) for t in ts), flush=True); [t.join() for t in ts]"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout and child.stdin
    tids = [int(t) for t in child.stdout.readline().split()]
    ppid = {k.value: v.value for k, v in src.bpf[b"ravn_ppid"].items()}
    assert ppid[child.pid] == os.getpid()
    assert not set(tids) & set(ppid), "thread ids must not be added to the ppid map"
    child.stdin.write("\n\n\n")
    child.stdin.close()
    child.wait(10)
    time.sleep(0.1)
    assert child.pid not in {k.value for k in src.bpf[b"ravn_ppid"].keys()}, "exit must remove the process"


def test_summary_counts_exact(probe: Any) -> None:
    n = 500
    src = probe(flush_interval_ms=50)  # the default config: summary mode, default allow list (kill is in it)
    child = spawn(n)
    assert child.stdin
    child.stdin.write("go\n")
    child.stdin.flush()
    child.wait(10)
    events = collect(src, lambda e: e["proc.pid"] == child.pid, timeout_s=1.0)
    assert events and all(e["evt.type"] == "syscall_summary" for e in events)
    counts: dict[str, int] = {}
    for e in events:
        for k, v in e["syscall.counts"].items():
            counts[k] = counts.get(k, 0) + v
        assert e["syscall.total"] == sum(e["syscall.counts"].values())
    assert counts["kill"] == n  # getppid/uname are not in the default list
    last = events[-1]  # header refreshed after the execve: the exec'd comm, not the forking python's
    assert (last["proc.comm"], last["proc.ppid"], last["proc.uid"], last["proc.tid"]) == \
        ("sc_child", os.getpid(), 0, child.pid)
    assert "getppid" not in counts and "uname" not in counts
    assert counts["exit_group"] == 1
    seq = [nr for e in events for nr in e["syscall.seq"]]
    assert seq[-1] == 231  # exit_group last
    assert seq[-2] == 62
    assert not [k for k in src.bpf[b"ravn_sc_summary"].keys() if k.value == child.pid], "exited entry not deleted"


def test_filters_exclude_in_kernel(probe: Any, tmp_path: Path) -> None:
    pre = spawn(10)  # excluded by pid, with its descendants
    named = tmp_path / "ravnexcl"
    named.symlink_to(CHILD)
    with fresh_cgroup() as cg:
        src = probe(mode="events", syscalls=["getppid"],
                    filters={"exclude_pids": [pre.pid], "exclude_comms": ["ravnexcl"], "exclude_uids": [65533],
                             "exclude_cgroups": [str(cg)]})
        by_comm = spawn(10, exe=str(named))
        by_uid = spawn(10, user=65533)
        by_cg = spawn(10)
        (cg / "cgroup.procs").write_text(str(by_cg.pid))
        control = spawn(10)
        excluded = {pre.pid, by_comm.pid, by_uid.pid, by_cg.pid}
        for c in (pre, by_comm, by_uid, by_cg, control):
            go(c)
        got = collect(src, lambda e: e["proc.pid"] in excluded | {control.pid}, count=10, settle_s=0.3)
    assert {e["proc.pid"] for e in got} == {control.pid}
    assert len(got) == 10


def test_ravn_and_its_children_never_reported(probe: Any) -> None:
    orphan = Orphan()  # started before the probe, reparented away: not RAVN's descendant
    try:
        src = probe(ravn_pid=os.getpid(), mode="events", syscalls=["getppid"])
        for _ in range(10):
            os.getppid()
        child = spawn(10)
        go(child)
        inner = "import os; [os.getppid() for _ in range(10)]"
        outer = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; "
                                  f"subprocess.run([sys.executable, '-c', {inner!r}])"])
        assert outer.wait(20) == 0
        ours = {os.getpid(), child.pid, outer.pid}  # the innermost process has ppid outer.pid
        orphan.run(10)
        got = collect(src, lambda e: e["proc.pid"] in ours or e["proc.ppid"] in ours, timeout_s=0.5)
        assert got == [], f"RAVN or a descendant was reported: {got[:3]}"
        orphan.run(10)
        seen = collect(src, lambda e: e["proc.pid"] == orphan.pid, count=10, timeout_s=5)
        assert len(seen) == 10  # the probe does see processes outside RAVN's tree
    finally:
        orphan.close()


def test_stop_leaves_no_program_or_map() -> None:
    """After stop(), none of the probe's programs or maps is in the kernel (other probes may run meanwhile)."""
    require_kernel()
    with bystander() as other:
        src = SyscallSource("ebpf_syscall", SyscallConfig(), make_context(ravn_pid=other))
        src.start()
        progs = src.program_ids()
        maps = program_map_ids(progs)
        names = {bpf_programs()[i] for i in progs}
        assert {"ravn_on_newtask", "ravn_on_exit", "ravn_sc_enter_tp"} == names
        assert len(maps) >= 4  # summary mode: ppid, excluded, summary, scratch
        src.stop()
    assert not progs & set(bpf_programs())  # programs are gone when stop() returns
    assert not progs & set(ravn_programs())

    def live_maps() -> set[int]:  # the kernel frees maps asynchronously once the last reference is closed
        out = subprocess.run(["bpftool", "map", "list", "-j"], capture_output=True, text=True, check=True).stdout
        return maps & {int(m["id"]) for m in json.loads(out or "[]")}

    assert wait_for(lambda: not live_maps(), timeout_s=3), live_maps()
    assert src.health().state == "stopped"


def test_compile_error_is_one_line(tmp_path: Path) -> None:
    require_kernel()
    bpf = tmp_path / "bpf"
    bpf.mkdir()
    (bpf / "broken.bpf.c").write_text('#include "ravn_common.bpf.h"\nRAVN_PROC_PROGRAMS\n'
                                      "int f(void *c) { return nope; }\n")

    class Broken(SyscallSource):
        def source_path(self) -> Path:
            return bpf / "broken.bpf.c"

    src = Broken("ebpf_syscall", SyscallConfig(), make_context())
    with pytest.raises(UnusableEnvironment) as info:
        src.start()
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{bpf / 'broken.bpf.c'}:3:" in msg and "error:" in msg and "nope" in msg
    assert info.value.exit_code == EXIT_ENVIRONMENT == 3
    assert src.bpf is None


def test_health_fails_when_detached_and_recovers_after_restart(probe: Any) -> None:
    src = probe(mode="events", syscalls=["getppid", "uname"])
    h = src.health()
    assert h.state == "ok" and h.counters["programs_attached"] == h.counters["programs_expected"] == 4
    src.bpf.detach("syscalls:sys_enter_getppid")  # really detached in the kernel
    h = src.health()
    assert h.state == "failed" and "syscalls:sys_enter_getppid" in h.detail
    for _ in range(5):
        os.getppid()
    assert collect(src, lambda e: e["proc.pid"] == os.getpid() and e["syscall.name"] == "getppid",
                   timeout_s=0.3) == []
    src.stop()
    src.start()
    assert src.health().state == "ok"
    for _ in range(5):
        os.getppid()
    got = collect(src, lambda e: e["proc.pid"] == os.getpid() and e["syscall.name"] == "getppid", count=5)
    assert len(got) == 5


@pytest.mark.parametrize("mode", ["events", "summary"])
def test_raw_hook(probe: Any, mode: str) -> None:
    src = probe(mode=mode, hook="raw", syscalls=["getppid"], return_values=mode == "events", flush_interval_ms=50)
    child = spawn(7)
    go(child)
    got = collect(src, lambda e: e["proc.pid"] == child.pid, count=1 if mode == "summary" else 7, settle_s=0.2)
    if mode == "events":
        assert [e["syscall.ret"] for e in got] == [os.getpid()] * 7
    else:
        assert sum(e["syscall.counts"].get("getppid", 0) for e in got) == 7
        assert {k for e in got for k in e["syscall.counts"]} == {"getppid"}


def test_drops_are_counted(probe: Any) -> None:
    """A ring of 4 KiB cannot hold a burst: every record is either delivered or counted as dropped."""
    src = probe(mode="events", syscalls=["getppid"], ring_buffer_kb=4)
    child = spawn(2000)
    go(child)
    got = collect(src, lambda e: e["proc.pid"] == child.pid, timeout_s=0.5)
    drops = src.drops()
    assert drops > 0
    # the drop counter is global: another process's getppid on this shared machine may add a drop or two
    assert 2000 <= len(got) + drops <= 2000 + 20


def test_ppid_of_a_process_older_than_the_probe_comes_from_proc(probe: Any) -> None:
    """Processes that exist at load time get their ppid from the /proc seed (no fork was seen for them)."""
    child = spawn(5)  # forked before start()
    time.sleep(0.05)
    src = probe(mode="events", syscalls=["getppid"])
    go(child)
    events = collect(src, lambda e: e["proc.pid"] == child.pid, count=5, settle_s=0.1)
    assert len(events) == 5 and {e["proc.ppid"] for e in events} == {os.getpid()}



# A child that waits for a line on stdin, then makes each syscall number of argv[2:] argv[1] times with zero
# arguments (each harmless: a query or an EFAULT/EINVAL), and exits (exit_group).
MULTI_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char line[16];
    int n = atoi(argv[1]);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int a = 2; a < argc; a++)
        for (int i = 0; i < n; i++) syscall(atol(argv[a]), 0, 0, 0, 0, 0, 0);
    return 0;
}
"""
# 36 syscalls that are harmless with zero arguments: more distinct numbers than a final record holds (32)
MANY = ["getpid", "getppid", "getuid", "getgid", "geteuid", "getegid", "gettid", "getpgrp", "sched_yield", "uname",
        "times", "getrusage", "sysinfo", "getcwd", "getpriority", "getpgid", "getsid", "sched_getscheduler",
        "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "getitimer",
        "alarm", "capget", "getgroups", "getresuid", "getresgid", "gettimeofday", "time", "clock_getres",
        "sched_getaffinity", "ioprio_get", "getcpu", "membarrier", "getrlimit"]


@pytest.fixture(scope="module")
def multi_exe() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="ravn-sc-multi-"))
    (d / "multi.c").write_text(MULTI_C)
    subprocess.run(["cc", "-O1", "-o", str(d / "multi"), str(d / "multi.c")], check=True, timeout=60)
    yield str(d / "multi")
    shutil.rmtree(d, ignore_errors=True)


def _summed(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        assert e["evt.type"] == "syscall_summary" and e["syscall.total"] == sum(e["syscall.counts"].values())
        for k, v in e["syscall.counts"].items():
            counts[k] = counts.get(k, 0) + v
    return counts


def test_exit_sends_the_final_summary_without_a_flush(probe: Any) -> None:
    """An exiting process's summary comes through the ring at its exit (no periodic flush in this test), once,
    with exact counts, and the kernel deletes its map entry."""
    src = probe(flush_interval_ms=600_000)
    child = spawn(300)
    go(child)
    events = collect(src, lambda e: e["proc.pid"] == child.pid, count=1, settle_s=0.3)
    assert len(events) == 1
    (e,) = events
    assert e["syscall.counts"] == {"execve": 1, "kill": 300, "exit_group": 1} and e["syscall.total"] == 302
    assert e["syscall.seq"][-2:] == [62, 231] and len(e["syscall.seq"]) == 64
    assert (e["proc.comm"], e["proc.ppid"], e["proc.tid"]) == ("sc_child", os.getpid(), child.pid)
    assert not [k for k in src.bpf[b"ravn_sc_summary"].keys() if k.value == child.pid]
    assert child.pid not in src._flusher.last


def test_more_distinct_syscalls_than_a_final_record_holds(probe: Any, multi_exe: str) -> None:
    """36 distinct syscalls: the exit cannot send them in one record, so it marks the entry and the next flush
    emits it exactly and deletes it."""
    names = [n for n in MANY if (TRACEFS / "events" / "syscalls" / f"sys_enter_{table()[n].tracepoint}").is_dir()]
    assert len(names) > 32, names
    src = probe(syscalls=[*names, "execve", "exit_group"], flush_interval_ms=100)
    child = subprocess.Popen([multi_exe, "3", *(str(table()[n].nr) for n in names)], stdin=subprocess.PIPE,
                             text=True)
    assert child.stdin
    child.stdin.write("go\n")
    child.stdin.flush()
    child.wait(10)
    events = collect(src, lambda e: e["proc.pid"] == child.pid, timeout_s=1.0)
    assert _summed(events) == {"execve": 1, **{n: 3 for n in names}, "exit_group": 1}
    assert not [k for k in src.bpf[b"ravn_sc_summary"].keys() if k.value == child.pid]


def test_full_ring_falls_back_to_the_map(probe: Any) -> None:
    """With a ring too small for the final records of 40 processes exiting at once, those that do not fit are
    flushed from the map: every process's counts arrive exactly, and no drop is counted (nothing was lost)."""
    src = probe(ring_buffer_kb=4, flush_interval_ms=200)
    children = [spawn(20) for _ in range(40)]
    for c in children:
        assert c.stdin
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in children:
        c.wait(10)
    pids = {c.pid for c in children}
    marked = {k.value for k, v in src.bpf[b"ravn_sc_summary"].items() if SyscallSummary.from_buffer_copy(v).exited}
    assert len(marked & pids) >= 20  # the ring holds 10 records: most entries wait in the map, marked
    events = collect(src, lambda e: e["proc.pid"] in pids, timeout_s=1.0)
    for pid in pids:
        assert _summed([e for e in events if e["proc.pid"] == pid]) == {"execve": 1, "kill": 20, "exit_group": 1}, pid
    assert src.drops() == 0
