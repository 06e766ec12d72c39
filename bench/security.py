#!/usr/bin/env python3
"""ebpf_security overhead and event rates.

    sudo .venv/bin/python bench/security.py                # 4 interleaved rounds (~3 min)
    sudo .venv/bin/python bench/security.py --rounds 2

Per round, in rotating order, three states: ``off`` (no probe), ``default`` (ebpf_security with its default
config) and ``raw`` (default + ``module_hook: raw``, i.e. a program on raw_syscalls:sys_enter). In each state:
- redis-benchmark against a local redis-server (``-t set,get -c 50 -n N``, mean of the two req/s figures);
- an exec storm: a shell running /bin/true N times (fork + exec + exit, every program of the probe on the path).
The probe runs in a separate agent process, as RAVN does (its own pid excluded, a poll thread, batches counted
by event type and discarded). Reported: medians per state, slowdowns vs off, and the events per type the agent
saw during the last ``default`` round. Then, with kernel.bpf_stats_enabled=1, one more redis run per probe state
gives the BPF programs' own run time (bpftool run_time_ns): the kernel-side cost without the noise of a shared
machine, and the same for an exec storm (with the agent's own CPU time: decoding every event in Python). The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probes import Agent  # noqa: E402 - bench/ is sys.path[0] when run as a script

STATES = ("off", "default", "raw")


def log(msg: str) -> None:
    print(msg, flush=True)


def agent(state: str) -> int:
    """--agent STATE: run the probe until stdin closes; print per-type event counts and health."""
    from ravn_ebpf_security.config import SecurityConfig
    from ravn_ebpf_security.source import SecuritySource

    from ravn_core.testing import make_context

    cfg = SecurityConfig(module_hook="raw") if state == "raw" else SecurityConfig()
    src = SecuritySource("ebpf_security", cfg, make_context("bench", ravn_pid=os.getpid()))
    src.start()
    counts: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            for e in src.poll(100):
                counts[e["evt.type"]] += 1

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    ids = own_prog_ids()
    stats0 = prog_stats(ids)
    cpu0 = os.times()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
    stop.set()
    t.join(5)
    cpu1 = os.times()
    stats1 = prog_stats(ids)
    health = src.health().counters
    src.stop()
    runs = {}
    for pid, (name, cnt, ns) in stats1.items():
        c0, n0 = stats0.get(pid, (name, 0, 0))[1:]
        if cnt - c0:
            runs[name] = {"runs": cnt - c0, "ns": ns - n0}
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(json.dumps({"events": dict(counts), "health": health, "bpf": runs, "agent_cpu_s": round(cpu, 3)}),
          flush=True)
    return 0


def own_prog_ids() -> set[int]:
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


def prog_stats(ids: set[int]) -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_cnt, run_time_ns) of our programs (counted only while kernel.bpf_stats_enabled=1)."""
    out = subprocess.run(["bpftool", "prog", "list", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: (p.get("name", ""), p.get("run_cnt", 0), p.get("run_time_ns", 0))
            for p in json.loads(out or "[]") if p["id"] in ids}


def redis_rps(port: int, requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-q", "-n", str(requests), "-c", "50",
                          "-t", "set,get", "--csv"], capture_output=True, text=True, check=True, timeout=300).stdout
    rps = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line.startswith('"')]
    return sum(rps) / len(rps)


def exec_storm(n: int) -> float:
    """Seconds for a shell to fork+exec /bin/true n times."""
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"], check=True,
                   timeout=300)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description="ebpf_security overhead")
    ap.add_argument("--agent", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--redis-requests", type=int, default=200_000)
    ap.add_argument("--execs", type=int, default=2000)
    args = ap.parse_args()
    if args.agent:
        return agent(args.agent)
    from ravn_core.testing import RedisServer

    res: dict[str, dict[str, list[float]]] = {"redis_rps": {s: [] for s in STATES},
                                              "exec_storm_s": {s: [] for s in STATES}}
    seen: dict[str, Any] = {}
    bpf_cost: dict[str, Any] = {}
    bpf_exec_cost: dict[str, Any] = {}
    agent_cpu: dict[str, list[float]] = {s: [] for s in STATES[1:]}
    redis = RedisServer().start()
    try:
        redis_rps(redis.port, args.redis_requests // 4)  # warm-up
        exec_storm(args.execs // 4)
        for r in range(args.rounds):
            order = STATES[r % 3:] + STATES[:r % 3]
            for state in order:
                a = Agent(__file__, state) if state != "off" else None
                rps = redis_rps(redis.port, args.redis_requests)
                storm = exec_storm(args.execs)
                if a:
                    out = a.stop()
                    agent_cpu[state].append(out["agent_cpu_s"])
                    if state == "default":
                        seen = out
                res["redis_rps"][state].append(rps)
                res["exec_storm_s"][state].append(storm)
                log(f"  round {r + 1} {state:7}: redis {rps:,.0f} req/s, {args.execs} execs in {storm:.2f} s")
        # kernel-side cost, measured directly: BPF run time per program during one redis run and one exec storm
        # per probe state
        stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
        old = stats_path.read_text().strip()
        stats_path.write_text("1")
        try:
            for state in STATES[1:]:
                a = Agent(__file__, state)
                t0 = time.perf_counter()
                redis_rps(redis.port, args.redis_requests)
                wall = time.perf_counter() - t0
                out = a.stop()
                total_ns = sum(v["ns"] for v in out["bpf"].values())
                bpf_cost[state] = {"wall_s": round(wall, 2), "bpf_ms": round(total_ns / 1e6, 2),
                                   "bpf_cpu_pct_of_one_core": round(total_ns / 1e9 / wall * 100, 3),
                                   "ns_per_request": round(total_ns / (2 * args.redis_requests), 1),
                                   "programs": out["bpf"]}
                log(f"  bpf stats {state:7}: {total_ns / 1e6:.1f} ms of BPF time in {wall:.1f} s of redis-benchmark")
                a = Agent(__file__, state)
                wall = exec_storm(args.execs)
                out = a.stop()
                total_ns = sum(v["ns"] for v in out["bpf"].values())
                bpf_exec_cost[state] = {"wall_s": round(wall, 2), "bpf_ms": round(total_ns / 1e6, 2),
                                        "ns_per_exec": round(total_ns / args.execs), "agent_cpu_s": out["agent_cpu_s"],
                                        "events": out["events"], "programs": out["bpf"]}
                log(f"  bpf stats {state:7}: {total_ns / 1e6:.1f} ms of BPF time for {args.execs} execs; agent "
                    f"{out['agent_cpu_s']:.2f} s CPU")
        finally:
            stats_path.write_text(old)
    finally:
        redis.stop()
    med = {k: {s: statistics.median(v[s]) for s in STATES} for k, v in res.items()}
    off_rps, off_storm = med["redis_rps"]["off"], med["exec_storm_s"]["off"]
    summary = {
        "redis_rps_median": med["redis_rps"], "exec_storm_s_median": med["exec_storm_s"],
        "redis_slowdown_pct": {s: round((off_rps - med["redis_rps"][s]) / off_rps * 100, 2) for s in STATES[1:]},
        "exec_slowdown_pct": {s: round((med["exec_storm_s"][s] - off_storm) / off_storm * 100, 2)
                              for s in STATES[1:]},
        "bpf_cost_during_redis": bpf_cost,
        "bpf_cost_during_exec_storm": bpf_exec_cost,
        "agent_cpu_s_per_round_median": {k: statistics.median(v) for k, v in agent_cpu.items()},
        "default_events_last_round": seen.get("events", {}),
        "default_health_last_round": seen.get("health", {}),
        "rounds": args.rounds, "redis_requests": args.redis_requests, "execs": args.execs, "raw": res,
    }
    log(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
