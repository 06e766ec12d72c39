#!/usr/bin/env python3
"""The shipped model on this host: false alarms on an independent benign recording, detections on an
intrusion-like one (both made with scripts/record_benign.py, the second with --attack).

    .venv/bin/python bench/onnx_host.py --benign benign3.jsonl --attack attack.jsonl [--model PATH]

Per process (token stream as ``ravn train`` and the analyzer build it), scored as the analyzer scores it
(model.score_sequences); a process "alerts" when its score reaches the model's calibrated threshold at
``--fa-rate`` (what analyzer_onnx maps to 50). Processes too short for a score (under exit_min_events tokens)
are counted apart. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))

from ravn_analyzers.onnx.analyzer import default_model_path
from ravn_analyzers.onnx.cli import read_sequences
from ravn_analyzers.onnx.model import Scorer, score_sequences
from ravn_analyzers.onnx.tokens import display


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
