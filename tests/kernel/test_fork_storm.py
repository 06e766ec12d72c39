"""A fork storm through the real security probe and runtime: the process tree stays within ravn.proctree_max."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest

from ravn_core.bpf.testing import build_fork_loop
from ravn_core.config import validate
from ravn_core.runtime import Runtime, runtime_context
from ravn_core.testing import make_host, require_kernel, wait_for

FORKS = 20_000  # bench/soak.py --forks 100000 runs the full 100,000 (docs/BENCHMARKS.md, Soak)


@pytest.mark.kernel
def test_fork_storm_keeps_the_process_tree_bounded(tmp_path: Path) -> None:
    require_kernel()
    import ravn_ebpf_security.plugin

    exe = build_fork_loop(tmp_path)
    assert exe is not None, "cc could not build the fork loop"
    host = make_host((ravn_ebpf_security.plugin, "ebpf_security"))
    bound = 512
    cfg = validate({"ravn": {"state_dir": str(tmp_path / "state"), "proctree_max": bound, "memory_limit_mb": 4096,
                             "health_interval_s": 0.5},
                    "sources": [{"plugin": "ebpf_security"}], "analyzers": []}, host.registries())
    # The probes exclude RAVN's own pid and its descendants in the kernel, and this test process would be RAVN;
    # name a placeholder process as RAVN so that the fork loop started from here is traced.
    placeholder = subprocess.Popen(["sleep", "120"])
    ctx = runtime_context(cfg)
    rt = Runtime(cfg, host, context=dataclasses.replace(ctx, ravn_pid=placeholder.pid))
    rt.start()
    sizes: list[int] = []
    try:
        tree = rt.trees[rt.hostname]
        proc = subprocess.Popen([str(exe), str(FORKS)])
        while proc.poll() is None:
            sizes.append(len(tree))
            time.sleep(0.05)
        assert proc.returncode == 0
        assert wait_for(lambda: rt.counters["analyzed"] >= 2 * FORKS, 30), rt.stats()  # a fork and an exit each
        sizes.append(len(tree))
    finally:
        stats = rt.stop()
        placeholder.kill()
        placeholder.wait()
    kernel_drops = stats["sources"]["ebpf_security"]["kernel_drops"]
    print(f"{FORKS} forks: tree max {max(sizes)} (bound {bound}), evictions {tree.evictions}, "
          f"events {stats['analyzed']}, kernel drops {kernel_drops}")
    assert max(sizes) <= bound
    # a fork record lost in the ring (kernel_drops) or dropped at a full stage queue (dropped) never reaches the
    # tree, so it evicts nothing
    assert tree.evictions >= FORKS - bound - kernel_drops - stats["dropped"]
    assert stats["accepted"] == stats["analyzed"] + stats["dropped"]
