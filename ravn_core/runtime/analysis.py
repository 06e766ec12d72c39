"""The analysis stage: analysis threads consume deliveries from the transport, update the host's process tree, run
every analyzer on the batch, score the alerts (per-host incident tracker) and hand them to the sink stage.

Each analysis thread is a ``Worker`` with its own analyzer instances (one slot per analyzer per thread) and its own
counters; ``stats()`` sums them. Everything here is per batch, never per event, except the event-by-event re-run
that isolates a bad event (only after a batch raised).

One bad event never costs the others in its batch: when the process tree raises on a batch it is applied event by
event and the events it raises on are dead-lettered (no analyzer sees them); when an analyzer raises on a batch it
is run on each event alone, the events it raises on alone are dead-lettered and its error budget is untouched; only
when it raises on every event is the fault its own (restart after backoff, budget).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ravn_core.components import Alert, BatchContext, Delivery, Transport
from ravn_core.config import ComponentSpec, CoreConfig
from ravn_core.errors import DidNotEnable, StartupError
from ravn_core.events import Batch
from ravn_core.proctree import ProcessTree
from ravn_core.runtime.hosts import Hosts
from ravn_core.runtime.phases import Phases
from ravn_core.runtime.reorder import Reorder
from ravn_core.runtime.sink import SinkItem, SinkStage
from ravn_core.runtime.supervisor import Slot, Supervisor

log = logging.getLogger("ravn.runtime")

TICK_S = 1.0
#: upper bounds (seconds) of the analysis latency histogram that /metrics exports (ravn_analysis_latency_seconds)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(eq=False)
class Worker:
    """One analysis thread: its analyzers and its counters (one writer: that thread)."""

    index: int
    slots: list[Slot]
    analyzed: int = 0  # events taken from the transport (analyzed by each analyzer, skipped or dead-lettered)
    analyzed_batches: int = 0
    alerts: int = 0  # raised by the analyzers, before folding
    dead_letters: int = 0
    sink_items_lost: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    hold: Reorder | None = None  # what the thread took and has not analysed yet (kept across its restarts)


class AnalysisStage:
    """Analysis threads over the transport; scoring through ``Hosts``; alerts out through the sink stage."""

    def __init__(self, core: CoreConfig, role: str, hostname: str, supervisor: Supervisor, phases: Phases,
                 hosts: Hosts, sink: SinkStage) -> None:
        self.core = core
        self.role = role
        self.hostname = hostname
        self.supervisor = supervisor
        self.phases = phases
        self.hosts = hosts
        self.sink = sink
        self.transport: Slot | None = None
        self._transport_acks: bool | None = None  # see _acks
        self.workers: list[Worker] = []
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=20)  # the last few, for `ravn status`
        self._self_lock = threading.Lock()  # self-alerts come from any thread
        self.self_alerts = 0  # scored here (counted in "alerts" with the analyzers' own)
        self.self_items_lost = 0

    # ------------------------------------------------------------------------------------------ building
    def build(self, specs: list[ComponentSpec], explicitly_named: frozenset[str]) -> None:
        """One instance of each analyzer per analysis thread. An analyzer whose factory raises DidNotEnable is
        left out, unless the config names its plugin (then startup fails)."""
        for i in range(self.core.analysis_threads):
            slots = []
            for spec in specs:
                try:
                    slots.append(Slot(spec, self.supervisor.build(spec)))
                except DidNotEnable as exc:
                    if spec.plugin in explicitly_named:
                        raise StartupError(f"analyzer {spec.name!r} cannot start: {exc}") from exc
                    log.info("analyzer %s not enabled (%s)", spec.name, exc)
            self.workers.append(Worker(i, slots))

    def spawn(self) -> None:
        for w in self.workers:
            self.supervisor.spawn(f"analysis:{w.index}", self.loop, w)

    # ------------------------------------------------------------------------------------------ the thread
    def _now(self, batch: Batch | None) -> float:
        if self.role == "replay" and batch:
            ts = batch[-1].get("evt.ts")
            if isinstance(ts, int | float):
                return float(ts) / 1e9
        return time.time()

    def loop(self, worker: Worker) -> None:
        assert self.transport is not None
        tslot = self.transport
        transport: Transport = tslot.component
        sup = self.supervisor
        phases = self.phases
        last_tick = time.monotonic()
        timeline = time.time()
        if worker.hold is None and self.core.reorder_ms:
            worker.hold = Reorder(self.core.reorder_ms / 1000)
        hold = worker.hold
        while True:
            for slot in worker.slots:
                slot.heartbeat = time.time()
                if slot.reload_requested:
                    slot.reload_requested = False
                    sup.safe(slot, slot.component.reload)
            delivery = None
            wait = 0.05
            if hold is not None and hold.held:
                wait = min(wait, max(hold.due_in(time.time_ns(), time.monotonic()), 0.001))
            try:
                delivery = transport.consume(wait)
            except Exception as exc:
                sup.fail(tslot, exc)
                sup.wait_retry(tslot, phases.final)
                tslot.retry_at = 0.0
            if delivery is not None:
                timeline = self._now(delivery.batch)
                if hold is None:
                    self.analyze(worker, delivery.host, delivery.batch, [delivery], timeline)
                else:
                    hold.add(delivery, time.monotonic())
            if hold is not None and hold.held:
                for r in hold.release(time.time_ns(), time.monotonic()):
                    self.analyze(worker, r.host, r.batch, r.acks, timeline)
            if time.monotonic() - last_tick >= TICK_S:
                last_tick = time.monotonic()
                if self.role != "replay":
                    timeline = time.time()
                self.tick(worker, timeline)
            if delivery is None:
                if self.role == "analyze":
                    if phases.stopping.is_set():
                        break  # fleet worker: what it has not taken stays in the transport for the others
                elif phases.egress_done.is_set() and transport.pending() == 0 and (
                    self.role != "replay" or getattr(transport, "exhausted", True)
                ):
                    break
        if hold is not None:  # what was taken is analysed (and acked) before the thread ends
            for r in hold.release(time.time_ns(), time.monotonic(), everything=True):
                self.analyze(worker, r.host, r.batch, r.acks, timeline)
        self.tick(worker, timeline + 3600 if self.role == "replay" else time.time())

    def analyze(self, worker: Worker, host: str, batch: Batch, acks: list[Delivery], now: float) -> None:
        """Analyse ``batch`` (events of ``host``), score its alerts and hand them to the sinks with ``acks``, the
        deliveries whose last events these are."""
        taken = len(batch)
        tree = self.hosts.tree(host)
        with self.hosts.tree_lock(host):  # another analysis thread may get a batch of this host
            try:
                tree.update(batch)
            except Exception:
                batch = self._update_per_event(worker, tree, batch)
        ctx = BatchContext(host, tree, now)
        alerts: list[Alert] = []
        ready = self.supervisor.ready
        for slot in worker.slots:
            if not ready(slot):
                slot.skipped += len(batch)
                continue
            try:
                found = slot.component.analyze(batch, ctx)
                slot.processed += len(batch)
            except Exception as exc:
                found = self._isolate(worker, slot, batch, ctx, exc)
            if found:
                alerts.extend(found)
        worker.analyzed += taken
        worker.analyzed_batches += 1
        if batch:
            ts = batch[0].get("evt.ts")
            if isinstance(ts, int) and self.role != "replay":
                latency = time.time() - ts / 1e9
                worker.latencies.append(latency)
                worker.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
                worker.latency_sum += latency
        worker.alerts += len(alerts)
        if not self.score(host, acks, alerts, now):
            worker.sink_items_lost += 1

    def _update_per_event(self, worker: Worker, tree: ProcessTree, batch: Batch) -> Batch:
        """The process tree raised on the batch: apply it event by event and dead-letter the events it raises on
        (they are malformed: no analyzer sees them). Returns the rest of the batch."""
        good: Batch = []
        for ev in batch:
            try:
                tree.update([ev])
            except Exception as exc:
                self._dead_letter(worker, "proctree", ev, exc)
                continue
            good.append(ev)
        return good

    def _isolate(self, worker: Worker, slot: Slot, batch: Batch, ctx: BatchContext, exc: Exception) -> list[Alert]:
        """The analyzer raised on a batch: run it on each event alone, so that a bad event costs only itself.

        Events before the bad one may reach a stateful analyzer twice; the incident tracker folds the repeated
        alert within ``threat.fold_window_s``.
        """
        found: list[Alert] = []
        bad: list[tuple[dict[str, Any], Exception]] = []
        analyze = slot.component.analyze
        for ev in batch:
            try:
                found.extend(analyze([ev], ctx) or [])
            except Exception as error:
                bad.append((ev, error))
        if len(bad) == len(batch):
            slot.skipped += len(batch)
            self.supervisor.fail(slot, exc)
            return []
        if not bad:
            log.warning("analyzer %r raised %s: %s on a batch and on none of its events alone; went on", slot.name,
                        type(exc).__name__, exc)
        slot.processed += len(batch) - len(bad)
        slot.dead_letters += len(bad)
        for event, raised in bad:
            self._dead_letter(worker, f"analyzer:{slot.name}", event, raised)
        return found

    def _dead_letter(self, worker: Worker, stage: str, event: dict[str, Any], exc: Exception) -> None:
        """Count a bad event, keep a short copy of the last few for ``ravn status``, log the first ones."""
        worker.dead_letters += 1
        n = sum(w.dead_letters for w in self.workers)  # for the log: every thread's, read (not written) here
        error = f"{type(exc).__name__}: {exc}"[:200]
        text = repr(event)
        self.dead_letters.append({"ts": time.time(), "stage": stage, "error": error,
                                  "event": text if len(text) <= 400 else text[:400] + "..."})
        if n <= 10 or n % 1000 == 0:
            log.warning("dead letter %d: %s raised %s on the event %s%s", n, stage, error, text[:200],
                        "" if n < 10 else " (from now on every 1000th is logged)" if n == 10 else "")

    def tick(self, worker: Worker, now: float) -> None:
        """About once a second: analyzers' time windows (``tick``), then every host's tracker."""
        ctx = BatchContext(self.hostname, self.hosts.tree(self.hostname), now)
        alerts: list[Alert] = []
        for slot in worker.slots:
            if not self.supervisor.ready(slot):
                continue
            try:
                alerts.extend(slot.component.tick(ctx) or [])
            except Exception as exc:
                self.supervisor.fail(slot, exc)
        worker.alerts += len(alerts)
        if not self.score(self.hostname, [], alerts, now, tick=True):
            worker.sink_items_lost += 1

    # ------------------------------------------------------------------------------------------ scoring
    def score(self, host: str, acks: list[Delivery], alerts: list[Alert], now: float, tick: bool = False,
              fold: bool = True) -> bool:
        """Score ``alerts`` with their host's tracker (every host's on a tick) and hand the result, with the
        deliveries to ack, to the sink stage. ``fold=False`` (self-alerts): each alert goes out even when the
        tracker folded it. False when the item was lost at shutdown."""
        for a in alerts:
            a.host = a.host or host
        incidents: dict[str, list[dict[str, Any]]] = {}
        if tick:
            out, updates, incidents = self.hosts.tick(alerts, now)
        else:
            out, updates = self.hosts.process(host, alerts, now)
        if not fold:
            out = [a for a in out if all(a is not b for b in alerts)] + alerts
        if not out and not updates and not incidents and (not acks or not self._acks()):
            return True  # nothing for the sinks, and no ack to make: no handoff to the sink thread
        # the sink thread needs the deliveries only to ack them: do not pin their events while alerts wait
        return self.sink.put(SinkItem([Delivery(d.host, [], d.token) for d in acks], out, updates, incidents))

    def _acks(self) -> bool:
        """Whether the transport's ``ack`` does anything (the embedded transport's is the base no-op)."""
        if self._transport_acks is None:
            assert self.transport is not None
            self._transport_acks = type(self.transport.component).ack is not Transport.ack
        return self._transport_acks

    def score_self(self, alert: Alert) -> None:
        """A self-alert, from any thread: scored and sent each time."""
        sent = self.score(self.hostname, [], [alert], time.time(), fold=False)
        with self._self_lock:
            self.self_alerts += 1
            self.self_items_lost += not sent

    # ------------------------------------------------------------------------------------------ reading
    def analyzers(self) -> list[list[Slot]]:
        return [w.slots for w in self.workers]

    def counters(self) -> dict[str, int]:
        ws = self.workers
        return {"analyzed": sum(w.analyzed for w in ws), "analyzed_batches": sum(w.analyzed_batches for w in ws),
                "alerts": sum(w.alerts for w in ws) + self.self_alerts, "dead_letters": sum(w.dead_letters for w in ws),
                "sink_items_lost": sum(w.sink_items_lost for w in ws) + self.self_items_lost}

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per analyzer, summed over the analysis threads."""
        analyzers: dict[str, dict[str, Any]] = {}
        for w in self.workers:
            for s in w.slots:
                a = analyzers.setdefault(s.name, {"processed": 0, "skipped": 0, "dead_letters": 0, "restarts": 0,
                                                  "quarantined": False})
                a["processed"] += s.processed
                a["skipped"] += s.skipped
                a["dead_letters"] += s.dead_letters
                a["restarts"] += s.restarts
                a["quarantined"] = a["quarantined"] or s.quarantined
        return analyzers

    def latency(self) -> tuple[tuple[int, ...], float, list[float]]:
        """(histogram counts, sum, the recent latencies) over every analysis thread."""
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        recent: list[float] = []
        for w in self.workers:
            for i, n in enumerate(list(w.latency_buckets)):
                counts[i] += n
            total += w.latency_sum
            recent.extend(list(w.latencies))
        return tuple(counts), total, recent
