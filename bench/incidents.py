"""Incident tracker cost: time per alert and memory at the bound, in process (no daemon, no kernel).

    .venv/bin/python bench/incidents.py [--alerts 200000] [--sessions 5000] [--rules 40]

Builds a process tree of ``--sessions`` sessions (a leader and four children each, through the tree's fork and
setsid events), then feeds ``IncidentTracker.process`` batches of 64 alerts drawn at random (fixed seed) from
``--rules`` rules (tags spread over the ATT&CK tactics) on random processes, one simulated second per batch, with
``tick`` once a simulated second: every session keeps alerting, so the open incidents stay at their bound
(``ravn.threat.max_incidents``) and one is evicted for almost every new one, the tracker's worst case. Reported:
CPU microseconds per alert (process + tick; process time, so other load on the machine does not count), open
incidents at the end, evictions, and the memory the tracker holds at the bound (a second pass under tracemalloc,
which slows allocation, so the timed pass runs without it). A last pass repeats one alert on one process (the
folding path). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ravn_core.components import Alert
from ravn_core.config import ThreatConfig
from ravn_core.proctree import ProcessTree
from ravn_core.threat import IncidentTracker

TAGS = ["T1059.004", "T1105", "T1003.008", "T1082", "T1136.001", "T1548.001", "T1070.002", "T1486", "T1611",
        "T1552.004"]


def build_tree(sessions: int) -> tuple[ProcessTree, list[int]]:
    tree = ProcessTree(max_size=sessions * 6 + 16)
    pids: list[int] = []
    ts = 0
    tree.update([{"evt.type": "fork", "evt.ts": 1, "proc.pid": 1, "proc.comm": "sshd", "fork.child_pid": 900}])
    for s in range(sessions):
        leader = 10_000 + 10 * s
        batch = [{"evt.type": "fork", "evt.ts": ts + 1, "proc.pid": 900, "proc.comm": "sshd",
                  "fork.child_pid": leader},
                 {"evt.type": "setsid", "evt.ts": ts + 2, "proc.pid": leader, "setsid.sid": leader}]
        for c in range(1, 5):
            batch.append({"evt.type": "fork", "evt.ts": ts + 2 + c, "proc.pid": leader, "proc.comm": "bash",
                          "fork.child_pid": leader + c})
        ts += 10
        tree.update(batch)
        pids += [leader + c for c in range(5)]
    return tree, pids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=200_000)
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--rules", type=int, default=40)
    args = ap.parse_args()
    rng = random.Random(7)
    tree, pids = build_tree(args.sessions)
    cfg = ThreatConfig()
    rules = [(f"rule_{i}", rng.choice((45, 55, 60, 65, 70, 85)), [TAGS[i % len(TAGS)]]) for i in range(args.rules)]
    batches = []
    for _ in range(args.alerts // 64):
        batch = []
        for _ in range(64):
            name, score, tags = rng.choice(rules)
            pid = rng.choice(pids)
            batch.append((name, score, tags, pid))
        batches.append(batch)

    def feed(tracker: IncidentTracker) -> float:
        elapsed, now = 0.0, 0.0
        for batch in batches:
            alerts = [Alert("analyzer_rules", n, s, f"{n} by {p}", pid=p, tags=t) for n, s, t, p in batch]
            t0 = time.process_time()
            tracker.process(alerts, now)
            tracker.tick(now)
            elapsed += time.process_time() - t0
            now += 1.0
        return elapsed

    tracker = IncidentTracker("bench", cfg, tree)
    elapsed = feed(tracker)  # timed without tracemalloc (it slows every allocation)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    traced = IncidentTracker("bench", cfg, tree)
    feed(traced)
    snap = tracemalloc.take_snapshot()
    held = sum(s.size_diff for s in snap.compare_to(base, "filename"))
    tracemalloc.stop()
    del traced
    n = len(batches) * 64
    per_alert_us = elapsed / n * 1e6

    fold = IncidentTracker("bench", cfg, tree)
    same = [Alert("analyzer_rules", "r", 60, "same", pid=pids[0], tags=["T1082"]) for _ in range(64)]
    t0 = time.process_time()
    for i in range(1000):
        fold.process(list(same), float(i))
    fold_us = (time.process_time() - t0) / (1000 * 64) * 1e6

    result = {
        "bench": "incidents", "alerts": n, "sessions": args.sessions, "rules": args.rules,
        "us_per_alert": round(per_alert_us, 2), "us_per_folded_alert": round(fold_us, 2),
        "open_incidents": len(tracker), "max_incidents": cfg.max_incidents,
        "evicted": tracker.counters["incidents_evicted"], "closed": tracker.counters["incidents_closed"],
        "host_level": tracker.level, "traced_mb": round(held / 1e6, 1),
    }
    print(f"{n} alerts over {args.sessions} sessions: {per_alert_us:.1f} us per alert "
          f"({fold_us:.1f} us when folded), {len(tracker)} open incidents (bound {cfg.max_incidents}, "
          f"{tracker.counters['incidents_evicted']} evicted), {held / 1e6:.1f} MB traced")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
