"""analyzer_onnx: per-process windows of syscalls and probe events scored by an ONNX language model.

Each process's events become a token stream (tokens.py). Once a process has a full window pending, the window
(with ``context`` tokens of the previous one in front) goes into this batch's inference: every ready window of
every process in the batch is stacked and scored together (``_infer``: one inference per window width, windows
seen before taken from a cache). The model returns each token's
surprise (negative log-likelihood, nats); a process's score is the mean surprise over its last ``horizon``
scored tokens. That mean is mapped to 0-100 through the model's calibration (the threshold at ``fa_rate`` on
held-back normal processes maps to 50, the one at ``strong_fa_rate`` to 75; a model made by ``ravn learn``
brings thresholds calibrated to a false-alarm budget per host-hour instead) and the process is reported when
it reaches ``alert_score``. An exited process (``exit_grace_s`` after its exit event, which comes before its
last syscall summary) and an idle one get a final score on their partial window in ``tick``.

The model corroborates; it does not accuse. Its alerts carry ``corroboration=True``: the core keeps them LOW
and adds their score (with a capped weight) to the incident of the process they name. Only a model whose
metadata (``ravn.learning``) shows that it met the false-alarm budget on held-back data of this host, with
``own_alerts`` set, raises alerts of its own, at most ``OWN_MAX_SCORE`` (MEDIUM); ``health()`` and the log
say which mode is in force and why.

The analyzer never folds or threat-scores: that is the core's job (ravn_core/threat.py).

Fallback: with no usable model (missing, unreadable, wrong inputs, bad metadata), after an inference error, or
after ``budget_strikes`` batches in a row whose inference went over ``latency_budget_ms``, the analyzer steps
aside: ``analyze`` returns no alerts and drops its per-process state, ``health()`` is "degraded" with the reason,
and the rules analyzer carries on alone. ``reload()`` (SIGHUP) or a changed model file (mtime, checked in
``tick``) brings the model back; after a latency or inference fallback it also retries by itself every
``retry_after_s``.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from pydantic import Field

from ravn_analyzers.onnx.model import (
    RUN_WINDOWS,
    UNK,
    ModelError,
    ModelInfo,
    RunningScore,
    Scorer,
    ScoringParams,
    Windower,
    pack,
    scale_to_100,
)
from ravn_analyzers.onnx.tokens import TECHNIQUE_HINTS, display, event_tokens
from ravn_core.components import Alert, Analyzer, BatchContext, Health, PluginConfig, RuntimeContext
from ravn_core.errors import DidNotEnable
from ravn_core.events import Batch

DEFAULT_MODEL = "default"
#: ceiling of an own (non-corroboration) alert's score: MEDIUM at most, HIGH only through an incident
OWN_MAX_SCORE = 80
#: the false-alarm budget a model must have met for own alerts: MEDIUM alerts per host-hour of held-back data
FA_BUDGET_PER_HOUR = 1.0


def default_model_path() -> str:
    """The packaged model (ravn_analyzers/onnx/data/default.onnx)."""
    return str(resources.files("ravn_analyzers.onnx").joinpath("data/default.onnx"))


class OnnxConfig(PluginConfig):
    """The ``analyzers: [{plugin: analyzer_onnx, ...}]`` section."""

    model_path: str = Field(DEFAULT_MODEL, description="ONNX model file; 'default' is the packaged benign model")
    window: int | None = Field(None, ge=8, le=4096, description="tokens per window (default: the model's)")
    stride: int | None = Field(None, ge=1, le=4096,
                               description="new tokens per window (default: window minus the model's context)")
    fa_rate: float | None = Field(None, gt=0, lt=1, description="calibrated per-process false-alarm rate whose "
                                  "threshold maps to 50 (default: a learned model's budget threshold, else 0.01)")
    strong_fa_rate: float = Field(0.001, gt=0, lt=1, description="calibrated rate whose threshold maps to 75 "
                                  "(with fa_rate set, or a model without learned thresholds)")
    threshold: float | None = Field(None, gt=0, description="override: mean surprise (nats) that maps to 50")
    alert_score: int = Field(50, ge=1, le=100, description="report a process when its 0-100 score reaches this "
                             "(a LOW corroboration alert, unless own_alerts applies)")
    own_alerts: bool = Field(False, description="let the model raise alerts of its own (at most MEDIUM), honoured "
                             "only for a model from `ravn learn` on this host that met its false-alarm budget")
    own_alerts_budget: float = Field(FA_BUDGET_PER_HOUR, gt=0, le=FA_BUDGET_PER_HOUR,
                                     description="own_alerts needs the model's measured MEDIUM false alarms per "
                                     "host-hour (held-back data) to be at most this")
    max_model_mb: float = Field(16.0, gt=0, le=1024, description="a larger model file is refused (not loaded)")
    min_events: int | None = Field(None, ge=1, description="scored tokens before a live process can alert "
                                                           "(default: the model's calibration setting)")
    exit_min_events: int | None = Field(None, ge=1, description="scored tokens for a final score at exit/idle")
    horizon: int | None = Field(None, ge=8, description="a process's score: mean over its last N scored tokens")
    latency_budget_ms: float = Field(50.0, gt=0, description="max inference time per batch (one session.run)")
    budget_strikes: int = Field(3, ge=1, description="batches in a row over budget before falling back")
    retry_after_s: float = Field(300.0, ge=0, description="retry after a latency/inference fallback (0: never; "
                                                         "SIGHUP or a new model file always retries)")
    max_windows_per_batch: int = Field(128, ge=1, description="windows scored per analyze call (bounds its latency); "
                                                                  "the rest wait for the next call")
    exit_grace_s: float = Field(3.0, ge=0, description="after a process's exit event, wait this long for its last "
                                                       "syscall summary before its final score")
    idle_flush_s: float = Field(10.0, ge=0, description="tick scores the partial window of a process idle this "
                                                        "long (0: only at exit)")
    max_processes: int = Field(8192, ge=16, description="processes tracked at once (least recent dropped); "
                                                        "about 4.7 KB each with 200 tokens pending")
    realert_s: float = Field(300.0, ge=0, description="no new alert for a process within this, unless its "
                                                      "score rose by 10 or more")
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")
    other_events: bool = Field(True, description="include non-syscall probe events as tokens (@exec, @connect..)")
    evidence_tokens: int = Field(64, ge=1, le=4096, description="tokens of the high window kept in evidence")
    score_cache: int = Field(4096, ge=0, description="windows whose surprise is remembered (LRU), so that a short "
                             "program run again is not inferred again (0: no cache); at most ~0.7 KB each")
    score_cache_max_tokens: int = Field(64, ge=8, le=4096, description="only windows of at most this many tokens "
                                        "are cached (short-lived processes' windows repeat, long ones rarely)")


class _Proc:
    """One process's state. Most processes of a busy host live a few events (a shell loop's /bin/true is four tokens)
    and are never scored, so a new one holds only its pending tokens: the windower and the running score are made
    when its first window is cut (``windower``, ``_score``)."""

    __slots__ = ("alerted_at", "alerted_score", "best", "comm", "exit_deadline", "exited_at", "last", "pending",
                 "pending_toks", "recent", "score", "scored", "win")

    def __init__(self) -> None:
        self.pending: list[int] = []  # token ids not scored yet (the windower's ``pending`` once it exists)
        self.pending_toks: list[str] = []  # token strings beside ``pending`` (for evidence)
        self.win: Windower | None = None  # made by ``windower`` at the first cut
        self.score: RunningScore | None = None  # made at the first scored window
        self.comm = ""
        self.last = 0.0
        self.exited_at = 0.0  # when its exit event arrived (0: running)
        self.exit_deadline = 0  # its exit event's evt.ts + exit_grace_s (0: none), the key of its _exits entry
        self.scored = False  # has had a score (counted once in processes_scored)
        self.alerted_at = 0.0
        self.alerted_score = 0
        self.recent: Sequence[str] = ()  # the last context tokens (strings) of the window just scored
        self.best: tuple[float, Sequence[str]] = _NO_BEST  # highest-scoring window: (mean, tokens)

    def ready(self, window: int) -> bool:
        """A full window is pending (what ``Windower.ready`` says, without making one)."""
        win = self.win
        return len(self.pending) >= window - (len(win.tail) if win is not None else 0)

    def windower(self, window: int, context: int) -> Windower:
        win = self.win
        if win is None:
            win = self.win = Windower(window, context)
            win.pending = self.pending  # one list: what the windower takes leaves ``pending``
        return win

    def seen(self) -> int:
        """Tokens scored over the process's life."""
        return self.score.seen if self.score is not None else 0


#: the best window of a process with none scored yet (shared: replaced, never changed)
_NO_BEST: tuple[float, Sequence[str]] = (-1.0, ())


class OnnxAnalyzer(Analyzer):
    """Scores per-process windows of syscalls and probe events with an ONNX sequence model."""

    config: OnnxConfig

    def __init__(self, name: str, config: OnnxConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        try:
            import onnxruntime  # noqa: F401 - only checks that it is importable
        except ImportError as exc:
            raise DidNotEnable(f"onnxruntime is not installed ({exc}); pip install 'ravn-analyzers[onnx]'") from exc
        self.model_path = self._resolve(config.model_path)
        self.scorer: Scorer | None = None
        self._ids: dict[str, int] = {}
        self.reason = ""
        self.retryable = False
        self.degraded_since = 0.0
        self._mtime: float | None = None
        self._strikes = 0
        self._procs: OrderedDict[tuple[str, int], _Proc] = OrderedDict()
        self._backlog: set[tuple[str, int]] = set()
        # (evt.ts deadline, key) of exited processes. Keys, not processes: an entry must not keep alive a process
        # that the max_processes bound or tick() already dropped (a fork storm leaves exit_grace_s of them).
        # Bounded too: when the event stream is quiet, tick() finalises exited processes by wall clock instead.
        self._exits: deque[tuple[int, tuple[str, int]]] = deque(maxlen=config.max_processes)
        self._latest_ts = 0  # newest evt.ts seen (ns)
        # (window ids, start) -> summed surprise of window[start:], for the loaded model (see _infer)
        self._cache: OrderedDict[tuple[tuple[int, ...], int], float] | None = (
            OrderedDict() if config.score_cache else None)
        self.counters: dict[str, float] = {
            "batches": 0, "runs": 0, "windows": 0, "tokens": 0, "alerts": 0, "fallbacks": 0, "reloads": 0,
            "last_run_ms": 0.0, "max_run_ms": 0.0, "over_budget": 0, "processes_scored": 0, "cache_hits": 0,
            "finals_too_short": 0,
        }
        self._load()

    # ------------------------------------------------------------------------------------------ model
    def _resolve(self, path: str) -> str:
        if path == DEFAULT_MODEL:
            return default_model_path()
        if not os.path.isabs(path) and self.context.config_path:
            return os.path.join(os.path.dirname(self.context.config_path), path)
        return path

    def _stat(self) -> float | None:
        try:
            return os.stat(self.model_path).st_mtime_ns / 1e9
        except OSError:
            return None

    def _load(self) -> bool:
        """Load the model file; on failure keep a working model, or step aside. True when a new one loaded."""
        self._mtime = self._stat()
        try:
            scorer = Scorer(self.model_path, threads=self.config.threads,
                            max_bytes=int(self.config.max_model_mb * 1024 * 1024))
            self._check(scorer)
        except ModelError as exc:
            if self.scorer is not None and not self.reason:
                self.log.error("model %s not reloaded, keeping %s %s: %s", self.model_path,
                               self.scorer.info.name, self.scorer.info.version, exc)
                return False
            self._degrade(f"no usable model: {exc}", retryable=False)
            return False
        self.scorer = scorer
        self._ids = scorer.ids
        info = scorer.info
        self.window = self.config.window or info.window
        stride = self.config.stride or (self.window - info.context)
        self.ctx_len = max(0, self.window - min(stride, self.window))
        sc = info.scoring
        self.scoring = ScoringParams(self.config.min_events or sc.min_events,
                                     self.config.exit_min_events or sc.exit_min_events,
                                     self.config.horizon or sc.horizon)
        self.t50, self.t75 = self._thresholds(info)
        self.own_host, self.mode = self._own_alerts(info)
        self._procs.clear()
        self._exits.clear()
        if self._cache is not None:
            self._cache.clear()  # sums of the previous model
        self._strikes = 0
        if self.reason:
            self.log.warning("model %s %s back in use (was: %s)", info.name, info.version, self.reason)
        self.reason = ""
        self.retryable = False
        self.log.info("model %s %s loaded from %s (window %d, context %d, threshold %.3f nats); %s", info.name,
                      info.version, self.model_path, self.window, self.ctx_len, self.t50, self.mode)
        return True

    def _thresholds(self, info: ModelInfo) -> tuple[float, float]:
        """(nats at 50, nats at 75): the ``threshold`` override, else a learned model's budget thresholds (unless
        ``fa_rate`` is set), else the per-process calibration at ``fa_rate`` / ``strong_fa_rate``."""
        cfg = self.config
        if cfg.threshold:
            return cfg.threshold, cfg.threshold * 1.25
        if cfg.fa_rate is None and info.learning is not None:
            return float(info.learning["threshold_nats"]), float(info.learning["strong_threshold_nats"])
        cal = info.calibration
        return cal.threshold(cfg.fa_rate or 0.01), cal.threshold(cfg.strong_fa_rate)

    def _own_alerts(self, info: ModelInfo) -> tuple[str | None, str]:
        """(the host whose batches may get own alerts, or None; the mode in one line, for health and the log)."""
        learning = info.learning
        if not self.config.own_alerts:
            return None, "corroboration only (own_alerts is off)"
        if learning is None:
            return None, ("corroboration only: own_alerts is on, but the model has no false-alarm rate measured "
                          "on this host (make one with `ravn learn`)")
        rate, hours, host = learning["fa_per_hour"], learning["heldout_hours"], learning["host"]
        measured = f"{rate:.2f} MEDIUM false alarms per host-hour on {hours:.2f} h held back on {host}"
        if not learning["budget_met"] or rate > self.config.own_alerts_budget:
            return None, (f"corroboration only: own_alerts is on, but the model measured {measured}, not within "
                          f"{'its learning budget' if not learning['budget_met'] else 'own_alerts_budget'} "
                          f"({min(learning['budget_per_hour'], self.config.own_alerts_budget):g} per host-hour)")
        if host != self.context.host:
            return host, (f"own alerts for host {host} only (measured {measured}); corroboration only for "
                          f"other hosts (this host is {self.context.host})")
        return host, f"own alerts (measured {measured})"

    def _check(self, scorer: Scorer) -> None:
        """One inference of the largest run: a model that loads but cannot run on [N, window] int64 is not usable.
        Running the largest shape now also gives onnxruntime's arena its full size at load, so memory does not
        step up at the first busy moment (a soak's growth figure would count it as growth)."""
        w = self.config.window or scorer.info.window
        probe = np.full((RUN_WINDOWS, w), 2, dtype=np.int64)
        try:
            scorer.run(probe)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own types on shape/type errors at run time
            raise ModelError(f"test inference failed on int64 [{RUN_WINDOWS}, {w}]: {type(exc).__name__}: {exc}"
                             ) from exc

    def _degrade(self, reason: str, retryable: bool) -> None:
        if not self.reason:
            self.counters["fallbacks"] += 1
            self.log.error("analyzer %s steps aside, rules carry on: %s", self.name, reason)
        self.reason = reason
        self.retryable = retryable
        self.degraded_since = time.monotonic()
        self.scorer = None
        self._procs.clear()
        self._exits.clear()

    def reload(self) -> None:
        self.counters["reloads"] += 1
        self._load()

    # ------------------------------------------------------------------------------------------ analysis
    def analyze(self, batch: Batch, ctx: BatchContext) -> list[Alert]:
        if self.scorer is None:
            return []
        self.counters["batches"] += 1
        procs = self._procs
        get_proc = procs.get
        to_end = procs.move_to_end
        max_procs = self.config.max_processes
        ids_get = self._ids.get
        host = ctx.host
        now = ctx.now
        other = self.config.other_events
        final: list[tuple[tuple[str, int], _Proc]] = []
        touched: dict[tuple[str, int], _Proc] = {}
        latest = 0
        n_tokens = 0
        grace_ns = int(self.config.exit_grace_s * 1e9)
        for ev in batch:
            get = ev.get
            etype = get("evt.type")
            if etype == "fork":  # a pid reused by a new process: the exited one it belonged to is complete
                ckey = (host, get("fork.child_pid", 0))
                old = get_proc(ckey)
                if old is not None and old.exited_at:
                    final.append((ckey, procs.pop(ckey)))
                    touched.pop(ckey, None)
            if not other and etype not in ("syscall", "syscall_summary"):
                continue
            toks = event_tokens(ev)
            key = (host, get("proc.pid", 0))
            p = get_proc(key)
            if p is None:
                if not toks:
                    continue
                p = procs[key] = _Proc()
                if len(procs) > max_procs:
                    procs.popitem(last=False)
            else:
                to_end(key)
            p.comm = get("proc.comm", p.comm) or p.comm
            p.last = now
            if toks:
                if len(toks) == 1:
                    tok = toks[0]
                    p.pending.append(ids_get(tok, UNK))
                    p.pending_toks.append(tok)
                else:
                    p.pending.extend([ids_get(t, UNK) for t in toks])
                    p.pending_toks.extend(toks)
                touched[key] = p
                n_tokens += len(toks)
            ts = get("evt.ts")
            if isinstance(ts, int) and ts > latest:
                latest = ts
            if etype == "exit":
                # not final yet: its last syscall summary usually arrives after the exit event. It is scored
                # exit_grace_s later, by event time (below; replays too) or by wall clock (tick), or when a fork
                # reuses the pid.
                p.exited_at = now
                if isinstance(ts, int):
                    p.exit_deadline = ts + grace_ns
                    self._exits.append((p.exit_deadline, key))
        self.counters["tokens"] += n_tokens
        if latest > self._latest_ts:
            self._latest_ts = latest
        exits = self._exits
        while exits and exits[0][0] <= self._latest_ts:
            deadline, key = exits.popleft()
            p = procs.get(key)  # the same process, unless it was dropped (and its pid reused) since
            if p is not None and p.exit_deadline == deadline:
                del procs[key]
                touched.pop(key, None)
                self._backlog.discard(key)
                if p.pending:
                    final.append((key, p))
        for key in self._backlog:  # ready windows left over by an earlier call's cap go first
            bp = procs.get(key)
            if bp is not None and key not in touched:
                touched[key] = bp
        self._backlog.clear()
        window = self.window
        ready = [(key, p) for key, p in touched.items() if p.ready(window)]
        if not ready and not final:
            return []
        return self._score(ready, final, ctx)

    def tick(self, ctx: BatchContext) -> list[Alert]:
        mtime = self._stat()
        if mtime != self._mtime:  # a new (or removed) model file
            self.log.info("model file %s changed; loading it", self.model_path)
            self._load()
        elif (self.scorer is None and self.retryable and self.config.retry_after_s > 0
              and time.monotonic() - self.degraded_since >= self.config.retry_after_s):
            self._load()
        if self.scorer is None:
            return []
        now = ctx.now
        grace, idle_s = self.config.exit_grace_s, self.config.idle_flush_s
        procs = self._procs
        done: list[tuple[tuple[str, int], _Proc]] = []
        idle: list[tuple[tuple[str, int], _Proc]] = []
        for k, p in procs.items():  # one pass over the processes for both kinds of final
            if p.exited_at:
                if now - p.exited_at >= grace:
                    done.append((k, p))
            elif idle_s > 0 and p.pending and now - p.last >= idle_s:
                idle.append((k, p))
        for k, _ in done:
            del procs[k]
        finals = [(k, p) for k, p in done if p.pending] + idle
        return self._score([], finals, ctx) if finals else []

    def _score(self, ready: list[tuple[tuple[str, int], _Proc]], final: list[tuple[tuple[str, int], _Proc]],
               ctx: BatchContext) -> list[Alert]:
        """Cut the windows of ready processes (full windows) and final ones (everything left; none for a process
        too short ever to be scored), infer them together (``_infer``), update scores, return alerts."""
        scorer = self.scorer
        if scorer is None:
            return []
        cap = self.config.max_windows_per_batch
        cuts: list[tuple[_Proc, tuple[str, int], list[int], list[str], int, bool]] = []
        final_keys = {k for k, _ in final}
        min_final = self.scoring.exit_min_events
        for key, p in [*ready, *final]:
            is_final = key in final_keys
            if is_final and p.seen() + len(p.pending) < min_final:
                # every token it will ever have scored is under exit_min_events: no score, no alert can come of it
                self.counters["finals_too_short"] += 1
                continue
            win = p.windower(self.window, self.ctx_len)
            while len(cuts) < cap:
                item = win.take(partial=is_final)
                if item is None:
                    break
                ids, start = item
                n_new = len(ids) - start
                new_toks = p.pending_toks[:n_new]
                del p.pending_toks[:n_new]
                toks = [*p.recent[-start:], *new_toks] if start else new_toks
                p.recent = toks[-self.ctx_len:] if self.ctx_len else []  # the next window's context only
                cuts.append((p, key, ids, toks, start, is_final))
            if len(cuts) >= cap:
                break
        # processes with full windows still pending are served first by the next call
        self._backlog.update(k for k, p in ready if p.ready(self.window))
        if not cuts:
            return []
        sums, ms = self._infer([c[2] for c in cuts], [c[4] for c in cuts])
        if sums is None:
            return []
        c = self.counters
        c["windows"] += len(cuts)
        if ms is not None:
            c["runs"] += 1
            c["last_run_ms"] = ms
            c["max_run_ms"] = max(c["max_run_ms"], ms)
            if ms > self.config.latency_budget_ms:
                c["over_budget"] += 1
                self._strikes += 1
                if self._strikes >= self.config.budget_strikes:
                    self._degrade(f"inference over its latency budget: {self._strikes} batches in a row above "
                                  f"{self.config.latency_budget_ms:g} ms (last {ms:.1f} ms for {len(cuts)} "
                                  "windows)", retryable=True)
                    return []
            else:
                self._strikes = 0
        alerts: list[Alert] = []
        sc = self.scoring
        for j, (p, key, ids, toks, start, is_final) in enumerate(cuts):
            n = len(ids) - start
            s = sums[j]
            score = p.score
            if score is None:
                score = p.score = RunningScore(sc.horizon)
            score.add(s, n)
            wmean = s / n if n else 0.0
            if wmean > p.best[0]:
                p.best = (wmean, toks[start:][-self.config.evidence_tokens:])  # bounded: evidence only
            last_of_proc = j + 1 == len(cuts) or cuts[j + 1][0] is not p
            if not last_of_proc:
                continue
            enough = score.seen >= sc.min_events or (is_final and score.seen >= sc.exit_min_events)
            if not enough:
                continue
            if not p.scored:
                p.scored = True
                c["processes_scored"] += 1
            alert = self._maybe_alert(p, key, ctx, is_final)
            if alert is not None:
                alerts.append(alert)
        c["alerts"] += len(alerts)
        return alerts

    def _infer(self, windows: list[list[int]], starts: list[int]) -> tuple[list[float] | None, float | None]:
        """The summed surprise of each window's scored tokens (``window[start:]``), and the inference time in ms
        (None when every window came from the cache). (None, None) after an inference error (stepped aside).

        A window seen before (the same ids and start: the same short-lived program run again, a shell loop's
        /bin/true, a cron job) takes its sum from a bounded LRU cache of ``score_cache`` entries; the model is
        deterministic, so the sum is the one an inference would give. The others are grouped by width: right
        padding never changes a causal model's output at the real positions, so each group is only as wide as its
        longest window rounded up to a power of two (a few shapes), and a short-lived process's final window of
        20 tokens costs a 32-wide row, not a 256-wide one, even beside a full window."""
        scorer = self.scorer
        assert scorer is not None
        cache, max_len = self._cache, self.config.score_cache_max_tokens
        sums: list[float] = [0.0] * len(windows)
        todo: dict[tuple[tuple[int, ...], int], list[int]] = {}  # window -> its indexes in this call
        hits = 0
        for j, (ids, start) in enumerate(zip(windows, starts, strict=True)):
            key = (tuple(ids), start)
            if cache is not None and len(ids) <= max_len:
                got = cache.get(key)
                if got is not None:
                    cache.move_to_end(key)
                    sums[j] = got
                    hits += 1
                    continue
            todo.setdefault(key, []).append(j)
        self.counters["cache_hits"] += hits
        if not todo:
            return sums, None
        by_width: dict[int, list[tuple[tuple[int, ...], int]]] = {}
        for key in todo:
            n = len(key[0])
            by_width.setdefault(min(self.window, max(32, 1 << (n - 1).bit_length())), []).append(key)
        t0 = time.perf_counter()
        try:
            for width, keys in by_width.items():
                nll = scorer.run(pack([k[0] for k in keys], width))
                for row, key in enumerate(keys):
                    ids_t, start = key
                    total = float(nll[row, start : len(ids_t)].sum())
                    for j in todo[key]:
                        sums[j] = total
                    if cache is not None and len(ids_t) <= max_len:
                        cache[key] = total
                        if len(cache) > self.config.score_cache:
                            cache.popitem(last=False)
        except Exception as exc:
            self._degrade(f"inference error: {type(exc).__name__}: {exc}", retryable=True)
            return None, None
        return sums, (time.perf_counter() - t0) * 1000.0

    def _maybe_alert(self, p: _Proc, key: tuple[str, int], ctx: BatchContext, is_final: bool) -> Alert | None:
        scorer = self.scorer
        assert scorer is not None
        running = p.score
        assert running is not None  # called after a scored window
        value = running.mean()
        t50 = self.t50
        score = scale_to_100(value, t50, self.t75)
        if score < self.config.alert_score:
            return None
        own = self.own_host is not None and ctx.host == self.own_host
        if own:
            score = min(score, OWN_MAX_SCORE)
        now = ctx.now
        if p.alerted_at and now - p.alerted_at < self.config.realert_s and score < p.alerted_score + 10:
            return None
        p.alerted_at = now
        p.alerted_score = score
        pid = key[1]
        info = scorer.info
        best_mean, best_toks = p.best
        shown = [display(t) for t in best_toks[-self.config.evidence_tokens:]]
        tags = ["anomaly"]
        for t in dict.fromkeys(best_toks):
            hint = TECHNIQUE_HINTS.get(t)
            if hint and hint not in tags:
                tags.append(hint)
        return Alert(
            analyzer=self.name,
            rule=info.name,
            score=score,
            description=(f"unusual syscall/event sequence for {p.comm or '?'} (pid {pid}): mean surprise "
                         f"{value:.2f} nats over its last {running.count} events, threshold {t50:.2f} of model "
                         f"{info.name} {info.version}" + ("" if own else " (corroboration)")),
            pid=pid,
            comm=p.comm,
            tags=tags,
            evidence={
                "model": info.name,
                "model_version": info.version,
                "process_score_nats": round(value, 4),
                "threshold_nats": round(t50, 4),
                "events_scored": running.seen,
                "final": is_final,
                "window": {"mean_nats": round(best_mean, 4), "tokens": shown},
                "lineage": ctx.proctree.lineage(pid),
            },
            host=ctx.host,
            corroboration=not own,
        )

    # ------------------------------------------------------------------------------------------ status
    def health(self) -> Health:
        counters = dict(self.counters)
        counters["processes"] = len(self._procs)
        if self.scorer is None:
            return Health("degraded", self.reason, counters)
        info = self.scorer.info
        return Health("ok", f"model {info.name} {info.version}; {self.mode}", counters)

    def describe(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "reason": self.reason,
                "model": None if self.scorer is None else self.scorer.info.name,
                "mode": "" if self.scorer is None else self.mode}

    def close(self) -> None:
        self.scorer = None
        self._procs.clear()
