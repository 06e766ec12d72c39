"""Core pipeline throughput: source -> embedded transport -> trivial analyzer -> JSONL sink.

The source hands out pre-built batches of synthetic events (so the figure is the core's cost, not event
creation); the analyzer touches every event (reads evt.type and proc.pid) and raises an alert every 100,000
events, which goes to a JSONL sink. Prints events/s and RSS over the run; the last line is one JSON object.

    .venv/bin/python bench/pipeline.py --seconds 60 --batch 4096
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


class BenchSource(Source):
    def __init__(self, name: str, config: BenchSourceConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.pool = [[synthetic_event("open", seq=i, **{"file.path": "/etc/passwd", "file.flags": 0})
                      for i in range(config.batch)] for _ in range(config.pool)]
        self.i = 0

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> list[dict[str, Any]]:
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
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="ravn-bench-")
    host = PluginHost()
    host.register(BenchPlugin(), "bench")
    host.load(autoload=False)
    host.register_components()
    cfg = validate({
        "ravn": {"state_dir": out, "queue_batches": 64, "health_interval_s": 5},
        "sources": [{"plugin": "bench_source", "batch": args.batch}],
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
    t0 = time.monotonic()
    time.sleep(args.seconds)
    analyzed = rt.counters["analyzed"]
    elapsed = time.monotonic() - t0
    stats = rt.stop("bench")
    stop.set()
    rate = analyzed / elapsed
    warm = [r for t, r in rss if t >= min(10.0, args.seconds / 3)]
    growth = (warm[-1] - warm[0]) / warm[0] * 100 if len(warm) > 1 else 0.0
    peak = max((r for _, r in rss), default=rss_bytes())
    alerts = sum(1 for _ in open(f"{out}/alerts.jsonl"))
    unaccounted = stats["accepted"] - stats["dropped"] - stats["analyzed"]
    print(f"events analyzed: {stats['analyzed']:,} in {elapsed:.1f}s = {rate:,.0f} events/s "
          f"(batch {args.batch}); dropped {stats['dropped']:,}; unaccounted {unaccounted}; alerts {alerts}")
    print(f"RSS peak {peak / 1048576:.1f} MB; growth after warm-up {growth:+.2f}% "
          f"({len(rss)} samples, python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    print(json.dumps({"events_per_s": round(rate), "seconds": round(elapsed, 1), "batch": args.batch,
                      "accepted": stats["accepted"], "dropped": stats["dropped"], "analyzed": stats["analyzed"],
                      "unaccounted": unaccounted, "alerts": alerts, "rss_peak_mb": round(peak / 1048576, 1),
                      "rss_growth_pct": round(growth, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
