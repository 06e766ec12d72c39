"""Training: a small causal-convolution next-token language model, fitted with torch, exported to ONNX.

Used by ``ravn train`` and by bench/adfa.py (the same code path). torch is needed only here (the ``train``
extra); the exported graph is built op by op with the ``onnx`` helper API from the trained weights, so the
file the analyzer loads holds nothing but Gather, Conv, Relu, MatMul, LogSoftmax and GatherElements.

Architecture (defaults): embedding 32 -> causal Conv1d(k=4, 32, dilation 1) -> ReLU -> causal Conv1d(k=4, 32,
dilation 2) -> ReLU -> Linear(vocab) -> log-softmax; position t sees tokens t-10 .. t-1. Trained on random
crops of the normal sequences (next-token cross-entropy, Adam, one-cycle schedule). A small share of tokens
is replaced by the unknown token during training so that a syscall never seen in training costs a finite
surprise instead of an infinite one.

Calibration: a share of the sequences (whole processes) is held back; their scores, computed exactly as the
analyzer computes them (model.score_sequences), give the thresholds at the false-alarm rates stored in the
model (quantiles of held-back normal scores).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ravn_analyzers.onnx.model import (
    FEATURE_SCHEMA,
    FEATURE_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    PAD,
    UNK,
    Scorer,
    ScoringParams,
    score_sequences,
)

CALIBRATION_RATES = (0.05, 0.01, 0.001)


@dataclass
class TrainParams:
    """Hyper-parameters; the defaults are the ones chosen on ADFA-LD (docs/MODEL.md)."""

    embed: int = 32
    hidden: int = 32
    kernel: int = 4
    layers: int = 2
    window: int = 256
    crop: int = 128
    batch: int = 64
    steps: int = 3000
    lr: float = 3e-3
    unk_rate: float = 0.002
    min_count: int = 1
    max_vocab: int = 4096
    holdout: float = 0.2
    seed: int = 0
    threads: int = 2
    scoring: ScoringParams = field(default_factory=ScoringParams)

    @property
    def context(self) -> int:
        return (self.kernel - 1) * sum(2**i for i in range(self.layers)) + 1


@dataclass
class TrainResult:
    model: bytes
    vocab: list[str]
    fit_seconds: float
    train_sequences: int
    train_tokens: int
    heldout_sequences: int
    thresholds: dict[float, float]
    final_loss: float
    log: list[str] = field(default_factory=list)


def build_vocab(sequences: Sequence[Sequence[str]], min_count: int, max_vocab: int) -> list[str]:
    counts = Counter(t for s in sequences for t in s)
    return [t for t, n in counts.most_common(max_vocab) if n >= min_count]


def _torch_model(vocab_size: int, p: TrainParams) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CausalConvLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab_size, p.embed, padding_idx=PAD)
            self.convs = nn.ModuleList()
            self.pads: list[int] = []
            ch = p.embed
            for i in range(p.layers):
                dil = 2**i
                self.convs.append(nn.Conv1d(ch, p.hidden, p.kernel, dilation=dil))
                self.pads.append((p.kernel - 1) * dil)
                ch = p.hidden
            self.out = nn.Linear(ch, vocab_size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # predict x[:, t] from x[:, <t]: shift right by one (zeros at the row start), then causal convs
            e = self.emb(x).transpose(1, 2)
            e = F.pad(e, (1, 0))[:, :, :-1]
            for conv, pad in zip(self.convs, self.pads, strict=True):
                e = F.relu(conv(F.pad(e, (pad, 0))))
            logits: torch.Tensor = self.out(e.transpose(1, 2))
            return logits

    return CausalConvLM()


def _crops(seqs: list[np.ndarray], crop: int, batch: int, rng: np.random.Generator, unk_rate: float) -> np.ndarray:
    lens = np.array([len(s) for s in seqs], dtype=np.float64)
    idx = rng.choice(len(seqs), batch, p=lens / lens.sum())
    x = np.zeros((batch, crop), dtype=np.int64)
    for j, i in enumerate(idx):
        s = seqs[i]
        if len(s) <= crop:
            x[j, : len(s)] = s
        else:
            o = int(rng.integers(0, len(s) - crop + 1))
            x[j] = s[o : o + crop]
    if unk_rate > 0:
        mask = (rng.random(x.shape) < unk_rate) & (x != PAD)
        x[mask] = UNK
    return x


def fit_weights(sequences: list[np.ndarray], vocab_size: int, p: TrainParams,
                progress: Any = None) -> tuple[dict[str, np.ndarray], float]:
    """Train the torch model on id sequences; return its weights as numpy arrays and the last loss."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(p.seed)
    torch.set_num_threads(max(1, p.threads))
    model = _torch_model(vocab_size, p)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, p.lr, total_steps=p.steps)
    rng = np.random.default_rng(p.seed)
    seqs = [s for s in sequences if len(s) > 0]
    if not seqs:
        raise ValueError("no training tokens")
    loss_v = float("nan")
    for step in range(p.steps):
        x = torch.from_numpy(_crops(seqs, p.crop, p.batch, rng, p.unk_rate))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), x.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_v = float(loss.item())
        if progress is not None and (step % 250 == 0 or step == p.steps - 1):
            progress(f"step {step + 1}/{p.steps} loss {loss_v:.3f}")
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return weights, loss_v


def export_onnx(weights: dict[str, np.ndarray], p: TrainParams, metadata: dict[str, str]) -> bytes:
    """Build the ONNX graph (opset 17) of the trained model from its weights, laid out for one CPU core.

    The first convolution reads embeddings only, so it is folded into ``kernel`` lookup tables
    (``emb @ W[:, :, j].T``, [vocab, hidden]) gathered at shifted token positions: no multiply at all. Later
    convolutions are one Gemm over the ``kernel`` shifted copies of the previous layer, side by side; the
    output layer is a Gemm with its bias. Same numbers as the torch model (checked by a test).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, hid = p.kernel, p.hidden
    emb = weights["emb.weight"]
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any, dtype: Any = np.int64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    const("zero1", [0])
    const("axis1", [1])
    const("shape2d", [-1, hid])
    nodes.append(helper.make_node("Shape", [INPUT_NAME], ["in_shape"]))
    nodes.append(helper.make_node("Slice", ["in_shape", "axis1", const("two1", [2]), "zero1"], ["width"]))
    const("hid1", [hid])
    nodes.append(helper.make_node("Concat", [const("minus1_1", [-1]), "width", "hid1"], ["shape3d"], axis=0))

    def shift(src: str, s: int, rank: int, name: str) -> str:
        """src shifted right by s along axis 1 (zeros / PAD enter on the left), same width."""
        pads = [0, s] + [0] * (rank - 2) + [0, 0] + [0] * (rank - 2)
        nodes.append(helper.make_node("Pad", [src, const(f"{name}_pads", pads)], [f"{name}_p"], mode="constant"))
        nodes.append(helper.make_node("Slice", [f"{name}_p", "zero1", "width", "axis1"], [name]))
        return name

    # layer 1: position t reads tokens t-k .. t-1 (shift by one, then a causal conv of width k, dilation 1)
    w1, b1 = weights["convs.0.weight"], weights["convs.0.bias"]
    acc = ""
    for j in range(k):
        s = k - j  # tap j of the causal conv sees token t - 1 - (k - 1 - j)
        table_v = emb @ w1[:, :, j].T
        if j == 0:
            table_v = table_v + b1  # the bias applies at every position: fold it into one table
        table = const(f"t1_{j}", table_v, np.float32)
        tok = shift(INPUT_NAME, s, 2, f"tok_s{s}")
        nodes.append(helper.make_node("Gather", [table, tok], [f"g1_{j}"]))
        if acc:
            nodes.append(helper.make_node("Add", [acc, f"g1_{j}"], [f"a1_{j}"]))
            acc = f"a1_{j}"
        else:
            acc = f"g1_{j}"
    nodes.append(helper.make_node("Relu", [acc], ["h1"]))  # [N, W, hid]
    cur = "h1"
    for i in range(1, p.layers):
        dil = 2**i
        w, b = weights[f"convs.{i}.weight"], weights[f"convs.{i}.bias"]
        parts = []
        for j in range(k):
            s = (k - 1 - j) * dil
            parts.append(shift(cur, s, 3, f"l{i}_s{s}") if s else cur)
        nodes.append(helper.make_node("Concat", parts, [f"cat{i}"], axis=2))  # [N, W, k*hid]
        nodes.append(helper.make_node("Reshape", [f"cat{i}", const(f"shape2d_{i}", [-1, k * hid])], [f"cat2d{i}"]))
        wcat = np.concatenate([w[:, :, j].T for j in range(k)], axis=0)  # [k*hid, hid]
        nodes.append(helper.make_node("Gemm", [f"cat2d{i}", const(f"w_l{i + 1}", wcat, np.float32),
                                               const(f"bias_l{i + 1}", b, np.float32)], [f"z{i}"]))
        nodes.append(helper.make_node("Relu", [f"z{i}"], [f"r{i}"]))
        nodes.append(helper.make_node("Reshape", [f"r{i}", "shape3d"], [f"h{i + 1}"]))
        cur = f"h{i + 1}"
    nodes += [
        helper.make_node("Reshape", [cur, "shape2d"], ["h2d"]),
        helper.make_node("Gemm", ["h2d", const("out_w", weights["out.weight"], np.float32),
                                  const("out_b", weights["out.bias"], np.float32)], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=-1),
        helper.make_node("Reshape", [INPUT_NAME, const("col", [-1, 1])], ["tok_col"]),
        helper.make_node("GatherElements", ["logp", "tok_col"], ["lp_col"], axis=1),
        helper.make_node("Shape", [INPUT_NAME], ["out_shape"]),
        helper.make_node("Reshape", ["lp_col", "out_shape"], ["lp"]),
        helper.make_node("Neg", ["lp"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "ravn_token_lm",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, ["N", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", "W"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ravn train")
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def train(sequences: Sequence[Sequence[str]], params: TrainParams | None = None, *, name: str = "ravn-token-lm",
          version: str = "", trained_on: str = "", progress: Any = None) -> TrainResult:
    """Fit on token sequences (one per process), calibrate on held-back ones, return the ONNX model bytes."""
    p = params or TrainParams()
    seqs = [list(s) for s in sequences if len(s) > 0]
    if len(seqs) < 2:
        raise ValueError(f"need at least 2 non-empty sequences, got {len(seqs)}")
    rng = np.random.default_rng(p.seed)
    order = rng.permutation(len(seqs))
    n_hold = round(len(seqs) * p.holdout) if p.holdout > 0 else 0
    n_hold = min(max(n_hold, 1 if p.holdout > 0 else 0), len(seqs) - 1)
    hold = [seqs[i] for i in order[:n_hold]]
    fit_seqs = [seqs[i] for i in order[n_hold:]]
    vocab = build_vocab(fit_seqs, p.min_count, p.max_vocab)
    ids = {t: i + 2 for i, t in enumerate(vocab)}
    enc = [np.array([ids.get(t, UNK) for t in s], dtype=np.int64) for s in fit_seqs]
    t0 = time.perf_counter()
    weights, loss = fit_weights(enc, len(vocab) + 2, p, progress)
    fit_s = time.perf_counter() - t0
    version = version or time.strftime("1.0.0+%Y%m%d%H%M", time.gmtime())
    meta = {
        "ravn.schema": FEATURE_SCHEMA,
        "ravn.schema_version": FEATURE_VERSION,
        "ravn.model_name": name,
        "ravn.model_version": version,
        "ravn.vocab": json.dumps(vocab),
        "ravn.window": str(p.window),
        "ravn.context": str(p.context),
        "ravn.scoring": json.dumps(asdict(p.scoring)),
        "ravn.calibration": json.dumps({"thresholds": {"0.01": 0.0}, "n_heldout": 0}),
        "ravn.trained_on": trained_on or f"{len(fit_seqs)} sequences, {sum(map(len, fit_seqs))} tokens",
        "ravn.architecture": json.dumps({k: v for k, v in asdict(p).items() if k != "scoring"}),
    }
    draft = export_onnx(weights, p, meta)
    # calibrate on the held-back sequences (or, without any, on the training ones: documented as optimistic).
    # Only processes that get a score at all (at least exit_min_events tokens) count: the false-alarm rate is
    # per scored process.
    calib_seqs = hold if hold else fit_seqs
    scorer = Scorer(draft, threads=max(1, p.threads))
    raw = score_sequences(scorer, [scorer.encode(s) for s in calib_seqs], p.scoring)
    scores = raw[np.isfinite(raw)]
    if len(scores) == 0:
        raise ValueError(f"no held-back sequence has the {p.scoring.exit_min_events} tokens needed for a score; "
                         "record longer or lower exit_min_events")
    thresholds = {r: float(np.quantile(scores, 1.0 - r, method="higher")) for r in CALIBRATION_RATES}
    meta["ravn.calibration"] = json.dumps({
        "thresholds": {str(r): v for r, v in thresholds.items()}, "n_heldout": len(scores),
        "n_heldout_unscored": int(len(raw) - len(scores)),
        "score": "max running mean NLL per process (nats)", "heldout": bool(hold)})
    final = export_onnx(weights, p, meta)
    return TrainResult(final, vocab, fit_s, len(fit_seqs), int(sum(map(len, fit_seqs))), len(scores), thresholds,
                       loss)
