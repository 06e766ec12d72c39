#!/usr/bin/env python3
"""MEDIUM-equivalent false alarms per host-hour of an ONNX model on benign recordings (one per workload kind).

    .venv/bin/python bench/onnx_fa.py KIND=recording.jsonl [KIND=...] [--model PATH]

Each recording (scripts/record_benign.py --kinds KIND) is replayed through OnnxAnalyzer (evaluate.py): an alert
above 50 is what the model would raise as MEDIUM if it alerted on its own. Prints a Markdown table (kind,
hours, events, processes scored, reports, MEDIUM-equivalent, per host-hour) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))

from ravn_analyzers.onnx.analyzer import default_model_path
from ravn_analyzers.onnx.evaluate import evaluate, read_events


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recordings", nargs="+", metavar="KIND=JSONL")
    ap.add_argument("--model", default=default_model_path())
    args = ap.parse_args(argv)
    rows = {}
    total_h = total_m = 0.0
    print("| kind | hours | events | processes scored | reports (>= 50) | MEDIUM-equivalent (> 50) | per host-hour |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for item in args.recordings:
        kind, _, path = item.partition("=")
        ev = evaluate(args.model, read_events(path))
        rows[kind] = ev.summary()
        total_h += ev.hours
        total_m += ev.medium
        print(f"| {kind} | {ev.hours:.3f} | {ev.events} | {ev.processes_scored} | {ev.reports} | {ev.medium} | "
              f"{ev.per_hour:.0f} |")
        top: dict[str, int] = {}
        for a in ev.alerts:
            if a.score > 50:
                top[a.comm] = top.get(a.comm, 0) + 1
        rows[kind]["top_comms"] = sorted(top.items(), key=lambda kv: -kv[1])[:6]
    if total_h:
        print(f"| all | {total_h:.3f} | | | | {int(total_m)} | {total_m / total_h:.0f} |")
    print(json.dumps({"model": args.model, "kinds": rows,
                      "medium_per_hour_all": round(total_m / total_h, 1) if total_h else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
