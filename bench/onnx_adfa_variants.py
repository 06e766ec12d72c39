#!/usr/bin/env python3
"""ADFA-LD research bench: scores that the analyzer does NOT use, measured on the shipped architecture.

    .venv/bin/python bench/onnx_adfa_variants.py --data ../shared/data/adfa-ld --seeds 0 1 2 3 [--steps 3000]

For each seed, the analyzer's language model is fitted with the shipped training code (train.fit_weights, the
code ``ravn train`` and bench/adfa.py run) on Training_Data_Master, and every trace of Validation_Data_Master
(normal) and Attack_Data_Master is scored whole in torch (no windows: every ADFA-LD trace is shorter than the
analyzer's 4096-token horizon). Three per-trace scores are compared:

- ``mean``: mean NLL per syscall, what the analyzer's running mean amounts to on these traces;
- ``lr``: mean of (LM NLL - bigram NLL), a likelihood ratio against a bigram background model (add-alpha counts
  on the training traces; alpha chosen by 5-fold held-out likelihood inside Training_Data_Master);
- ``lr_pos``: mean of max(0, LM NLL - bigram NLL), only the tokens the long context makes more surprising.

Nothing here is tuned on the validation or attack traces; they are only reported. Results are in docs/MODEL.md
("What was tried"). ADFA-LD (Creech & Hu, UNSW Canberra) is research-only: read at run time, never copied.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/analyzers/src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adfa import auc, detection, load_dir
from ravn_analyzers.onnx.train import TrainParams, _torch_model, fit_weights

ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)


def bigram_nll(seqs: list[np.ndarray], vocab_size: int, alpha: float) -> np.ndarray:
    """[V, V] table of -log p(cur | prev), add-alpha; row 0 (PAD) is the start of a trace."""
    counts = np.zeros((vocab_size, vocab_size))
    for s in seqs:
        e = np.concatenate([[0], s])
        np.add.at(counts, (e[:-1], e[1:]), 1)
    table: np.ndarray = -np.log((counts + alpha) / (counts.sum(1, keepdims=True) + alpha * vocab_size))
    return table


def choose_alpha(seqs: list[np.ndarray], vocab_size: int) -> float:
    """The alpha with the best 5-fold held-out bigram likelihood on the training traces."""
    folds = np.array_split(np.random.default_rng(1234).permutation(len(seqs)), 5)
    best = (np.inf, ALPHAS[0])
    for alpha in ALPHAS:
        tot, n = 0.0, 0
        for f in folds:
            held = set(f.tolist())
            table = bigram_nll([s for i, s in enumerate(seqs) if i not in held], vocab_size, alpha)
            for i in f:
                e = np.concatenate([[0], seqs[i]])
                tot += float(table[e[:-1], e[1:]].sum())
                n += len(e) - 1
        best = min(best, (tot / n, alpha))
    return best[1]


def token_nll(weights: dict[str, np.ndarray], p: TrainParams, vocab_size: int,
              seqs: list[np.ndarray]) -> list[np.ndarray]:
    """Per-token NLL of whole sequences under the fitted model (torch, causal, zeros left of each trace)."""
    import torch
    from torch.nn import functional as F

    m = _torch_model(vocab_size, p)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    m.eval()
    out: list[Any] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.no_grad():
        for b in range(0, len(order), 32):
            chunk = order[b : b + 32]
            x = np.zeros((len(chunk), len(seqs[chunk[-1]])), dtype=np.int64)
            for j, i in enumerate(chunk):
                x[j, : len(seqs[i])] = seqs[i]
            xt = torch.from_numpy(x)
            nll = F.cross_entropy(m(xt).transpose(1, 2), xt, reduction="none").numpy()
            for j, i in enumerate(chunk):
                out[i] = nll[j, : len(seqs[i])]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/adfa-ld")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=TrainParams.steps)
    args = ap.parse_args(argv)
    data = Path(args.data)
    tr = [s for _, s in load_dir(data / "Training_Data_Master")]
    va = [s for _, s in load_dir(data / "Validation_Data_Master")]
    at = [s for _, s in load_dir(data / "Attack_Data_Master")]
    vocab = sorted({t for s in tr for t in s}, key=int)
    ids = {t: i + 2 for i, t in enumerate(vocab)}
    vsize = len(vocab) + 2

    def enc(s: list[str]) -> np.ndarray:
        return np.array([ids.get(t, 1) for t in s], dtype=np.int64)

    e_tr, e_va, e_at = [enc(s) for s in tr], [enc(s) for s in va], [enc(s) for s in at]
    alpha = choose_alpha(e_tr, vsize)
    table = bigram_nll(e_tr, vsize, alpha)
    print(f"bigram background: alpha {alpha} (5-fold held-out likelihood on Training_Data_Master)")

    def scores(nlls: list[np.ndarray], seqs: list[np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {"mean": [], "lr": [], "lr_pos": []}
        for x, e in zip(nlls, seqs, strict=True):
            d = x - table[np.concatenate([[0], e[:-1]]), e]
            out["mean"].append(float(x.mean()))
            out["lr"].append(float(d.mean()))
            out["lr_pos"].append(float(np.maximum(d, 0).mean()))
        return {k: np.array(v) for k, v in out.items()}

    results: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        p = TrainParams(steps=args.steps, seed=seed, threads=1, holdout=0.0)
        t0 = time.perf_counter()
        weights, loss = fit_weights(e_tr, vsize, p)
        fit_s = time.perf_counter() - t0
        s_va, s_at = scores(token_nll(weights, p, vsize, e_va), e_va), scores(token_nll(weights, p, vsize, e_at), e_at)
        for k in s_va:
            r = {"auc": auc(s_va[k], s_at[k]), "dr_at_1pct": detection(s_va[k], s_at[k], 0.01),
                 "dr_at_5pct": detection(s_va[k], s_at[k], 0.05)}
            results[f"seed{seed}_{k}"] = {m: round(v, 4) for m, v in r.items()}
            print(f"seed {seed} ({args.steps} steps, fit {fit_s:.0f} s, last loss {loss:.3f}) {k:7s} "
                  f"AUC {r['auc']:.4f}  detection at 1% FA {r['dr_at_1pct']:.3f}  at 5% FA {r['dr_at_5pct']:.3f}",
                  flush=True)
    print(json.dumps({"alpha": alpha, "steps": args.steps, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
