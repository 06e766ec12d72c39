#!/usr/bin/env python3
"""ADFA-LD evaluation of the ONNX analyzer's model: the same training code as ``ravn train``, scored through
onnxruntime on one core exactly as the analyzer scores a process (ravn_analyzers.onnx.model.score_sequences).

    .venv/bin/python bench/adfa.py --data ../shared/data/adfa-ld [--attacks DIR] [--steps N] [--latency]

Protocol (see the data folder's README): fit on Training_Data_Master (normal) only; score every trace of
Validation_Data_Master (normal, label 0) and Attack_Data_Master (label 1); one score per trace. Reports ROC AUC,
detection at 1% and 5% false alarms, per-family detection, the same on the deduplicated protocol (each distinct
validation trace once, none identical to a training trace; attack traces deduplicated), fit time and scoring
throughput (syscalls/s, onnxruntime, intra_op_num_threads=1). Last line: one JSON object.

ADFA-LD (Creech & Hu, UNSW Canberra, 2013/2014) is licensed for research only: it is read from its folder at run
time, never copied into the repository, and no shipped model is trained on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))

from ravn_analyzers.onnx.model import Scorer, ScoringParams, score_sequences
from ravn_analyzers.onnx.train import TrainParams, train


def load_dir(path: Path) -> list[tuple[str, list[str]]]:
    """Every trace file under ``path`` (recursively), as (relative name, tokens). Tokens are the i386 syscall
    numbers as strings: the model's vocabulary is whatever the training data holds."""
    out = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        toks = f.read_text().split()
        if toks:
            out.append((str(f.relative_to(path)), toks))
    return out


def family(name: str) -> str:
    top = name.split("/")[0]
    return re.sub(r"_\d+$", "", top)


def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney U)."""
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rp = ranks[len(neg):].sum()
    return float((rp - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def threshold_at(neg: np.ndarray, fa: float) -> float:
    """Smallest threshold with at most ``fa`` of the normal scores strictly above it."""
    s = np.sort(neg)
    k = int(np.floor(fa * len(s)))  # normals allowed above
    return float(s[len(s) - 1 - k]) if k < len(s) else float(s[0])


def detection(neg: np.ndarray, pos: np.ndarray, fa: float) -> float:
    return float((pos > threshold_at(neg, fa)).mean())


def report(label: str, neg: np.ndarray, pos: np.ndarray, fams: list[str]) -> dict[str, float]:
    r = {"auc": auc(neg, pos), "dr_at_1pct": detection(neg, pos, 0.01), "dr_at_5pct": detection(neg, pos, 0.05)}
    print(f"{label}: {len(neg)} normal, {len(pos)} attack traces: AUC {r['auc']:.4f}  "
          f"detection at 1% FA {r['dr_at_1pct']:.3f}  at 5% FA {r['dr_at_5pct']:.3f}")
    t5 = threshold_at(neg, 0.05)
    t1 = threshold_at(neg, 0.01)
    fa = np.array(fams)
    for f in sorted(set(fams)):
        sel = pos[fa == f]
        print(f"  {f:18s} n={len(sel):4d}  AUC {auc(neg, sel):.4f}  det@1% {(sel > t1).mean():.3f}  "
              f"det@5% {(sel > t5).mean():.3f}")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/adfa-ld", help="the ADFA-LD folder (three *_Master dirs)")
    ap.add_argument("--attacks", default="", help="score this folder of attack traces instead of Attack_Data_Master")
    ap.add_argument("--steps", type=int, default=TrainParams.steps, help="training steps")
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="share of training traces held back for the model's own calibration (ravn train: 0.2); "
                         "0 fits on all of Training_Data_Master, as the protocol says: the figures here take "
                         "their thresholds from the validation scores, not from the model's calibration")
    ap.add_argument("--seed", type=int, default=0)
    for knob in ("embed", "hidden", "kernel", "layers", "window", "crop", "batch"):
        ap.add_argument(f"--{knob}", type=int, default=getattr(TrainParams, knob),
                        help=f"architecture search: {knob} (default: the shipped setting)")
    ap.add_argument("--lr", type=float, default=TrainParams.lr)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--save", default="", help="write the trained model here (never ship it: ADFA-LD licence)")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not (data / "Training_Data_Master").is_dir():
        print(f"adfa: {data} has no Training_Data_Master (give --data)", file=sys.stderr)
        return 2
    tr = load_dir(data / "Training_Data_Master")
    va = load_dir(data / "Validation_Data_Master")
    at = load_dir(Path(args.attacks) if args.attacks else data / "Attack_Data_Master")
    print(f"ADFA-LD: {len(tr)} training, {len(va)} validation, {len(at)} attack traces "
          f"({sum(len(s) for _, s in tr)} / {sum(len(s) for _, s in va)} / {sum(len(s) for _, s in at)} syscalls)")

    params = TrainParams(steps=args.steps, holdout=args.holdout, seed=args.seed, threads=args.threads,
                         embed=args.embed, hidden=args.hidden, kernel=args.kernel, layers=args.layers,
                         window=args.window, crop=args.crop, batch=args.batch, lr=args.lr, scoring=ScoringParams())
    t0 = time.perf_counter()
    res = train([s for _, s in tr], params, name="adfa-eval", trained_on="ADFA-LD Training_Data_Master",
                progress=lambda m: print("  train:", m, flush=True))
    wall = time.perf_counter() - t0
    print(f"fit: {res.fit_seconds:.1f} s ({res.train_sequences} traces, {res.train_tokens} syscalls, "
          f"{params.steps} steps, {args.threads} threads), train() total {wall:.1f} s with calibration; "
          f"vocab {len(res.vocab)}; final loss {res.final_loss:.3f}")
    if args.save:
        Path(args.save).write_bytes(res.model)

    scorer = Scorer(res.model, threads=1)
    enc_va = [scorer.encode(s) for _, s in va]
    enc_at = [scorer.encode(s) for _, s in at]
    score_sequences(scorer, enc_va[:50])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    s_va = score_sequences(scorer, enc_va)
    s_at = score_sequences(scorer, enc_at)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    unscored = int(np.isnan(s_va).sum() + np.isnan(s_at).sum())
    if unscored:
        print(f"{unscored} traces too short for a score (under exit_min_events): scored as 0")
        s_va, s_at = np.nan_to_num(s_va, nan=0.0), np.nan_to_num(s_at, nan=0.0)
    n_sc = sum(map(len, enc_va)) + sum(map(len, enc_at))
    sps = n_sc / dt
    sps_cpu = n_sc / cpu
    print(f"scoring: {n_sc} syscalls in {dt:.2f} s wall = {sps:,.0f} syscalls/s; {cpu:.2f} s CPU = "
          f"{sps_cpu:,.0f} syscalls per CPU-second (onnxruntime intra_op_num_threads=1, window "
          f"{scorer.info.window}, context {scorer.info.context}, windowing in Python included; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    fams = [family(n) for n, _ in at]
    std = report("standard", s_va, s_at, fams)
    # deduplicated: distinct validation traces not identical to a training trace; distinct attack traces
    train_set = {" ".join(s) for _, s in tr}
    seen: set[str] = set()
    keep_va = []
    for i, (_, s) in enumerate(va):
        k = " ".join(s)
        if k in train_set or k in seen:
            continue
        seen.add(k)
        keep_va.append(i)
    seen = set()
    keep_at = []
    for i, (_, s) in enumerate(at):
        k = " ".join(s)
        if k in seen:
            continue
        seen.add(k)
        keep_at.append(i)
    dd = report("deduplicated", s_va[keep_va], s_at[keep_at], [fams[i] for i in keep_at])
    print(json.dumps({
        "auc": round(std["auc"], 4), "dr_at_1pct": round(std["dr_at_1pct"], 4),
        "dr_at_5pct": round(std["dr_at_5pct"], 4), "auc_dedup": round(dd["auc"], 4),
        "dr_at_1pct_dedup": round(dd["dr_at_1pct"], 4), "dr_at_5pct_dedup": round(dd["dr_at_5pct"], 4),
        "syscalls_per_s": round(sps), "syscalls_per_cpu_s": round(sps_cpu), "fit_s": round(res.fit_seconds, 1),
        "steps": params.steps,
        "attacks": os.path.abspath(args.attacks) if args.attacks else "Attack_Data_Master",
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
