#!/usr/bin/env python3
"""Event-to-alert latency of analyzer_onnx at a steady event rate, model on, in real time on one thread.

    .venv/bin/python bench/onnx_latency.py [--rate 100000] [--seconds 10] [--model PATH] [--batch-ms 10]

A generator paces synthetic events at ``--rate`` events/s in batches every ``--batch-ms`` (as a source poll
would hand them over): 90% ``syscall`` events (one token each) from ``--procs`` busy processes replaying benign
token sequences of the model's own vocabulary, 10% other probe events (exec, open, connect, fork, exit). Every
second, one "intruder" process starts emitting a random syscall sequence. Each batch goes through
``OnnxAnalyzer.analyze`` on this thread (tick once a second), exactly as the analysis thread calls it.

Latency of an event = time its analyze() call returned - time the event happened; a batch handed over at t
holds events from (t - batch_ms, t], and every event is counted as the oldest one (t - batch_ms): the batching
delay counts in full, and a loop that falls behind its schedule shows as queueing delay.
Reported: p50/p99/max over all events, the same for the events that raised an alert, intruders
caught, CPU share of the analysis thread, batches over the latency budget. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))

from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig
from ravn_analyzers.onnx.model import Scorer

from ravn_core.components import BatchContext
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=100_000, help="events per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch-ms", type=float, default=10.0, help="a source poll hands over a batch this often")
    ap.add_argument("--procs", type=int, default=500, help="busy benign processes")
    ap.add_argument("--model", default="default", help="model file (default: the packaged model)")
    args = ap.parse_args(argv)

    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=args.model), make_context("latency"))
    if an.scorer is None:
        print(f"onnx_latency: no usable model: {an.reason}", file=sys.stderr)
        return 1
    scorer: Scorer = an.scorer
    vocab = [t for t in scorer.info.vocab if t.isdigit()] or ["0", "1", "3"]
    rng = random.Random(0)
    # benign processes: each loops over a fixed sequence of the model's syscalls (a regular program)
    patterns = [[int(rng.choice(vocab[:20])) for _ in range(rng.randint(3, 12))] for _ in range(50)]
    procs = [(10_000 + i, patterns[i % len(patterns)]) for i in range(args.procs)]
    pos = [0] * len(procs)
    others = [
        {"evt.type": "exec", "exec.filename": "/usr/bin/git", "exec.ret": 0},
        {"evt.type": "open", "file.path": "/etc/passwd", "file.write": False},
        {"evt.type": "connect", "net.daddr": "127.0.0.1", "net.dport": 6379, "net.ret": 0},
        {"evt.type": "fork", "fork.child_pid": 1},
    ]
    tree = ProcessTree()
    per_batch = max(1, int(args.rate * args.batch_ms / 1000))
    # a pool of pre-built batches replayed in order (building dicts is the source's cost, not the analyzer's)
    pool: list[list[dict[str, Any]]] = []
    for _ in range(100):
        batch: list[dict[str, Any]] = []
        for _ in range(per_batch):
            if rng.random() < 0.9:
                k = rng.randrange(len(procs))
                pid, pat = procs[k]
                batch.append({"evt.type": "syscall", "proc.pid": pid, "proc.comm": "worker",
                              "syscall.nr": pat[pos[k] % len(pat)]})
                pos[k] += 1
            else:
                pid = procs[rng.randrange(len(procs))][0]
                batch.append({**rng.choice(others), "proc.pid": pid, "proc.comm": "worker"})
        pool.append(batch)
    odd = [*vocab, "437", "321", "101"]
    lat_all: list[float] = []
    lat_alert: list[float] = []
    alerts_total = 0
    intruders: dict[int, float] = {}
    caught: dict[int, float] = {}
    intruder_pid = 90_000
    period = args.batch_ms / 1000
    n_batches = int(args.seconds / period)
    start = time.perf_counter()
    cpu0 = time.thread_time()
    n_events = 0
    for k in range(1, n_batches + 1):
        due = start + k * period  # batch k is handed over now; its events happened in the last period
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        batch = pool[k % len(pool)]
        if k % int(1 / period) == 0:  # a new intruder every second
            intruders[intruder_pid] = due - period
            intruder_pid += 1
        extra = [{"evt.type": "syscall", "proc.pid": ipid, "proc.comm": "intruder", "syscall.nr": int(rng.choice(odd))}
                 for ipid in intruders if ipid not in caught for _ in range(40)]
        if extra:
            batch = batch + extra
        n_events += len(batch)
        ctx = BatchContext("bench", tree, time.time())
        alerts = an.analyze(batch, ctx)
        if k % int(1 / period) == 0:
            alerts += an.tick(ctx)
        done = time.perf_counter()
        oldest = due - period
        lat_all.append(done - oldest)
        alerts_total += len(alerts)
        for a in alerts:
            lat_alert.append(done - oldest)
            if a.pid in intruders and a.pid not in caught:
                caught[a.pid] = done - intruders[a.pid]
    wall = time.perf_counter() - start
    cpu = time.thread_time() - cpu0
    # a batch's latency applies to each of its events (all were generated at gen_t)
    la = np.array(lat_all) * 1000
    h = an.health()
    res = {
        "rate_target": args.rate, "rate_achieved": round(n_events / wall), "events": n_events,
        "batch_events": per_batch, "p50_ms": round(float(np.percentile(la, 50)), 2),
        "p99_ms": round(float(np.percentile(la, 99)), 2), "max_ms": round(float(la.max()), 2),
        "alert_p99_ms": round(float(np.percentile(np.array(lat_alert) * 1000, 99)), 2) if lat_alert else None,
        "alerts": alerts_total, "intruders": len(intruders), "intruders_caught": len(caught),
        "intruder_time_to_alert_p50_s": round(float(np.median(list(caught.values()))), 3) if caught else None,
        "analysis_cpu_share": round(cpu / wall, 3), "runs": h.counters["runs"], "windows": h.counters["windows"],
        "max_run_ms": round(h.counters["max_run_ms"], 2), "over_budget": h.counters["over_budget"],
        "health": h.state, "model": f"{scorer.info.name} {scorer.info.version}",
    }
    print(f"{n_events} events in {wall:.1f} s ({res['rate_achieved']:,} events/s, batches of {per_batch}); "
          f"event->analyzed latency p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms; "
          f"{alerts_total} alerts (p99 {res['alert_p99_ms']} ms); intruders caught {len(caught)}/{len(intruders)}; "
          f"analysis thread CPU {res['analysis_cpu_share']:.0%}; {res['runs']} session.run, "
          f"{res['windows']} windows, max run {res['max_run_ms']} ms, {res['over_budget']} over budget; "
          f"health {h.state}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
