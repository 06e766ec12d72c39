"""Detection coverage: every attack simulation of tests/scenarios against one real daemon, then the benign
workload. Needs root (real probes).

    sudo .venv/bin/python bench/detect.py [--analyzers rules|onnx|both] [--only NAME ...] [--markdown]

Prints the coverage table (technique, scenario, detected, level, latency, the scenario's incident: the highest level
and score its incidents reached and their rules, and one column per analyzer: the rules engine and the ML model),
the benign workload's alerts and incidents, the daemon's event counters (accepted, dropped in the daemon and in the
kernel: events lost under load make a run suspect), and as the last line one JSON object with at least
``scenarios``, ``detected``, ``benign_high`` and ``benign_medium`` (alerts), ``incident_high`` (scenarios whose
incident reached HIGH), ``benign_incident_level`` (the highest level a benign incident reached: the host level it
caused) and ``events``.

A scenario counts as detected when an alert of at least MEDIUM attributed to it carries its ATT&CK technique;
for the ML model (whose alerts may carry no technique) any MEDIUM+ alert attributed to it counts in its column.
Latency is from the triggering event's kernel timestamp to the alert line appearing in the jsonl sink.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benign as benign_kinds
from ravn_core.threat import incident_line
from tests.scenarios.harness import LEVELS, Daemon, Result
from tests.scenarios.simulations import ATTACKS, BENIGN_STEPS, SCENARIOS

ANALYZER_NAMES = {"rules": "analyzer_rules", "onnx": "analyzer_onnx"}


def _best(alerts: list[dict[str, Any]], analyzer: str, technique: str | None) -> dict[str, Any] | None:
    ok = [a for a in alerts if a.get("analyzer") == analyzer and LEVELS.get(a.get("level", "LOW"), 0) >= 1
          and (technique is None or technique in a.get("tags", []))]
    return max(ok, key=lambda a: (LEVELS[a["level"]], -a["_seen"])) if ok else None


def _cell(a: dict[str, Any] | None) -> str:
    if a is None:
        return "-"
    lat = max(0.0, a["_seen"] - float(a["ts"])) * 1000
    return f"{a['level']} {a['rule']} ({lat:.0f} ms)"


def _incident_cell(r: Result) -> str:
    if not r.incidents:
        return "-"
    worst = r.incidents[0]
    more = f" +{len(r.incidents) - 1}" if len(r.incidents) > 1 else ""
    return (f"{r.incident_level} {float(worst.get('peak', worst.get('score', 0))):.0f} "
            f"({len(worst.get('rules') or [])} rules){more}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--analyzers", choices=("rules", "onnx", "both"), default="rules",
                    help="which analyzers the daemon runs (the ML engineer's model: onnx)")
    ap.add_argument("--only", nargs="*", help="scenario names (default: all)")
    ap.add_argument("--no-benign", action="store_true", help="skip the benign workload")
    ap.add_argument("--benign-kinds", default=",".join(k for k in benign_kinds.KINDS
                                                       if k not in benign_kinds.TRAINED_KINDS),
                    help="bench/benign.py kinds run after the suite's own benign workload (comma-separated, "
                         "'' for none); default: every kind the model was not trained on")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/DETECTIONS.md)")
    args = ap.parse_args()
    names = args.only or ATTACKS
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(unknown)}")

    t0 = time.time()
    daemon = Daemon(args.analyzers)
    startup = time.time() - t0
    results: list[Result] = []
    benign: Result | None = None
    try:
        # the canary waits for rule alerts; with the model alone, wait for the start-up backlog instead
        warm = daemon.warm_up() if args.analyzers != "onnx" else (time.sleep(5.0) or 5.0)
        for n in names:
            results.append(daemon.run(SCENARIOS[n], wait_s=10.0 if args.analyzers == "rules" else 3.0))
            print(f"  {n}: {'detected' if results[-1].detected else 'MISSED'}", file=sys.stderr)
        if args.analyzers != "rules":
            # the model scores a process when its window fills, at its exit (+ exit_grace_s) or after idle_flush_s
            # of silence: give every simulation that long, then attribute again
            time.sleep(15.0)
            for r in results:
                r.alerts = daemon.attributed(r.root_pid, r.cgroup_id)
        if not args.no_benign:
            benign = daemon.run_benign(kinds=args.benign_kinds)
            if args.analyzers != "rules":  # the model's verdicts on the benign processes come at their exits
                time.sleep(15.0)
                benign.alerts = daemon.attributed(benign.root_pid, benign.cgroup_id)
        for r in [*results, *([benign] if benign else [])]:
            r.incidents = daemon.incidents_of(r.alerts)
    finally:
        rc = daemon.stop()
        try:  # the daemon's final counters: events lost under load make a measurement suspect
            final = json.loads((daemon.base / "state" / "status.json").read_text())["stats"]
            drops = {"accepted": final["accepted"], "dropped": final["dropped"],
                     "kernel_drops": sum(s.get("kernel_drops", 0) for s in final["sources"].values())}
        except (OSError, ValueError, KeyError, AttributeError):
            drops = {}
        daemon.cleanup()

    cols = ["technique", "scenario", "detected", "level", "latency", "incident", "rules", "ml (onnx)"]
    rows = []
    for r in results:
        levels = [a["level"] for a in r.matching()]
        rows.append([
            r.scenario.technique, r.scenario.name, "yes" if r.detected else "NO",
            max(levels, key=LEVELS.__getitem__) if levels else "-",
            f"{r.latency_s * 1000:.0f} ms" if r.latency_s is not None else "-",
            _incident_cell(r),
            _cell(_best(r.alerts, ANALYZER_NAMES["rules"], r.scenario.technique))
            if args.analyzers != "onnx" else "n/a",
            _cell(_best(r.alerts, ANALYZER_NAMES["onnx"], None)) if args.analyzers != "rules" else "n/a",
        ])
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))

    benign_alerts = benign.alerts if benign else []
    by_level = {lvl: [a for a in benign_alerts if a.get("level") == lvl] for lvl in LEVELS}
    if benign is not None:
        kinds = f"; bench/benign.py kinds: {args.benign_kinds}" if args.benign_kinds else ""
        print(f"\nbenign workload ({', '.join(BENIGN_STEPS)}{kinds}): {len(by_level['HIGH'])} HIGH, "
              f"{len(by_level['MEDIUM'])} MEDIUM, {len(by_level['LOW'])} LOW"
              + (f"; workload error: {benign.error}" if benign.error else ""))
        for a in sorted(benign_alerts, key=lambda a: -LEVELS[a["level"]]):
            print(f"  {a['level']:6} {a['analyzer']}/{a['rule']}: {a['description']}")
        print(f"benign incidents: {len(benign.incidents)}, highest level {benign.incident_level}")
        for inc in benign.incidents:
            print(f"  {incident_line(inc)}")

    if drops:
        print(f"daemon events: {drops['accepted']} accepted, {drops['dropped']} dropped in the daemon, "
              f"{drops['kernel_drops']} dropped in the kernel")
    lat = [r.latency_s * 1000 for r in results if r.latency_s is not None]
    detected_by = {k: sum(1 for r in results if _best(r.alerts, v, r.scenario.technique if k == "rules" else None))
                   for k, v in ANALYZER_NAMES.items()}
    summary = {
        "bench": "detect", "analyzers": args.analyzers, "scenarios": len(results),
        "detected": sum(r.detected for r in results),
        "detected_rules": detected_by["rules"] if args.analyzers != "onnx" else None,
        "detected_onnx": detected_by["onnx"] if args.analyzers != "rules" else None,
        "missed": [r.scenario.name for r in results if not r.detected],
        "simulation_errors": {r.scenario.name: r.error for r in results if r.error},
        "latency_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "latency_max_ms": round(max(lat), 1) if lat else None,
        "benign_high": len(by_level["HIGH"]), "benign_medium": len(by_level["MEDIUM"]),
        "benign_low": len(by_level["LOW"]),
        "incident_high": sum(r.incident_level == "HIGH" for r in results),
        "incident_levels": {r.scenario.name: r.incident_level for r in results},
        "benign_incident_level": benign.incident_level if benign else None,
        "benign_incidents": [incident_line(i) for i in benign.incidents] if benign else [],
        "benign_alerts": [f"{a['level']} {a['rule']}: {a['description']}" for a in benign_alerts],
        "events": drops,
        "daemon_startup_s": round(startup, 1), "warm_up_s": round(warm, 1), "daemon_exit": rc,
        "total_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))
    return 0 if (summary["detected"] == len(results) and summary["benign_high"] == 0
                 and summary["benign_incident_level"] != "HIGH") else 1


if __name__ == "__main__":
    sys.exit(main())
