"""``ravn learn``: a learning period. Record this host, train a model on it, measure its false alarms per
host-hour on a held-back part of the recording, and write the model with that measurement in its metadata.

    sudo ravn learn --config /etc/ravn/ravn.yaml --duration 24h --output /var/lib/ravn/host.onnx
    ravn learn --events recorded.jsonl --output host.onnx          # from an existing `ravn record` file

The recording is split by time (``evt.ts``): the first part trains the model (``ravn train``'s code, which also
holds back 20% of those processes for its per-process calibration), the next ``--calibration`` share sets the
model's two thresholds so that it would have raised at most half the budget there, and the last ``--holdout``
share, never seen by training or calibration, measures MEDIUM-equivalent false alarms per host-hour
(evaluate.py). The model's ``ravn.learning`` metadata records the host, the thresholds, the measured rate and
whether the budget (at most ``--budget`` = 1 MEDIUM per host-hour, over at least ``--min-heldout-hours``) was
met; analyzer_onnx lets the model alert on its own (``own_alerts: true``) only then. A JSON report is written
beside the model (``<output>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ravn_core.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``2d``; ValueError naming the text otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"duration {text!r}: use a number with s, m, h or d (e.g. 24h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def add_learn_command(subparsers: Any) -> None:
    p = subparsers.add_parser("learn", help="learning period: record this host, train, measure false alarms",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--config", "-c", help="config whose sources record (the daemon's, for the same tokens)")
    p.add_argument("--duration", type=parse_duration, help="how long to record, e.g. 24h (with --config)")
    p.add_argument("--events", help="use this `ravn record` file instead of recording")
    p.add_argument("--output", required=True, help="where to write the model (its report: <output>.json)")
    p.add_argument("--recording", help="where to keep the recording (default: beside the model, then removed)")
    p.add_argument("--host", default=socket.gethostname(), help="the host the model is for (default: this one)")
    p.add_argument("--holdout", type=float, default=0.25, help="last share of the time held back to measure")
    p.add_argument("--calibration", type=float, default=0.15, help="share before it that sets the thresholds")
    p.add_argument("--budget", type=float, default=1.0, help="MEDIUM false alarms per host-hour allowed (max 1)")
    p.add_argument("--min-heldout-hours", type=float, default=1.0,
                   help="a shorter held-back part cannot show the budget is met")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tuned value)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.set_defaults(func=cmd_learn)


def split_by_time(path: str, shares: tuple[float, float], out_dir: str) -> tuple[list[str], list[float]]:
    """Write the events of ``path`` into three files by ``evt.ts``: before the last ``sum(shares)`` of the
    span, then ``shares[0]``, then the last ``shares[1]``. Returns (paths, hours of each part)."""
    from ravn_analyzers.onnx.evaluate import read_events

    lo = hi = 0
    for ev in read_events(path):
        ts = ev.get("evt.ts")
        if isinstance(ts, int) and ts > 0:
            lo = ts if not lo else min(lo, ts)
            hi = max(hi, ts)
    if hi <= lo:
        raise ValueError(f"{path}: no event timestamps (evt.ts) to split by")
    span = hi - lo
    cuts = [hi - span * (shares[0] + shares[1]), hi - span * shares[1]]
    paths = [os.path.join(out_dir, f"{name}.jsonl") for name in ("train", "calibration", "heldout")]
    files = [open(p, "w", encoding="utf-8") for p in paths]
    try:
        part = 0
        for ev in read_events(path):
            ts = ev.get("evt.ts")
            if isinstance(ts, int) and ts > 0:
                part = 0 if ts < cuts[0] else 1 if ts < cuts[1] else 2
            files[part].write(json.dumps(ev, separators=(",", ":")) + "\n")
    finally:
        for f in files:
            f.close()
    hours = [(cuts[0] - lo) / 3.6e12, (cuts[1] - cuts[0]) / 3.6e12, (hi - cuts[1]) / 3.6e12]
    return paths, hours


def budget_thresholds(scores: list[float], hours: float, per_hour: float) -> tuple[float, float]:
    """Thresholds (nats at 50, at 75) under which at most ``per_hour * hours`` of these process scores (the
    calibration part's) would have been above 50: just above the (k+1)-th highest score."""
    top = sorted((s for s in scores if math.isfinite(s)), reverse=True)
    if not top:
        raise ValueError("no process in the calibration part was long enough for a score; record longer")
    k = int(per_hour * hours)
    t1 = (top[k] if k < len(top) else top[-1] * 0.5) * 1.000001 + 1e-6
    return t1, t1 * 1.5


def set_metadata(model: bytes, props: dict[str, str]) -> bytes:
    import onnx

    m = onnx.load_from_string(model)
    keep = [p for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    data: bytes = m.SerializeToString()
    return data


def cmd_learn(args: argparse.Namespace, host: Any = None) -> int:
    try:
        import torch  # noqa: F401 - training needs it; checked first for a clear message
    except ImportError:
        print("ravn learn: torch is not installed; pip install 'ravn-analyzers[train]'", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if not 0 < args.budget <= 1.0:
        print(f"ravn learn: --budget {args.budget}: must be above 0 and at most 1 per host-hour", file=sys.stderr)
        return EXIT_CONFIG
    if not (0 < args.holdout < 1 and 0 < args.calibration < 1 and args.holdout + args.calibration < 0.9):
        print("ravn learn: --holdout and --calibration must be shares in (0, 1) leaving at least 10% to train",
              file=sys.stderr)
        return EXIT_CONFIG
    from ravn_analyzers.onnx.cli import read_sequences
    from ravn_analyzers.onnx.evaluate import evaluate
    from ravn_analyzers.onnx.model import Scorer, score_sequences
    from ravn_analyzers.onnx.train import TrainParams, train

    out = Path(args.output)
    recording = args.events
    made_recording = False
    if not recording:
        if not args.config or not args.duration:
            print("ravn learn: give --config and --duration to record this host, or --events FILE",
                  file=sys.stderr)
            return EXIT_CONFIG
        from ravn_core.cli import cmd_record

        recording = args.recording or str(out) + ".events.jsonl"
        made_recording = not args.recording
        print(f"ravn learn: recording this host for {args.duration:g} s to {recording}", file=sys.stderr)
        rc = cmd_record(argparse.Namespace(config=args.config, duration=args.duration, output=recording,
                                           debug=False), host)
        if rc != EXIT_OK:
            return int(rc)
    elif not Path(recording).is_file():
        print(f"ravn learn: {recording}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    with tempfile.TemporaryDirectory(prefix="ravn-learn-") as tmp:
        try:
            (train_p, cal_p, held_p), (train_h, cal_h, held_h) = split_by_time(
                recording, (args.calibration, args.holdout), tmp)
        except ValueError as exc:
            print(f"ravn learn: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        seqs, stats = read_sequences([train_p])
        if len(seqs) < 2:
            print(f"ravn learn: only {len(seqs)} process(es) in the training part; record longer", file=sys.stderr)
            return EXIT_CONFIG
        params = TrainParams(threads=args.threads)
        if args.steps:
            params.steps = args.steps
        print(f"ravn learn: training on {train_h:.2f} h ({stats['events']} events, {len(seqs)} processes)",
              file=sys.stderr)
        res = train(seqs, params, name="ravn-host-lm", trained_on=f"ravn learn on {args.host}: {train_h:.2f} h, "
                    f"{len(seqs)} processes", progress=lambda m: print(f"ravn learn: {m}", file=sys.stderr))
        scorer = Scorer(res.model)
        cal_seqs, _ = read_sequences([cal_p])
        cal_scores = [float(s) for s in score_sequences(scorer, [scorer.encode(s) for s in cal_seqs])]
        try:
            t1, t2 = budget_thresholds(cal_scores, cal_h, args.budget / 2)
        except ValueError as exc:
            print(f"ravn learn: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        learning: dict[str, Any] = {
            "host": args.host, "threshold_nats": t1, "strong_threshold_nats": t2, "heldout_hours": held_h,
            "medium_alerts": 0, "fa_per_hour": 0.0, "budget_per_hour": args.budget, "budget_met": False,
        }
        model = set_metadata(res.model, {"ravn.learning": json.dumps(learning)})
        draft = os.path.join(tmp, "draft.onnx")
        Path(draft).write_bytes(model)
        from ravn_analyzers.onnx.evaluate import read_events

        ev = evaluate(draft, read_events(held_p), host=args.host)
        rate = ev.medium / held_h if held_h > 0 else float("inf")
        met = rate <= args.budget and held_h >= args.min_heldout_hours
        learning.update(medium_alerts=ev.medium, fa_per_hour=round(rate, 4), budget_met=met,
                        learned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        train_hours=round(train_h, 6), calibration_hours=round(cal_h, 6))
        model = set_metadata(res.model, {"ravn.learning": json.dumps(learning)})
    out.write_bytes(model)
    report = {**learning, "model": str(out), "recording": recording, "heldout_processes_scored": ev.processes_scored,
              "min_heldout_hours": args.min_heldout_hours}
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    if made_recording:
        os.unlink(recording)
    why = ("budget met: with `own_alerts: true` analyzer_onnx may alert on its own" if met else
           "budget NOT met: the model stays corroboration-only" +
           (f" (held-back part {held_h:.2f} h < --min-heldout-hours {args.min_heldout_hours:g})"
            if rate <= args.budget else ""))
    print(f"ravn learn: wrote {out}: {ev.medium} MEDIUM-equivalent false alarms in {held_h:.2f} h held back "
          f"= {rate:.2f} per host-hour (budget {args.budget:g}); {why}", file=sys.stderr)
    return EXIT_OK
