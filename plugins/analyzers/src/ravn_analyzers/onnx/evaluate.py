"""False alarms per host-hour: a recording replayed through OnnxAnalyzer, counting what would be MEDIUM.

Used by ``ravn learn`` (the budget check written into a learned model's metadata) and bench/onnx_fa.py (the
figures in docs/MODEL.md). The recording is replayed in batches of 1024 events as ``ravn replay`` does, with the
batch's newest ``evt.ts`` as the clock (so ``realert_s``, ``exit_grace_s`` and ``idle_flush_s`` act as they did
live), a ``tick`` after every batch and a final one. A MEDIUM-equivalent false alarm is an alert whose score is
above ``MEDIUM_ABOVE`` (50): what the model would raise as MEDIUM if it alerted on its own. Hours are the
recording's ``evt.ts`` span.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig
from ravn_core.components import Alert, BatchContext, RuntimeContext
from ravn_core.events import Event
from ravn_core.proctree import ProcessTree

MEDIUM_ABOVE = 50


@dataclass
class Evaluation:
    events: int
    hours: float
    processes_scored: int
    reports: int  # alerts at or above alert_score
    medium: int  # alerts above MEDIUM_ABOVE
    alerts: list[Alert]

    @property
    def per_hour(self) -> float:
        return self.medium / self.hours if self.hours > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        return {"events": self.events, "hours": round(self.hours, 4), "processes_scored": self.processes_scored,
                "reports": self.reports, "medium": self.medium, "medium_per_hour": round(self.per_hour, 3)}


def read_events(path: str) -> Iterator[Event]:
    """Event dicts of a JSON-lines recording (lines that are not JSON objects are skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict):
                yield ev


def evaluate(model_path: str, events: Iterable[Event], host: str = "host", batch_size: int = 1024,
             **config: Any) -> Evaluation:
    """Replay ``events`` through an OnnxAnalyzer on ``model_path`` (``config``: OnnxConfig fields)."""
    config.setdefault("latency_budget_ms", 60000.0)  # a replay runs flat out on a shared machine: never step aside
    context = RuntimeContext(host, os.getpid(), tempfile.gettempdir(), logging.getLogger("ravn.evaluate"))
    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=model_path, **config), context)
    if an.scorer is None:
        raise ValueError(f"model {model_path} not usable: {an.reason}")
    tree = ProcessTree()
    alerts: list[Alert] = []
    first = last = 0
    n = 0
    batch: list[Event] = []

    def run(batch: list[Event]) -> None:
        nonlocal first, last
        for ev in batch:
            ts = ev.get("evt.ts")
            if isinstance(ts, int) and ts > 0:
                first = ts if not first else min(first, ts)
                last = max(last, ts)
        now = last / 1e9
        tree.update(batch)
        c = BatchContext(host, tree, now)
        alerts.extend(an.analyze(batch, c))
        alerts.extend(an.tick(c))

    for ev in events:
        batch.append(ev)
        n += 1
        if len(batch) >= batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    alerts.extend(an.tick(BatchContext(host, tree, last / 1e9 + 3600)))
    hours = (last - first) / 3.6e12 if last > first else 0.0
    medium = sum(1 for a in alerts if a.score > MEDIUM_ABOVE)
    scored = int(an.counters["processes_scored"])
    an.close()
    return Evaluation(n, hours, scored, len(alerts), medium, alerts)
