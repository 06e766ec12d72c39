#!/usr/bin/env python3
"""Cost of the ebpf_file and ebpf_network probes (default configs) on the syscalls they trace.

    sudo .venv/bin/python bench/netfile.py [--rounds 3]

A C child (bench/netfile_storm.c) runs one tight loop per pattern and prints ns per iteration; each pattern runs
with no probe and with the probe loaded (in this process, a thread polling and discarding batches, as the daemon
does; RAVN's own-pid exclusion pointed at an unrelated process so the child is traced). Rounds alternate off/on;
the figures are medians. Two measures:
  bpf_ns_per_iter  time spent in the probe's BPF programs per loop iteration (kernel.bpf_stats_enabled run_time_ns
                   of every program of the probe, summed, divided by the iterations): the probe's own kernel cost,
                   the least sensitive to a noisy machine;
  off_ns / on_ns   wall-clock ns per iteration without / with the probe (includes the user-space consumer competing
                   for the 2 CPUs when events flow, and all the machine's noise).
Patterns:
  file   open_unwatched_read   openat(O_RDONLY)+close of /usr/lib/os-release: the loader's case, no event
         open_unwatched_write  openat(O_WRONLY|O_CREAT)+close under /tmp: no event
         open_watched_read     openat(O_RDONLY)+close of /etc/shadow: one event per iteration
         open_unnormal_read    openat(O_RDONLY)+close of /usr/lib/../lib/os-release: a path with a ".." component,
                               sent to user space, normalised there and dropped (one record per iteration)
  net    udp_same_dest         sendto()+recv() of 1 byte on loopback, one destination: no event after the first
         tcp_conn              connect+accept+close on loopback: connect, accept, 2 close events per iteration
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ravn_core.testing import make_context  # noqa: E402

PATTERNS: dict[str, list[tuple[str, list[str]]]] = {
    "ebpf_file": [
        ("open_unwatched_read", ["open", "200000", "/usr/lib/os-release"]),
        ("open_unwatched_write", ["open", "200000", "{tmp}/w", "wr"]),
        ("open_watched_read", ["open", "100000", "/etc/shadow"]),
        ("open_unnormal_read", ["open", "100000", "/usr/lib/../lib/os-release"]),
    ],
    "ebpf_network": [
        ("udp_same_dest", ["udp", "200000"]),
        ("tcp_conn", ["tcp", "10000"]),
    ],
}


def make_source(name: str, ravn_pid: int, file_config: dict[str, Any]) -> Any:
    ctx = make_context(name, ravn_pid=ravn_pid)
    if name == "ebpf_file":
        from ravn_ebpf_file.config import FileConfig
        from ravn_ebpf_file.source import FileSource

        return FileSource(name, FileConfig.model_validate(file_config), ctx)
    from ravn_ebpf_network.source import NetworkConfig, NetworkSource

    return NetworkSource(name, NetworkConfig(), ctx)


def run(storm: str, args: list[str]) -> float:
    out = subprocess.run([storm, *args], capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip())


def enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run-time accounting stays on while the returned fd is open (other
    processes toggling the kernel.bpf_stats_enabled sysctl do not turn it off)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 30)()  # union bpf_attr; enable_stats.type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(ctypes.c_long(321), ctypes.c_int(32), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return int(fd)


def bpf_run_ns(ids: list[int]) -> int:
    total = 0
    for i in ids:
        out = subprocess.run(["bpftool", "prog", "show", "id", str(i), "-j"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        total += int(json.loads(out).get("run_time_ns", 0))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--file-config", default="{}", help='ebpf_file settings over its defaults, as JSON, e.g. '
                    '\'{"normalize_paths": false}\'')
    ap.add_argument("--only", default="", help="run only this probe (ebpf_file or ebpf_network)")
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ravn-netfile-"))
    storm = str(tmp / "storm")
    subprocess.run(["cc", "-O2", "-o", storm, str(ROOT / "bench" / "netfile_storm.c")], check=True)
    bystander = subprocess.Popen(["sleep", "3600"])
    results: dict[str, Any] = {"load_avg_1m_at_start": os.getloadavg()[0]}
    stats_fd = enable_bpf_stats()
    try:
        for probe, patterns in PATTERNS.items():
            if opts.only and probe != opts.only:
                continue
            src = make_source(probe, bystander.pid, json.loads(opts.file_config))
            samples: dict[str, dict[str, list[float]]] = {p: {"off": [], "on": [], "bpf": []} for p, _ in patterns}
            events = 0
            for r in range(opts.rounds):
                for state in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    stop = threading.Event()
                    counter = [0]
                    poller = None
                    if state == "on":
                        src.start()

                        def poll(s: Any = src, c: list[int] = counter, st: threading.Event = stop) -> None:
                            while not st.is_set():
                                c[0] += len(s.poll(50))

                        poller = threading.Thread(target=poll, daemon=True)
                        poller.start()
                    for name, args in patterns:
                        ids = sorted(src.program_ids()) if state == "on" else []
                        before = bpf_run_ns(ids)
                        samples[name][state].append(run(storm, [a.format(tmp=tmp) for a in args]))
                        if state == "on":
                            samples[name]["bpf"].append((bpf_run_ns(ids) - before) / int(args[1]))
                    if poller is not None:
                        time.sleep(0.2)
                        stop.set()
                        poller.join()
                        drops = src.drops()
                        src.stop()
                        events += counter[0]
                        results.setdefault(f"{probe}.drops", 0)
                        results[f"{probe}.drops"] += drops
                    print(f"{probe} round {r} {state}: " + ", ".join(
                        f"{n}={samples[n][state][-1]:.0f}ns" for n, _ in patterns), flush=True)
            results[f"{probe}.events"] = events
            for name, _ in patterns:
                off, on = statistics.median(samples[name]["off"]), statistics.median(samples[name]["on"])
                bpf = statistics.median(samples[name]["bpf"])
                results[f"{probe}.{name}"] = {"bpf_ns_per_iter": round(bpf), "off_ns": round(off),
                                              "on_ns": round(on), "ratio": round(on / off, 3)}
                print(f"{probe} {name}: BPF {bpf:.0f} ns/iter; wall off {off:.0f} ns, on {on:.0f} ns "
                      f"({(on / off - 1) * 100:+.1f}%)", flush=True)
    finally:
        bystander.kill()
        os.close(stats_fd)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
