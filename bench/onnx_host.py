#!/usr/bin/env python3
"""The shipped model on this host: false alarms on an independent benign recording, detections on an
intrusion-like one (both made with scripts/record_benign.py, the second with --attack).

    .venv/bin/python bench/onnx_host.py --benign benign3.jsonl --attack attack.jsonl [--model PATH]

Two views. Offline: per process token stream as ``ravn train`` builds it, scored by model.score_sequences; a
process "alerts" when its score reaches the model's calibrated threshold at ``--fa-rate`` (what analyzer_onnx
maps to 50); processes too short for a score (under exit_min_events tokens) are counted apart. Through the
analyzer: the recording replayed through OnnxAnalyzer in batches of 1024 as ``ravn replay`` does (its own
process streams: an exited process is closed exit_grace_s after its exit by event time). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))

from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig, default_model_path
from ravn_analyzers.onnx.cli import read_sequences
from ravn_analyzers.onnx.model import Scorer, score_sequences
from ravn_analyzers.onnx.tokens import display

from ravn_core.components import BatchContext
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context


def through_analyzer(path: str, model: str) -> tuple[int, int, int]:
    """Replay a recording through OnnxAnalyzer as `ravn replay` does (batches of 1024, a final tick):
    (processes scored, alerts, distinct pids alerted)."""
    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=model), make_context("host"))
    tree = ProcessTree()
    with open(path, encoding="utf-8") as f:
        evs = [json.loads(line) for line in f if line.strip()]
    alerts = []
    now = 1_000_000.0
    for i in range(0, len(evs), 1024):
        batch = evs[i : i + 1024]
        tree.update(batch)
        alerts += an.analyze(batch, BatchContext("host", tree, now))
    alerts += an.tick(BatchContext("host", tree, now + 3600))
    return int(an.counters["processes_scored"]), len(alerts), len({a.pid for a in alerts})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benign", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--fa-rate", type=float, default=0.01)
    args = ap.parse_args(argv)
    scorer = Scorer(args.model)
    thr = scorer.info.calibration.threshold(args.fa_rate)
    res: dict[str, object] = {"model": f"{scorer.info.name} {scorer.info.version}", "threshold": round(thr, 4)}
    for label, path in (("benign", args.benign), ("attack", args.attack)):
        seqs, stats = read_sequences([path], min_tokens=1)
        scores = score_sequences(scorer, [scorer.encode(s) for s in seqs])
        scored = np.isfinite(scores)
        hits = scored & (scores >= thr)
        print(f"{label}: {stats['events']} events, {len(seqs)} processes, {int(scored.sum())} scored; "
              f"{int(hits.sum())} at or above the {args.fa_rate:.1%} threshold {thr:.3f} "
              f"({hits.sum() / max(1, scored.sum()):.2%} of scored)")
        res[f"{label}_processes"] = len(seqs)
        res[f"{label}_scored"] = int(scored.sum())
        res[f"{label}_alerting"] = int(hits.sum())
        n_scored, n_alerts, n_pids = through_analyzer(path, args.model)
        print(f"  through OnnxAnalyzer (as ravn replay): {n_scored} processes scored, {n_alerts} alerts "
              f"({n_alerts / max(1, n_scored):.2%} of scored), {n_pids} distinct pids")
        res[f"{label}_analyzer_scored"] = n_scored
        res[f"{label}_analyzer_alerts"] = n_alerts
        top = np.argsort(-np.nan_to_num(scores, nan=-1))[:12]
        for i in top:
            if not np.isfinite(scores[i]):
                continue
            toks = Counter(seqs[i])
            head = " ".join(display(t) for t in seqs[i][:14]) + (" ..." if len(seqs[i]) > 14 else "")
            common = ", ".join(display(t) for t, _ in toks.most_common(3))
            mark = "ALERT" if scores[i] >= thr else "     "
            print(f"   {scores[i]:6.3f} {mark} {len(seqs[i]):4d} tokens: {head}  (top: {common})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
