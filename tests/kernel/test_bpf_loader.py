"""The BPF loader child (ravn_core.bpf.loader): maps by fd against a real probe, and every way the child can fail."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from typing import Any

import pytest
from ravn_ebpf_security.config import SecurityConfig
from ravn_ebpf_security.source import SecuritySource

from ravn_core.bpf.loader import FdMap, load_in_child, possible_cpus
from ravn_core.errors import UnusableEnvironment
from ravn_core.testing import make_context, require_kernel

pytestmark = pytest.mark.kernel


def test_maps_by_fd_against_a_real_probe() -> None:
    require_kernel()
    src = SecuritySource("ebpf_security", SecurityConfig(), make_context("loader"))
    src.start()
    try:
        assert src.bpf is not None
        ppid = src.bpf["ravn_ppid"]  # u32 pid -> u32 ppid, seeded from /proc by the child
        assert isinstance(ppid, FdMap) and (ppid.key_size, ppid.value_size) == (4, 4)
        seeded = {k.value: v.value for k, v in ppid.items()}
        assert seeded[os.getpid()] == os.getppid()
        assert ppid[os.getpid()].value == os.getppid()
        free = next(p for p in range(4_000_000, 4_100_000) if p not in seeded)
        ppid[ctypes.c_uint32(free)] = ctypes.c_uint32(4242)
        assert ppid[free].value == 4242 and free in {k.value for k in ppid.keys()}
        del ppid[free]
        with pytest.raises(KeyError):
            ppid[free]
        with pytest.raises(KeyError):
            del ppid[free]
        with pytest.raises(ValueError, match="ravn_ppid: 8 bytes given, the map's entries have 4"):
            ppid[ctypes.c_uint64(1)]
        drops = src.bpf["ravn_drops"][0]  # per-CPU array: one counter per possible CPU
        assert len(drops) == possible_cpus() and all(isinstance(d, int) for d in drops)
        assert src.drops() == sum(drops)
    finally:
        src.stop()


def test_batch_read_and_delete_against_a_real_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_all (BPF_MAP_LOOKUP_BATCH, small chunks so it takes many calls) gives exactly what items() gives, key
    by key; delete_many removes the keys given, skipping one already gone; the key-by-key fallback agrees."""
    require_kernel()
    src = SecuritySource("ebpf_security", SecurityConfig(), make_context("loader"))
    src.start()
    try:
        assert src.bpf is not None
        ppid = src.bpf["ravn_ppid"]
        free = list(range(4_100_000, 4_100_300))
        for i, pid in enumerate(free):
            ppid[ctypes.c_uint32(pid)] = ctypes.c_uint32(i + 1)
        kraw, vraw, n = ppid.read_all(chunk=16)
        batch = dict(zip(memoryview(kraw).cast("I").tolist(), memoryview(vraw).cast("I").tolist(), strict=True))
        assert n == len(batch) >= 300 and all(batch[pid] == i + 1 for i, pid in enumerate(free))
        by_key = {k.value: v.value for k, v in ppid.items()}
        assert {p: v for p, v in batch.items() if p in by_key} == {p: v for p, v in by_key.items() if p in batch}
        del ppid[free[5]]  # gone before the batch delete: skipped, the rest still deleted
        ppid.delete_many(b"".join(bytes(ctypes.c_uint32(p)) for p in free[:10]), 10)
        left = {k.value for k in ppid.keys()}
        assert not left & set(free[:10]) and set(free[10:]) <= left
        monkeypatch.setattr(ppid, "_read_all_by_key", lambda: (b"", b"", -1))
        assert ppid.read_all()[2] != -1  # the batch call worked: no fallback taken
        ppid.delete_many(b"".join(bytes(ctypes.c_uint32(p)) for p in free[10:]), len(free) - 10)
        assert not {k.value for k in ppid.keys()} & set(free)
    finally:
        src.stop()


def _fail(exc: BaseException) -> Any:
    def load() -> Any:
        raise exc
    return load


def test_loader_errors_come_back_as_one_clear_error() -> None:
    with pytest.raises(UnusableEnvironment, match=r"^probe-x: cannot attach$"):
        load_in_child(_fail(UnusableEnvironment("probe-x: cannot attach")), "probe-x")
    with pytest.raises(UnusableEnvironment, match="BPF loader failed: RuntimeError: boom"):
        load_in_child(_fail(RuntimeError("boom")), "probe-x")


def test_loader_killed_or_hung_is_reported() -> None:
    def killed() -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(UnusableEnvironment, match="probe-x: the BPF loader process died"):
        load_in_child(killed, "probe-x")

    def hung() -> Any:
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(UnusableEnvironment, match="probe-x: the BPF loader did not finish within 1 s"):
        load_in_child(hung, "probe-x", timeout_s=1)
    assert time.monotonic() - t0 < 10


def test_kernel_drops_are_kept_across_a_stop_and_a_restart() -> None:
    """Records lost to a full ring stay counted when the probe stops (the daemon's final report is read after
    its sources stopped) and when it is reloaded (a new ravn_drops map starts at 0: the count must not go back)."""
    require_kernel()
    placeholder = subprocess.Popen(["sleep", "60"])  # stands for RAVN: this process's children are traced
    src = SecuritySource("ebpf_security", SecurityConfig(ring_buffer_kb=4),
                         make_context("loader", ravn_pid=placeholder.pid))
    try:
        src.start()
        for _ in range(300):  # fork + exit records, never read: a 4 KiB ring holds a few dozen
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        lost = src.drops()
        assert lost > 100
        src.stop()
        assert src.drops() == lost
        src.start()
        assert src.drops() >= lost
    finally:
        src.stop()
        placeholder.kill()
        placeholder.wait()
