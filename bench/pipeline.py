"""Core pipeline throughput: source -> embedded transport -> trivial analyzer -> JSONL sink.

The source hands out pre-built batches of synthetic events (so the figure is the core's cost, not event
creation); the analyzer touches every event (reads evt.type and proc.pid) and raises an alert every 100,000
events, which goes to a JSONL sink. Prints events/s, the process's CPU per batch and RSS over the run; the last
line is one JSON object.

Saturated (the default): the source returns its next batch at once, so every queue stays full and no thread
ever sleeps; the figure is throughput. Paced (``--every-ms``): ``--sources`` sources each return a batch every
``--every-ms`` ms, so every batch wakes the threads that wait for it, as the probes' batches do (a busy probe
hands over one batch per ``batch_ms``, 10 ms); the figure is the CPU each batch costs between the stages.

    .venv/bin/python bench/pipeline.py --seconds 60 --batch 4096
    .venv/bin/python bench/pipeline.py --seconds 8 --batch 30 --sources 4 --every-ms 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

from ravn_core import hookimpl
from ravn_core.builtin.health import rss_bytes
from ravn_core.components import Alert, Analyzer, BatchContext, PluginConfig, RuntimeContext, Source
from ravn_core.config import validate
from ravn_core.plugins import PluginHost
from ravn_core.runtime import Runtime
from ravn_core.testing import synthetic_event


class BenchSourceConfig(PluginConfig):
    batch: int = 4096
    pool: int = 8
    every_ms: float = 0.0  # > 0: one batch per this many ms (the poll sleeps first)


class BenchSource(Source):
    def __init__(self, name: str, config: BenchSourceConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.pool = [[synthetic_event("open", seq=i, **{"file.path": "/etc/passwd", "file.flags": 0})
                      for i in range(config.batch)] for _ in range(config.pool)]
        self.i = 0

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> list[dict[str, Any]]:
        if self.config.every_ms:
            time.sleep(self.config.every_ms / 1000)
        self.i += 1
        return list(self.pool[self.i % len(self.pool)])  # a fresh list object, as a real decoder returns

    def stop(self) -> None:
        pass


class CountingAnalyzer(Analyzer):
    def __init__(self, name: str, config: PluginConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.events = 0

    def analyze(self, batch: list[dict[str, Any]], ctx: BatchContext) -> list[Alert]:
        opens = 0
        for ev in batch:
            if ev["evt.type"] == "open" and ev["proc.pid"]:
                opens += 1
        before = self.events
        self.events += opens
        if before // 100_000 != self.events // 100_000:
            return [Alert(self.name, "bench", 10, f"{self.events} events", pid=batch[0]["proc.pid"])]
        return []


class BenchPlugin:
    @hookimpl
    def ravn_register_sources(self, registry: Any) -> None:
        registry.add("bench_source", BenchSource, BenchSourceConfig)

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        registry.add("bench_analyzer", CountingAnalyzer, PluginConfig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--sources", type=int, default=1, help="sources at once (default 1)")
    ap.add_argument("--every-ms", type=float, default=0.0, help="paced: each source returns a batch every this "
                    "many ms (default 0: saturated)")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="ravn-bench-")
    host = PluginHost()
    host.register(BenchPlugin(), "bench")
    host.load(autoload=False)
    host.register_components()
    cfg = validate({
        "ravn": {"state_dir": out, "queue_batches": 64, "health_interval_s": 5},
        "sources": [{"plugin": "bench_source", "name": f"bench{i}", "batch": args.batch, "every_ms": args.every_ms}
                    for i in range(args.sources)],
        "analyzers": [{"plugin": "bench_analyzer"}],
        "sinks": [{"plugin": "jsonl", "path": f"{out}/alerts.jsonl"}],
    }, host.registries())
    rt = Runtime(cfg, host)
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            rss.append((time.monotonic() - t0, rss_bytes()))

    sampler = threading.Thread(target=sample, daemon=True)
    rt.start()
    sampler.start()
    time.sleep(min(1.0, args.seconds / 5))  # started: the loader, the first batches
    t0, cpu0 = time.monotonic(), os.times()
    analyzed0, batches0 = rt.counters["analyzed"], rt.counters["analyzed_batches"]
    time.sleep(args.seconds)
    analyzed = rt.counters["analyzed"] - analyzed0
    batches = rt.counters["analyzed_batches"] - batches0
    cpu1 = os.times()
    elapsed = time.monotonic() - t0
    cpu = cpu1.user - cpu0.user + cpu1.system - cpu0.system
    us_per_batch = 1e6 * cpu / batches if batches else 0.0
    stats = rt.stop("bench")
    stop.set()
    rate = analyzed / elapsed
    warm = [r for t, r in rss if t >= min(10.0, args.seconds / 3)]
    growth = (warm[-1] - warm[0]) / warm[0] * 100 if len(warm) > 1 else 0.0
    peak = max((r for _, r in rss), default=rss_bytes())
    alerts = sum(1 for _ in open(f"{out}/alerts.jsonl"))
    unaccounted = stats["accepted"] - stats["dropped"] - stats["analyzed"]
    print(f"events analyzed: {stats['analyzed']:,}, {analyzed:,} in the {elapsed:.1f}s measured = {rate:,.0f} "
          f"events/s (batch {args.batch}, {args.sources} source(s), "
          f"{'every ' + str(args.every_ms) + ' ms' if args.every_ms else 'saturated'}); CPU {1e3 * cpu / elapsed:.1f} "
          f"ms/s = {us_per_batch:.1f} us/batch; dropped {stats['dropped']:,}; unaccounted {unaccounted}; "
          f"alerts {alerts}")
    print(f"RSS peak {peak / 1048576:.1f} MB; growth after warm-up {growth:+.2f}% "
          f"({len(rss)} samples, python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    print(json.dumps({"events_per_s": round(rate), "seconds": round(elapsed, 1), "batch": args.batch,
                      "sources": args.sources, "every_ms": args.every_ms, "cpu_ms_per_s": round(1e3 * cpu / elapsed, 1),
                      "us_per_batch": round(us_per_batch, 1),
                      "accepted": stats["accepted"], "dropped": stats["dropped"], "analyzed": stats["analyzed"],
                      "unaccounted": unaccounted, "alerts": alerts, "rss_peak_mb": round(peak / 1048576, 1),
                      "rss_growth_pct": round(growth, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
