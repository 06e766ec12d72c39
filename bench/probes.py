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
   (off/on, on/off, ...) in one invocation; per metric the median over pairs of the relative change. Reported:
   wall-clock (throughput, build time) and the workload's CPU time (where BPF program cost lands: it runs in
   the syscalling task), plus the agent's own CPU. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
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

    from ravn_core.bpf.probe import BASE_TRACEPOINTS
    from ravn_core.testing import make_context

    cfg = SyscallConfig(mode="events", syscalls=["getppid"], ring_buffer_kb=ring_kb)

    class CountOnly(SyscallSource):
        """Same kernel program, loaded in this process; user space is BCC's own ring-buffer API with a callback
        that only counts (the daemon's loader child would hand back fds, and BCC's API needs its BPF object)."""

        count = 0
        bcc: Any = None

        def start(self) -> None:
            self._expected = [*BASE_TRACEPOINTS, *self.tracepoints()]
            self.bcc = self._load()

            def cb(_ctx: Any, _data: Any, _size: int) -> int:
                CountOnly.count += 1
                return 0

            self.bcc[b"ravn_events"].open_ring_buffer(cb)

        def drops(self) -> int:
            return int(sum(self.bcc[b"ravn_drops"][ctypes.c_int(0)]))

        def stop(self) -> None:
            self.bcc.cleanup()

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
            while True:
                if isinstance(src, CountOnly):
                    before = CountOnly.count
                    src.bcc.ring_buffer_poll(50)
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


def enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel counts run_time_ns/run_cnt of every BPF program while the
    returned fd is open (this process's lifetime); unlike the kernel.bpf_stats_enabled sysctl it cannot be left
    on by accident. Returns -1 when the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 30)()  # union bpf_attr, zeroed; enable_stats.type = BPF_STATS_RUN_TIME (0)
    return int(libc.syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr)))  # __NR_bpf, BPF_ENABLE_STATS


def bpf_run_time(by_probe: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """probe -> (sum of run_time_ns, sum of run_cnt) of its programs, from ``bpftool prog show -j``."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    stats = {int(p["id"]): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0))) for p in json.loads(out or "[]")}
    return {n: (sum(stats.get(i, (0, 0))[0] for i in ids), sum(stats.get(i, (0, 0))[1] for i in ids))
            for n, ids in by_probe.items()}


def agent() -> int:
    """--agent: load every installed ebpf_* source with its default config, poll them, stop at stdin EOF."""
    from ravn_core.bpf.probe import BccProbe
    from ravn_core.plugins import PluginHost
    from ravn_core.testing import make_context

    host = PluginHost()
    host.load()
    host.register_components()
    sources, failed = {}, {}
    for reg in host.sources:  # every ebpf_* probe
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
    by_probe = {n: sorted(s.program_ids()) for n, s in sources.items() if isinstance(s, BccProbe)}
    prog_ids = sorted(i for ids in by_probe.values() for i in ids)
    stats_fd = enable_bpf_stats()
    print(json.dumps({"ready": sorted(sources), "failed": failed, "prog_ids": prog_ids, "by_probe": by_probe,
                      "bpf_stats": stats_fd >= 0}), flush=True)
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
    """Probes held by a separate process (``script --agent *args``), so that the measuring process and its
    workloads stay outside RAVN's excluded tree. Its first stdout line (JSON, kept as ``info``) says it is ready;
    closing its stdin stops it, and its last line (JSON) is its report. Used by bench/security.py too."""

    def __init__(self, script: str = __file__, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, script, "--agent", *args], stdin=subprocess.PIPE,
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


def make_c_project(d: Path, files: int = 30, funcs: int = 30) -> None:
    for i in range(files):
        body = "\n".join(
            f"static double f{i}_{j}(double x) {{ double s = 0; for (int k = 0; k < {50 + j}; k++) "
            f"s += x * k / (k + 1.0); return s; }}" for j in range(funcs))
        calls = " + ".join(f"f{i}_{j}(x)" for j in range(funcs))
        (d / f"m{i}.c").write_text(f"{body}\ndouble mod{i}(double x) {{ return {calls}; }}\n")
    decls = "\n".join(f"double mod{i}(double);" for i in range(files))
    sums = " + ".join(f"mod{i}(1.5)" for i in range(files))
    (d / "main.c").write_text(f'#include <stdio.h>\n{decls}\nint main(void) {{ printf("%f\\n", {sums}); }}\n')
    objs = " ".join(f"m{i}.o" for i in range(files)) + " main.o"
    (d / "Makefile").write_text(f"prog: {objs}\n\tcc -o prog {objs}\n%.o: %.c\n\tcc -O2 -c $< -o $@\n"
                                "clean:\n\trm -f *.o prog\n")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(d: Path) -> tuple[float, float]:
    """(wall s, CPU s of make and the compilers) of a clean ``make -j2``."""
    subprocess.run(["make", "-s", "clean"], cwd=d, check=True)
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(["make", "-s", "-j2"], cwd=d, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _children_cpu() - c0


def redis_run(server_pid: int, port: int, requests: int) -> tuple[float, float]:
    """(requests/s, CPU s of redis-server + redis-benchmark per 100k requests) for SET and GET."""
    c0, s0 = _children_cpu(), _proc_cpu(server_pid)
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-q", "-n", str(requests), "-c", "50",
                          "-t", "set,get", "--csv"], capture_output=True, text=True, check=True, timeout=600).stdout
    cpu = (_children_cpu() - c0) + (_proc_cpu(server_pid) - s0)
    rps = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line.startswith('"')]
    return sum(rps) / len(rps), cpu / (2 * requests) * 100_000


def overhead(rounds: int, requests: int, tmp: Path) -> dict[str, Any]:
    """Interleaved off/on pairs; per metric the median over pairs of (on - off) / off.

    Wall-clock figures on a shared 2-CPU VM swing by 2x with other jobs; CPU time of the workload is far steadier
    and is where in-kernel probe cost lands (BPF programs run in the syscalling task, as its system time). The
    agent's own CPU (decoding events, flushing summaries) is reported beside it: on 2 CPUs it competes too."""
    from ravn_core.testing import RedisServer

    proj = tmp / "cproj"
    proj.mkdir()
    make_c_project(proj)
    build(proj)  # warm the page cache
    redis = RedisServer().start()
    assert redis.proc is not None
    metrics = ("redis_rps", "redis_cpu_per_100k", "build_s", "build_cpu_s")
    raw: dict[str, dict[str, list[float]]] = {m: {"off": [], "on": []} for m in metrics}
    agent_cpu: list[float] = []
    bpf_ns: list[int] = []
    bpf_runs: list[int] = []
    per_probe: dict[str, list[int]] = {}
    workload_cpu: list[float] = []
    loaded: dict[str, Any] = {}
    agent_stats: list[dict[str, Any]] = []
    try:
        redis_run(redis.proc.pid, redis.port, requests // 4)  # warm-up
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for state in order:
                a = Agent() if state == "on" else None
                a_cpu0 = _proc_cpu(a.proc.pid) if a else 0.0
                if a:
                    loaded = a.info
                    bpf0 = bpf_run_time(a.info["by_probe"])
                rps, rcpu = redis_run(redis.proc.pid, redis.port, requests)
                bt, bcpu = build(proj)
                if a:
                    agent_cpu.append(_proc_cpu(a.proc.pid) - a_cpu0)
                    bpf1 = bpf_run_time(a.info["by_probe"])
                    for name in bpf1:
                        per_probe.setdefault(name, [0, 0])
                        per_probe[name][0] += bpf1[name][0] - bpf0[name][0]
                        per_probe[name][1] += bpf1[name][1] - bpf0[name][1]
                    bpf_ns.append(sum(v[0] for v in bpf1.values()) - sum(v[0] for v in bpf0.values()))
                    bpf_runs.append(sum(v[1] for v in bpf1.values()) - sum(v[1] for v in bpf0.values()))
                    workload_cpu.append(rcpu * 2 * requests / 100_000 + bcpu)
                    agent_stats.append(a.stop())
                for m, v in zip(metrics, (rps, rcpu, bt, bcpu), strict=True):
                    raw[m][state].append(v)
                extra = (f", agent {agent_cpu[-1]:.2f} CPU-s, BPF programs {bpf_ns[-1] / 1e9:.3f} s in "
                         f"{bpf_runs[-1]:,} runs" if a else "")
                log(f"  round {r + 1} {state:3}: redis {rps:,.0f} req/s {rcpu:.3f} CPU-s/100k, "
                    f"build {bt:.2f} s {bcpu:.2f} CPU-s{extra}")
    finally:
        redis.stop()

    def pct(m: str, higher_is_worse: bool) -> float:
        ratios = [(on - off) / off if higher_is_worse else (off - on) / off
                  for on, off in zip(raw[m]["on"], raw[m]["off"], strict=True)]
        return round(statistics.median(ratios) * 100, 2)

    return {
        "probes_loaded": loaded.get("ready", []), "probes_failed": loaded.get("failed", {}), "rounds": rounds,
        "redis_throughput_slowdown_pct": pct("redis_rps", False),
        "redis_cpu_overhead_pct": pct("redis_cpu_per_100k", True),
        "build_wall_slowdown_pct": pct("build_s", True),
        "build_cpu_overhead_pct": pct("build_cpu_s", True),
        "agent_cpu_s_per_round_median": round(statistics.median(agent_cpu), 2) if agent_cpu else None,
        # In-kernel cost measured by the kernel itself (BPF_ENABLE_STATS), relative to the workloads' CPU time:
        # noise-free where wall-clock figures are not. It includes programs run for other tasks on the host.
        "bpf_run_time_s_per_round_median": round(statistics.median(bpf_ns) / 1e9, 4) if bpf_ns else None,
        "bpf_runs_per_round_median": statistics.median(bpf_runs) if bpf_runs else None,
        "bpf_ns_per_run": round(sum(bpf_ns) / max(1, sum(bpf_runs)), 1) if bpf_runs else None,
        "bpf_pct_of_workload_cpu": round(100 * sum(bpf_ns) / 1e9 / sum(workload_cpu), 3) if workload_cpu else None,
        "bpf_by_probe": {n: {"run_time_s": round(v[0] / 1e9, 4), "runs": v[1], "ns_per_run": round(v[0] / max(1, v[1]))}
                         for n, v in per_probe.items()},
        "agent_pct_of_workload_cpu": round(100 * sum(agent_cpu) / sum(workload_cpu), 2) if workload_cpu else None,
        "raw": raw, "agent_events_last_round": agent_stats[-1]["events"] if agent_stats else {},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="RAVN probe benchmarks")
    ap.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=3_000_000, help="syscalls in the throughput storm")
    ap.add_argument("--ring-kb", type=int, default=4096, help="ring buffer KiB for the throughput run")
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6, help="overhead: off/on pairs")
    ap.add_argument("--redis-requests", type=int, default=100_000)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="skip (1) and (2)")
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
        if not args.skip_throughput:
            storm = build_storm(tmp)
            log(f"1. throughput: {args.events:,} getppid, ebpf_syscall events mode, ring {args.ring_kb} KiB")
            result["throughput"] = throughput(storm, args.events, args.ring_kb, bystander.pid)
            t = result["throughput"]
            log(f"   probe {t['probe_events_per_s']:,}/s vs bare count-only "
                f"{t['bare_count_only_events_per_s']:,}/s: ratio {t['ratio']}; "
                f"worst unaccounted {t['worst_unaccounted_fraction']:.5%}")
            log(f"2. latency: {args.latency_samples} getppid, one per 500 us")
            result["latency"] = latency(storm, args.latency_samples, bystander.pid)
            log(f"   p50 {result['latency']['p50_us']} us, p99 {result['latency']['p99_us']} us")
        if not args.skip_overhead:
            log(f"3. overhead: {args.rounds} interleaved off/on rounds (redis-benchmark -n {args.redis_requests} "
                "set,get -c 50; make -j2 of 31 C files)")
            result["overhead"] = overhead(args.rounds, args.redis_requests, tmp)
            o = result["overhead"]
            log(f"   probes loaded: {o['probes_loaded']} failed: {o['probes_failed']}")
            log(f"   redis throughput slowdown {o['redis_throughput_slowdown_pct']}%, CPU per request "
                f"{o['redis_cpu_overhead_pct']:+}%; build wall {o['build_wall_slowdown_pct']:+}%, CPU "
                f"{o['build_cpu_overhead_pct']:+}% (medians of per-pair changes)")
            log(f"   BPF programs: {o['bpf_pct_of_workload_cpu']}% of the workloads' CPU time "
                f"({o['bpf_ns_per_run']} ns per run); agent user space: {o['agent_pct_of_workload_cpu']}%")
    finally:
        bystander.kill()
        bystander.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
