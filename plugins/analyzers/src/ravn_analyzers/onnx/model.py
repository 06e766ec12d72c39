"""The model file: an ONNX next-token language model plus its feature schema and calibration in metadata_props.

Needs numpy and onnxruntime only (never torch): the analyzer, the bench and the tests import it.

Graph contract (checked on load):
  input  ``tokens``  int64 [N, W]  token ids, 0 = padding (right-padded windows), 1 = unknown token
  output ``nll``     float [N, W]  -log p(tokens[:, t] | tokens[:, <t]) under the model, nats
Position t only sees tokens t-context .. t-1 of its own row (causal convolutions; zeros left of the row).

Metadata (``metadata_props``, all strings):
  ravn.schema            "ravn-token-lm"  (FEATURE_SCHEMA)
  ravn.schema_version    "1"              (FEATURE_VERSION)
  ravn.model_name        e.g. "ravn-benign-lm"
  ravn.model_version     e.g. "1.0.0+20261126"
  ravn.vocab             JSON list of token strings; token id = index + 2
  ravn.window            window length W the model was calibrated with
  ravn.context           tokens of left context a position needs (receptive field - 1)
  ravn.scoring           JSON: {"min_events", "exit_min_events", "horizon"} used for calibration
  ravn.calibration       JSON: {"thresholds": {"0.01": x, "0.001": y}, "n_heldout": n, "score": "mean_nll"}
  ravn.trained_on        one line: what data, how many sequences/tokens
  ravn.learning          optional, written by ``ravn learn`` (learn.py): JSON with the host it learned, its
                         budget-calibrated thresholds and the false alarms per host-hour measured on held-back data
                         of that host (LEARNING_KEYS); the analyzer lets only such a model alert on its own
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

FEATURE_SCHEMA = "ravn-token-lm"
FEATURE_VERSION = "1"
PAD = 0
UNK = 1
INPUT_NAME = "tokens"
OUTPUT_NAME = "nll"
#: windows per session.run. onnxruntime's CPU arena grows to the largest run and keeps it: measured with the
#: shipped model, +74 MB of private memory after one run of 128 windows, +12 MB at 16; and 16 windows per run
#: scored the most tokens per second (2.4M vs 1.5M at 128: the working set stays in cache).
RUN_WINDOWS: Final = 16
#: default ceiling of a model file's size: the shipped model is 46 KB, a 4096-token vocabulary with the default
#: architecture about 1 MB; onnxruntime would otherwise read any size the path points at into memory
MAX_MODEL_BYTES: Final = 16 * 1024 * 1024
#: keys of ``ravn.learning`` and their types (checked on load)
LEARNING_KEYS: Final[dict[str, type | tuple[type, ...]]] = {
    "host": str, "threshold_nats": (int, float), "strong_threshold_nats": (int, float),
    "heldout_hours": (int, float), "medium_alerts": int, "fa_per_hour": (int, float),
    "budget_per_hour": (int, float), "budget_met": bool,
}


class ModelError(Exception):
    """The model file is missing, unreadable, or does not fit the contract above. ``str()`` says why."""


@dataclass(frozen=True)
class Calibration:
    """Window-mean NLL thresholds at given false-alarm rates, measured on held-back normal sequences."""

    thresholds: dict[float, float]
    n_heldout: int = 0

    def threshold(self, fa_rate: float) -> float:
        if fa_rate in self.thresholds:
            return self.thresholds[fa_rate]
        # nearest calibrated rate
        best = min(self.thresholds, key=lambda r: abs(r - fa_rate))
        return self.thresholds[best]


@dataclass(frozen=True)
class ScoringParams:
    """How a process's score is formed from its windows (the same in the analyzer, the bench and calibration).

    :ivar min_events: scored tokens a live process needs before its running score counts.
    :ivar exit_min_events: scored tokens an exited (or idle-flushed) process needs for a final score.
    :ivar horizon: the running score is the mean NLL over the process's last ``horizon`` scored tokens.
    """

    min_events: int = 64
    exit_min_events: int = 8
    horizon: int = 4096


@dataclass
class ModelInfo:
    name: str
    version: str
    vocab: list[str]
    window: int
    context: int
    scoring: ScoringParams
    calibration: Calibration
    trained_on: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: ``ravn.learning`` (validated against LEARNING_KEYS), or None for a model not made by ``ravn learn``
    learning: dict[str, Any] | None = None

    def token_ids(self) -> dict[str, int]:
        return {t: i + 2 for i, t in enumerate(self.vocab)}


def parse_metadata(props: dict[str, str]) -> ModelInfo:
    """Validate the metadata_props of a RAVN model; raise ModelError naming the first problem."""
    schema = props.get("ravn.schema")
    if schema != FEATURE_SCHEMA:
        raise ModelError(f"feature schema {schema!r} is not {FEATURE_SCHEMA!r} (not a RAVN token model)")
    version = props.get("ravn.schema_version")
    if version != FEATURE_VERSION:
        raise ModelError(f"feature schema version {version!r}; this analyzer reads version {FEATURE_VERSION}")
    try:
        vocab = json.loads(props["ravn.vocab"])
        window = int(props["ravn.window"])
        context = int(props["ravn.context"])
        sc = json.loads(props.get("ravn.scoring", "{}"))
        scoring = ScoringParams(**{k: int(v) for k, v in sc.items()})
        cal = json.loads(props["ravn.calibration"])
        thresholds = {float(k): float(v) for k, v in cal["thresholds"].items()}
        calibration = Calibration(thresholds, int(cal.get("n_heldout", 0)))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"bad RAVN metadata: {type(exc).__name__}: {exc}") from exc
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ModelError("bad RAVN metadata: ravn.vocab is not a list of strings")
    if not thresholds:
        raise ModelError("bad RAVN metadata: no calibration thresholds")
    if window <= context or context < 0:
        raise ModelError(f"bad RAVN metadata: window {window} must exceed context {context}")
    extra = {k: v for k, v in props.items() if not k.startswith("ravn.")}
    learning = parse_learning(props["ravn.learning"]) if "ravn.learning" in props else None
    return ModelInfo(props.get("ravn.model_name", "unnamed"), props.get("ravn.model_version", "0"), vocab, window,
                     context, scoring, calibration, props.get("ravn.trained_on", ""), extra, learning)


def parse_learning(text: str) -> dict[str, Any]:
    """``ravn.learning``: a JSON object with every key of LEARNING_KEYS of its type; raise ModelError naming the
    first problem."""
    try:
        learning = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"bad RAVN metadata: ravn.learning is not JSON: {exc}") from exc
    if not isinstance(learning, dict):
        raise ModelError("bad RAVN metadata: ravn.learning is not a JSON object")
    for key, typ in LEARNING_KEYS.items():
        value = learning.get(key)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise ModelError(f"bad RAVN metadata: ravn.learning[{key!r}] is {value!r}, not a "
                             f"{'number' if isinstance(typ, tuple) else typ.__name__}")
    if not 0 < learning["threshold_nats"] <= learning["strong_threshold_nats"]:
        raise ModelError("bad RAVN metadata: ravn.learning needs 0 < threshold_nats <= strong_threshold_nats")
    return learning


class Scorer:
    """An onnxruntime session on a RAVN model, checked against the graph contract.

    :param source: a path or the model's bytes.
    :param threads: intra-op threads (1 = one core).
    :param max_bytes: a larger model (file or bytes) is refused with a ModelError naming it and the limit; the
        file is read here, at most ``max_bytes + 1`` bytes of it, so a file that grows after a check is refused too.
    """

    def __init__(self, source: str | bytes, threads: int = 1, max_bytes: int = MAX_MODEL_BYTES) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # the factory turns this into DidNotEnable
            raise ModelError(f"onnxruntime is not importable: {exc}") from exc
        if isinstance(source, str):
            self.path: str | None = source
            source = read_model_file(source, max_bytes)
        else:
            self.path = None
            if len(source) > max_bytes:
                raise ModelError(f"model bytes: {len(source)} bytes, over the limit of {max_bytes} bytes")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns are planned and kept per input shape, and every batch size is a new shape: measured,
        # +6.7 MB after runs of 1..16 windows with them, +0.4 MB without, at the same speed.
        opts.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
            where = self.path or "model bytes"
            raise ModelError(f"{where} is not a loadable ONNX model: {type(exc).__name__}: {exc}") from exc
        meta = self.session.get_modelmeta()
        self.info = parse_metadata(dict(meta.custom_metadata_map))
        self._check_io()
        self.ids = self.info.token_ids()

    def _check_io(self) -> None:
        ins = self.session.get_inputs()
        outs = self.session.get_outputs()
        if len(ins) != 1 or ins[0].name != INPUT_NAME or ins[0].type != "tensor(int64)" or len(ins[0].shape) != 2:
            got = [(i.name, i.type, i.shape) for i in ins]
            raise ModelError(f"model input must be {INPUT_NAME} int64 [N, W]; got {got}")
        w = ins[0].shape[1]
        if isinstance(w, int) and w != self.info.window:
            raise ModelError(f"model input width {w} does not match ravn.window {self.info.window}")
        if not any(o.name == OUTPUT_NAME for o in outs):
            raise ModelError(f"model has no output {OUTPUT_NAME!r}; outputs: {[o.name for o in outs]}")
        out = next(o for o in outs if o.name == OUTPUT_NAME)
        if out.type != "tensor(float)" or len(out.shape) != 2:
            raise ModelError(f"model output {OUTPUT_NAME} must be float [N, W]; got {out.type} {out.shape}")

    def encode(self, tokens: Iterable[str]) -> list[int]:
        ids = self.ids
        return [ids.get(t, UNK) for t in tokens]

    def run(self, windows: np.ndarray) -> np.ndarray:
        """NLL per position for a batch of windows [N, W] (one session.run per RUN_WINDOWS windows)."""
        if len(windows) <= RUN_WINDOWS:
            return self._run(windows)
        return np.concatenate([self._run(windows[i:i + RUN_WINDOWS]) for i in range(0, len(windows), RUN_WINDOWS)])

    def _run(self, windows: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]
        result: np.ndarray = np.asarray(out, dtype=np.float32)
        if result.shape != windows.shape:
            raise ModelError(f"model returned shape {result.shape} for input {windows.shape}")
        return result


def read_model_file(path: str, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """The bytes of a model file, refused with a ModelError naming the file when it is missing, unreadable or
    larger than ``max_bytes`` (read in one bounded read: the limit holds even for a file that grows or a FIFO)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except OSError as exc:
        raise ModelError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ModelError(f"model file {path} is larger than the limit of {max_bytes} bytes "
                         f"({max_bytes / 1048576:g} MiB; analyzer_onnx max_model_mb)")
    return data


# ---------------------------------------------------------------------------------------------- windows
class Windower:
    """Cuts one process's token stream into model windows.

    Each window is the last ``context`` tokens already scored (unscored context) followed by up to
    ``window - context`` new tokens (scored). The first window of a stream has no context: its first token is
    predicted from nothing, as at the start of a training crop.
    """

    __slots__ = ("context", "pending", "tail", "window")

    def __init__(self, window: int, context: int) -> None:
        self.window = window
        self.context = context
        self.tail: list[int] = []
        self.pending: list[int] = []

    def ready(self) -> bool:
        return len(self.tail) + len(self.pending) >= self.window

    def take(self, partial: bool = False) -> tuple[list[int], int] | None:
        """The next window's ids and the index where its scored tokens start; None when not enough pending."""
        room = self.window - len(self.tail)
        if len(self.pending) < room and not (partial and self.pending):
            return None
        new = self.pending[:room]
        del self.pending[:room]
        ids = self.tail + new
        start = len(self.tail)
        keep = ids[-self.context:] if self.context else []
        self.tail = keep
        return ids, start


def pack(windows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """Right-pad windows with PAD into one int64 array [N, width]."""
    arr = np.zeros((len(windows), width), dtype=np.int64)
    for i, w in enumerate(windows):
        arr[i, : len(w)] = w
    return arr


class RunningScore:
    """Mean NLL over the last ``horizon`` scored tokens of one process, fed window by window."""

    __slots__ = ("count", "horizon", "parts", "seen", "total")

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.parts: deque[tuple[float, int]] = deque()
        self.total = 0.0
        self.count = 0
        self.seen = 0  # scored tokens over the process's life

    def add(self, nll_sum: float, n: int) -> None:
        self.parts.append((nll_sum, n))
        self.total += nll_sum
        self.count += n
        self.seen += n
        while len(self.parts) > 1 and self.count - self.parts[0][1] >= self.horizon:
            s, k = self.parts.popleft()
            self.total -= s
            self.count -= k

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def score_sequences(scorer: Scorer, sequences: Sequence[Sequence[int]], scoring: ScoringParams | None = None,
                    batch_windows: int = 64) -> np.ndarray:
    """Score whole sequences the way the analyzer scores processes: the maximum over the stream of the running
    score, taken after each window once ``min_events`` tokens were scored, and at the end (exit) when at least
    ``exit_min_events`` were. Sequences too short for any score get NaN. Batched: one session.run per
    ``batch_windows`` windows.
    """
    sc = scoring or scorer.info.scoring
    w, c = scorer.info.window, scorer.info.context
    # cut every sequence into windows first
    cuts: list[tuple[int, list[int], int, int]] = []  # (sequence index, ids, start, n_new)
    for i, seq in enumerate(sequences):
        win = Windower(w, c)
        win.pending = list(seq)
        while True:
            item = win.take(partial=True)
            if item is None:
                break
            ids, start = item
            cuts.append((i, ids, start, len(ids) - start))
    sums = np.zeros(len(cuts), dtype=np.float64)
    # batches of windows of similar length, each only as wide as its longest window (the model takes any width)
    order = sorted(range(len(cuts)), key=lambda k: len(cuts[k][1]))
    for b in range(0, len(order), batch_windows):
        chunk = order[b : b + batch_windows]
        width = len(cuts[chunk[-1]][1])
        arr = pack([cuts[k][1] for k in chunk], width)
        nll = scorer.run(arr)
        for j, k in enumerate(chunk):
            _, ids, start, _ = cuts[k]
            sums[k] = float(nll[j, start : len(ids)].sum())
    best = np.full(len(sequences), -np.inf)
    states: dict[int, RunningScore] = {}
    last_of: dict[int, int] = {}
    for k, (i, _, _, _) in enumerate(cuts):
        last_of[i] = k
    for k, (i, _, _, n) in enumerate(cuts):
        st = states.setdefault(i, RunningScore(sc.horizon))
        st.add(float(sums[k]), n)
        final = last_of[i] == k
        if st.seen >= sc.min_events or (final and st.seen >= sc.exit_min_events):
            best[i] = max(best[i], st.mean())
        if final:
            del states[i]
    best[~np.isfinite(best)] = np.nan
    return best


def score_to_100(value: float, calibration: Calibration, fa_rate: float, strong_fa_rate: float) -> int:
    """Map a running mean NLL to 0-100: the threshold at ``fa_rate`` maps to 50, the one at ``strong_fa_rate``
    (rarer) to 75, linear between and beyond (clipped); below the first threshold linear from 0 at NLL 0.
    """
    return scale_to_100(value, calibration.threshold(fa_rate), calibration.threshold(strong_fa_rate))


def scale_to_100(value: float, t1: float, t2: float) -> int:
    """Map a running mean NLL to 0-100: ``t1`` (nats) maps to 50, ``t2`` to 75 (``1.25 * t1`` when ``t2`` is not
    above ``t1``), linear between and beyond (clipped); below ``t1`` linear from 0 at NLL 0."""
    if t2 <= t1:
        t2 = t1 * 1.25 + 1e-6
    if value <= t1:
        s = 50.0 * max(value, 0.0) / t1 if t1 > 0 else 0.0
    else:
        s = 50.0 + 25.0 * (value - t1) / (t2 - t1)
    return int(max(0.0, min(100.0, round(s))))


def describe(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "window": info.window, "context": info.context,
            "vocab": len(info.vocab), "calibration": {str(k): v for k, v in info.calibration.thresholds.items()}}
