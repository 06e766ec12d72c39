#!/usr/bin/env python3
"""ADFA-LD reference methods on this copy of the data, beside the analyzer's model (bench/adfa.py).

    .venv/bin/python bench/adfa_baselines.py --data ../shared/data/adfa-ld [--lstm-seeds 0 1] [--epochs 60]

Same protocol as bench/adfa.py: fit on Training_Data_Master only, one score per trace of
Validation_Data_Master (normal) and Attack_Data_Master, thresholds at 1% and 5% of the validation scores.
Nothing is tuned on the validation or attack traces. Methods:

- ``wb6``: interpolated 6-gram language model with Witten-Bell smoothing, mean NLL per syscall (the data README's
  floor, measured there on all six attack families);
- ``unseen_n``: share of the trace's n-grams (n = 2, 3, 6) absent from the training traces (STIDE-like);
- ``lstm``: a whole-trace LSTM language model after Kim et al. 2016 (arXiv:1611.01726): embedding 32, 2 layers of
  200 units, trained from the start of each trace (traces over 1024 syscalls are cut to a random 1024-syscall
  window per epoch), Adam with a one-cycle schedule; score = mean NLL over the whole trace.

ADFA-LD (Creech & Hu, UNSW Canberra) is research-only: read at run time, never copied. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adfa import auc, detection, load_dir

Trace = list[int]


def witten_bell_scores(train: list[Trace], traces: list[Trace], order: int, vocab_size: int) -> np.ndarray:
    """Mean NLL per syscall under an interpolated ``order``-gram LM with Witten-Bell smoothing (start padded)."""
    counts: list[dict[tuple[int, ...], dict[int, int]]] = [defaultdict(lambda: defaultdict(int))
                                                           for _ in range(order)]
    pad = [-1] * (order - 1)
    for s in train:
        e = pad + s
        for t in range(order - 1, len(e)):
            for k in range(order):
                counts[k][tuple(e[t - k:t])][e[t]] += 1
    totals = [{c: sum(v.values()) for c, v in table.items()} for table in counts]

    def score(s: Trace) -> float:
        e = pad + s
        nll = 0.0
        for t in range(order - 1, len(e)):
            p = 1.0 / vocab_size
            for k in range(order):
                c = tuple(e[t - k:t])
                n = totals[k].get(c, 0)
                if n == 0:
                    break
                seen = counts[k][c]
                lam = n / (n + len(seen))
                p = lam * seen.get(e[t], 0) / n + (1 - lam) * p
            nll -= np.log(p)
        return nll / len(s)

    return np.array([score(s) for s in traces])


def unseen_ngram_share(train: list[Trace], traces: list[Trace], n: int) -> np.ndarray:
    known = {tuple(s[i:i + n]) for s in train for i in range(len(s) - n + 1)}
    out = []
    for s in traces:
        m = len(s) - n + 1
        out.append(sum(tuple(s[i:i + n]) not in known for i in range(m)) / m if m > 0 else 0.0)
    return np.array(out)


def lstm_scores(train: list[Trace], groups: list[list[Trace]], vocab: dict[int, int], seed: int, epochs: int,
                threads: int) -> tuple[list[np.ndarray], float]:
    """Fit the whole-trace LSTM LM on ``train``; mean NLL per trace of each group. Unknown syscalls map to id 1."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = len(vocab) + 2
    bos, max_len, batch = size, 1024, 16

    class LSTMLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(size + 1, 32)
            self.rnn = nn.LSTM(32, 200, 2, batch_first=True)
            self.out = nn.Linear(200, size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inp = torch.cat([torch.full((x.shape[0], 1), bos), x[:, :-1]], 1)  # predict x[t] from x[<t]
            h, _ = self.rnn(self.emb(inp))
            out: torch.Tensor = self.out(h)
            return out

    def enc(s: Trace) -> np.ndarray:
        return np.array([vocab.get(t, 1) for t in s], dtype=np.int64)

    tr = [enc(s) for s in train]
    model = LSTMLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps_per_epoch = (len(tr) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    by_len = np.argsort([len(s) for s in tr])
    t0 = time.perf_counter()
    for _ in range(epochs):
        chunks = [by_len[i:i + batch] for i in range(0, len(by_len), batch)]
        rng.shuffle(chunks)
        for chunk in chunks:
            width = min(max_len, max(len(tr[i]) for i in chunk))
            x = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(x, dtype=bool)
            for j, i in enumerate(chunk):
                s = tr[i]
                if len(s) > width:
                    o = int(rng.integers(0, len(s) - width + 1))
                    s = s[o:o + width]
                x[j, :len(s)], mask[j, :len(s)] = s, True
            xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
            loss = (F.cross_entropy(model(xt).transpose(1, 2), xt, reduction="none") * mt).sum() / mt.sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    fit_s = time.perf_counter() - t0
    model.eval()
    results = []
    with torch.no_grad():
        for traces in groups:
            seqs = [enc(s) for s in traces]
            out = np.zeros(len(seqs))
            order = np.argsort([len(s) for s in seqs])
            for b in range(0, len(order), batch):
                chunk = order[b:b + batch]
                x = np.zeros((len(chunk), max(len(seqs[i]) for i in chunk)), dtype=np.int64)
                for j, i in enumerate(chunk):
                    x[j, :len(seqs[i])] = seqs[i]
                xt = torch.from_numpy(x)
                nll = F.cross_entropy(model(xt).transpose(1, 2), xt, reduction="none").numpy()
                for j, i in enumerate(chunk):
                    out[i] = nll[j, :len(seqs[i])].mean()
            results.append(out)
    return results, fit_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/adfa-ld")
    ap.add_argument("--lstm-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "Training_Data_Master").is_dir():
        print(f"adfa_baselines: {data} has no Training_Data_Master (give --data)", file=sys.stderr)
        return 2
    tr, va, at = ([[int(t) for t in s] for _, s in load_dir(data / d)]
                  for d in ("Training_Data_Master", "Validation_Data_Master", "Attack_Data_Master"))
    vocab = {t: i + 2 for i, t in enumerate(sorted({t for s in tr for t in s}))}
    results: dict[str, dict[str, float]] = {}

    def record(name: str, neg: np.ndarray, pos: np.ndarray, note: str = "") -> None:
        r = {"auc": auc(neg, pos), "dr_at_1pct": detection(neg, pos, 0.01), "dr_at_5pct": detection(neg, pos, 0.05)}
        results[name] = {k: round(v, 4) for k, v in r.items()}
        print(f"{name:12s} AUC {r['auc']:.4f}  detection at 1% FA {r['dr_at_1pct']:.3f}  "
              f"at 5% FA {r['dr_at_5pct']:.3f}  {note}", flush=True)

    record("wb6", witten_bell_scores(tr, va, 6, len(vocab) + 1), witten_bell_scores(tr, at, 6, len(vocab) + 1))
    for n in (2, 3, 6):
        record(f"unseen_{n}", unseen_ngram_share(tr, va, n), unseen_ngram_share(tr, at, n))
    for seed in args.lstm_seeds:
        (s_va, s_at), fit_s = lstm_scores(tr, [va, at], vocab, seed, args.epochs, args.threads)
        record(f"lstm_seed{seed}", s_va, s_at, f"(fit {fit_s:.0f} s, {args.epochs} epochs)")
    print(json.dumps({"epochs": args.epochs, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
