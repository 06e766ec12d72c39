#!/usr/bin/env python3
"""Probe benchmarks: syscall-probe throughput and latency, and host overhead of all probes' default configs.

    sudo .venv/bin/python bench/probes.py                 # everything (~3-5 min)
    sudo .venv/bin/python bench/probes.py --skip-overhead # throughput + latency only (~30 s)

1. throughput: a C child (bench/storm.c) issues exactly N getppid() as fast as it can; ebpf_syscall in events
   mode with allow list [getppid]. Reports events/s decoded by the probe's own poll loop (ring callback ->
   struct unpack -> dict), kernel drops, delivered+dropped vs generated, and the ratio to a bare BCC count-only
   ring-buffer callback (``table.open_ring_buffer`` + ``ring_buffer_poll``) on the same storm, same kernel program.
2. latency: the child issues one getppid every 500 us; latency = CLOCK_MONOTONIC when poll() returns the event
   minus the event's kernel timestamp (bpf_ktime_get_ns, same clock). p50/p99.
3. overhead: redis-benchmark against a local redis-server, and ``make -j2`` of a generated 30-file C project,
   with every installed probe plugin loaded with its default config in a separate agent process (as RAVN runs:
   its own pid excluded, one poll thread per source, batches discarded) vs no probes. Rounds interleaved
   (off/on, on/off, ...) in one invocation; medians. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def log(msg: str) -> None:
    print(msg, flush=True)


def build_storm(tmp: Path) -> str:
    exe = tmp / "storm"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(ROOT / "bench" / "storm.c")], check=True, timeout=60)
    return str(exe)


# ------------------------------------------------------------------------------------------ 1. throughput


def _run_storm(storm: str, n: int, interval_us: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([storm, str(n), str(interval_us)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin
    child.stdin.write("go\n")
    child.stdin.flush()


def throughput(storm: str, n: int, ring_kb: int, ravn_pid: int, reps: int = 3) -> dict[str, Any]:
    from ravn_ebpf_syscall.config import SyscallConfig
    from ravn_ebpf_syscall.source import SyscallSource

    from ravn_core.testing import make_context

    cfg = SyscallConfig(mode="events", syscalls=["getppid"], ring_buffer_kb=ring_kb)

    class CountOnly(SyscallSource):
        """Same kernel program; user space is BCC's own ring-buffer API with a callback that only counts."""

        count = 0

        def _open_ring(self, bpf: Any) -> None:
            def cb(_ctx: Any, _data: Any, _size: int) -> int:
                CountOnly.count += 1
                return 0

            bpf[b"ravn_events"].open_ring_buffer(cb)

    def run(kind: str) -> dict[str, Any]:
        src: SyscallSource = (CountOnly if kind == "bare" else SyscallSource)(
            "ebpf_syscall", cfg, make_context("bench", ravn_pid=ravn_pid))
        src.start()
        CountOnly.count = 0
        try:
            child = _run_storm(storm, n)
            time.sleep(0.1)
            pid = child.pid
            t0 = time.perf_counter()
            _go(child)
            delivered = 0
            last_event = t0
            idle_since: float | None = None
            assert src.bpf is not None
            while True:
                if kind == "bare":
                    before = CountOnly.count
                    src.bpf.ring_buffer_poll(50)
                    got = CountOnly.count - before
                else:
                    batch = src.poll(50)
                    got = sum(1 for e in batch if e["proc.pid"] == pid)
                now = time.perf_counter()
                if got:
                    delivered += got
                    last_event = now
                    idle_since = None
                elif child.poll() is not None:
                    idle_since = idle_since or now
                    if now - idle_since > 0.3:
                        break
            assert child.stdout
            storm_ns = int(child.stdout.read().strip() or 0)
            drops = src.drops()
            elapsed = last_event - t0
            return {"kind": kind, "delivered": delivered, "drops": drops, "generated": n,
                    "unaccounted": n - delivered - drops, "elapsed_s": round(elapsed, 3),
                    "events_per_s": round(delivered / elapsed), "storm_syscalls_per_s": round(n / (storm_ns / 1e9))}
        finally:
            src.stop()

    runs = [run(k) for _ in range(reps) for k in ("bare", "probe")]
    for r in runs:
        log(f"  {r['kind']:5}: {r['events_per_s']:>9,} events/s  delivered {r['delivered']:,} dropped {r['drops']:,} "
            f"unaccounted {r['unaccounted']:,} (storm {r['storm_syscalls_per_s']:,} syscalls/s)")
    bare = statistics.median(r["events_per_s"] for r in runs if r["kind"] == "bare")
    probe = statistics.median(r["events_per_s"] for r in runs if r["kind"] == "probe")
    worst = max(abs(r["unaccounted"]) / n for r in runs)
    return {"probe_events_per_s": probe, "bare_count_only_events_per_s": bare, "ratio": round(probe / bare, 3),
            "worst_unaccounted_fraction": worst, "runs": runs}


# ------------------------------------------------------------------------------------------ 2. latency


def latency(storm: str, n: int, ravn_pid: int) -> dict[str, Any]:
    from ravn_ebpf_syscall.config import SyscallConfig
    from ravn_ebpf_syscall.source import SyscallSource

    from ravn_core.testing import make_context

    src = SyscallSource("ebpf_syscall", SyscallConfig(mode="events", syscalls=["getppid"]),
                        make_context("bench", ravn_pid=ravn_pid))
    src.start()
    lat: list[int] = []
    try:
        child = _run_storm(storm, n, 500)
        _go(child)
        off = src._ts_offset  # evt.ts = kernel monotonic + this offset
        deadline = time.monotonic() + 30
        while len(lat) < n and time.monotonic() < deadline:
            batch = src.poll(100)
            now = time.monotonic_ns()
            lat.extend(now - (e["evt.ts"] - off) for e in batch if e["proc.pid"] == child.pid)
        child.wait(10)
    finally:
        src.stop()
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    return {"samples": len(lat), "p50_us": round(q[49] / 1000, 1), "p99_us": round(q[98] / 1000, 1),
            "max_us": round(lat[-1] / 1000, 1)}


# ------------------------------------------------------------------------------------------ 3. overhead


def agent() -> int:
    """--agent: load every installed ebpf_* source with its default config, poll them, stop at stdin EOF."""
    from ravn_core.plugins import PluginHost
    from ravn_core.testing import make_context

    host = PluginHost()
    host.load()
    host.register_components()
    sources, failed = {}, {}
    for reg in host.sources:
        if not reg.name.startswith("ebpf_"):
            continue
        try:
            src = reg.factory(reg.name, reg.config_model(), make_context(reg.name, ravn_pid=os.getpid()))
            src.start()
            sources[reg.name] = src
        except Exception as exc:  # report and go on: the bench says which probes it measured
            failed[reg.name] = f"{type(exc).__name__}: {exc}"
    counts = dict.fromkeys(sources, 0)
    stop = threading.Event()

    def pump(name: str) -> None:
        src = sources[name]
        while not stop.is_set():
            counts[name] += len(src.poll(100))

    threads = [threading.Thread(target=pump, args=(n,), daemon=True) for n in sources]
    for t in threads:
        t.start()
    print(json.dumps({"ready": sorted(sources), "failed": failed}), flush=True)
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(5)
    health = {n: s.health().counters for n, s in sources.items()}
    for s in sources.values():
        s.stop()
    print(json.dumps({"events": counts, "health": health}), flush=True)
    return 0


class Agent:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--agent"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())
        time.sleep(1.0)  # let the compile/attach burst settle

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.close()
        out: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.proc.wait(60)
        return out


def make_c_project(d: Path, files: int = 30) -> None:
    for i in range(files):
        body = "\n".join(
            f"static double f{i}_{j}(double x) {{ double s = 0; for (int k = 0; k < {50 + j}; k++) "
            f"s += x * k / (k + 1.0); return s; }}" for j in range(60))
        calls = " + ".join(f"f{i}_{j}(x)" for j in range(60))
        (d / f"m{i}.c").write_text(f"{body}\ndouble mod{i}(double x) {{ return {calls}; }}\n")
    decls = "\n".join(f"double mod{i}(double);" for i in range(files))
    sums = " + ".join(f"mod{i}(1.5)" for i in range(files))
    (d / "main.c").write_text(f'#include <stdio.h>\n{decls}\nint main(void) {{ printf("%f\\n", {sums}); }}\n')
    objs = " ".join(f"m{i}.o" for i in range(files)) + " main.o"
    (d / "Makefile").write_text(f"prog: {objs}\n\tcc -o prog {objs}\n%.o: %.c\n\tcc -O2 -c $< -o $@\n"
                                "clean:\n\trm -f *.o prog\n")


def build_time(d: Path) -> float:
    subprocess.run(["make", "-s", "clean"], cwd=d, check=True)
    t0 = time.perf_counter()
    subprocess.run(["make", "-s", "-j2"], cwd=d, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def redis_rps(port: int, requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-q", "-n", str(requests), "-c", "50",
                          "-t", "set,get", "--csv"], capture_output=True, text=True, check=True, timeout=300).stdout
    rps = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line.startswith('"')]
    return sum(rps) / len(rps)


def overhead(rounds: int, requests: int, tmp: Path) -> dict[str, Any]:
    from ravn_core.testing import RedisServer

    proj = tmp / "cproj"
    proj.mkdir()
    make_c_project(proj)
    build_time(proj)  # warm the page cache
    redis = RedisServer().start()
    results: dict[str, dict[str, list[float]]] = {"redis_rps": {"off": [], "on": []},
                                                  "build_s": {"off": [], "on": []}}
    loaded: dict[str, Any] = {}
    agent_stats: list[dict[str, Any]] = []
    try:
        redis_rps(redis.port, requests // 4)  # warm-up
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for state in order:
                a = Agent() if state == "on" else None
                if a:
                    loaded = a.info
                rps = redis_rps(redis.port, requests)
                bt = build_time(proj)
                if a:
                    agent_stats.append(a.stop())
                results["redis_rps"][state].append(rps)
                results["build_s"][state].append(bt)
                log(f"  round {r + 1} {state:3}: redis {rps:,.0f} req/s, build {bt:.2f} s")
    finally:
        redis.stop()
    med = {k: {s: statistics.median(v[s]) for s in v} for k, v in results.items()}
    redis_slow = (med["redis_rps"]["off"] - med["redis_rps"]["on"]) / med["redis_rps"]["off"] * 100
    build_slow = (med["build_s"]["on"] - med["build_s"]["off"]) / med["build_s"]["off"] * 100
    return {"probes_loaded": loaded.get("ready", []), "probes_failed": loaded.get("failed", {}),
            "redis_rps_median": med["redis_rps"], "build_s_median": med["build_s"],
            "redis_slowdown_pct": round(redis_slow, 2), "build_slowdown_pct": round(build_slow, 2),
            "rounds": rounds, "raw": results,
            "agent_events": agent_stats[-1]["events"] if agent_stats else {}}


def main() -> int:
    ap = argparse.ArgumentParser(description="RAVN probe benchmarks")
    ap.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=3_000_000, help="syscalls in the throughput storm")
    ap.add_argument("--ring-kb", type=int, default=4096, help="ring buffer KiB for the throughput run")
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4, help="overhead: off/on pairs")
    ap.add_argument("--redis-requests", type=int, default=200_000)
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    if args.agent:
        return agent()
    if os.geteuid() != 0:
        print("bench/probes.py loads BPF programs: run as root", file=sys.stderr)
        return 3
    tmp = Path(tempfile.mkdtemp(prefix="ravn-bench-probes-"))
    bystander = subprocess.Popen(["sleep", "3600"])  # ravn_pid for (1)/(2): this process's children stay visible
    result: dict[str, Any] = {"bench": "probes", "machine": f"{os.cpu_count()} cpus, Linux {os.uname().release}"}
    try:
        storm = build_storm(tmp)
        log(f"1. throughput: {args.events:,} getppid, ebpf_syscall events mode, ring {args.ring_kb} KiB")
        result["throughput"] = throughput(storm, args.events, args.ring_kb, bystander.pid)
        t = result["throughput"]
        log(f"   probe {t['probe_events_per_s']:,}/s vs bare count-only {t['bare_count_only_events_per_s']:,}/s: "
            f"ratio {t['ratio']}; worst unaccounted {t['worst_unaccounted_fraction']:.5%}")
        log(f"2. latency: {args.latency_samples} getppid, one per 500 us")
        result["latency"] = latency(storm, args.latency_samples, bystander.pid)
        log(f"   p50 {result['latency']['p50_us']} us, p99 {result['latency']['p99_us']} us")
        if not args.skip_overhead:
            log(f"3. overhead: {args.rounds} interleaved off/on rounds (redis-benchmark -n {args.redis_requests} "
                "set,get -c 50; make -j2 of 31 C files)")
            result["overhead"] = overhead(args.rounds, args.redis_requests, tmp)
            o = result["overhead"]
            log(f"   probes loaded: {o['probes_loaded']} failed: {o['probes_failed']}")
            log(f"   redis slowdown {o['redis_slowdown_pct']}%, build slowdown {o['build_slowdown_pct']}%")
    finally:
        bystander.kill()
        bystander.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
