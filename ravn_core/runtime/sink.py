"""The sink stage: the sink thread emits alerts and threat updates to every sink, then acks the delivery.

A delivery is acked only after every sink took (or was counted as missing) its alerts, so a batch taken from Redis
is acknowledged only once its alerts are out. A sink that raises is retried after its backoff; the alerts it misses
meanwhile, or while quarantined, are counted ``dropped`` for that sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ravn_core.components import Alert, Delivery, ThreatUpdate, Transport
from ravn_core.config import CoreConfig
from ravn_core.runtime.phases import Phases
from ravn_core.runtime.supervisor import Slot, Supervisor

log = logging.getLogger("ravn.runtime")


@dataclass
class SinkItem:
    """What the analysis stage hands the sinks: the alerts and level changes of one batch (or tick), and the
    deliveries to ack (their events dropped: only the ack tokens are kept while the item waits)."""

    acks: list[Delivery]
    alerts: list[Alert]
    updates: list[ThreatUpdate]
    incidents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # host -> open incidents, if changed


class SinkStage:
    """Sink slots, the sink queue and the sink thread. Its counters have one writer, the sink thread."""

    def __init__(self, core: CoreConfig, supervisor: Supervisor, phases: Phases) -> None:
        self.supervisor = supervisor
        self.phases = phases
        self.slots: list[Slot] = []
        self.transport: Slot | None = None
        self.queue: queue.Queue[SinkItem] = queue.Queue(maxsize=core.queue_batches)
        self._ident = 0  # the sink thread: what it hands itself (a sink's own self-alert) it keeps, not queues
        self._local: deque[SinkItem] = deque()
        self.alerts_emitted = 0
        self.threat_updates = 0
        self.acked = 0
        self.alert_counts: dict[tuple[str, str], int] = {}  # (level, rule) -> alerts, for /metrics
        self.recent_alerts: deque[Alert] = deque(maxlen=50)

    def put(self, item: SinkItem) -> bool:
        """Hand an item to the sink thread, waiting while the queue is full; False if the final phase came first
        (the item is lost)."""
        if threading.get_ident() == self._ident:
            self._local.append(item)  # on the sink thread itself: waiting for its own queue would never end
            return True
        while True:
            try:
                self.queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                if self.phases.final.is_set():
                    return False

    def loop(self) -> None:
        assert self.transport is not None
        tslot = self.transport
        transport: Transport = tslot.component
        sup = self.supervisor
        last_flush = time.monotonic()
        self._ident = threading.get_ident()
        while True:
            while self._local:
                self.emit(self._local.popleft())
            try:
                item = self.queue.get(timeout=0.05)
            except queue.Empty:
                if self.phases.analysis_done.is_set():
                    break
                if time.monotonic() - last_flush > 1.0:
                    last_flush = time.monotonic()
                    self.flush()
                for slot in self.slots:
                    slot.heartbeat = time.time()
                continue
            self.emit(item)
            for delivery in item.acks:
                try:
                    transport.ack(delivery)
                    self.acked += 1
                except Exception as exc:
                    sup.fail(tslot, exc)
        while self._local:
            self.emit(self._local.popleft())
        self.flush()

    def flush(self) -> None:
        for slot in self.slots:
            if not slot.quarantined:
                self.supervisor.safe(slot, slot.component.flush)

    def emit(self, item: SinkItem) -> None:
        if item.alerts:
            self.recent_alerts.extend(item.alerts)
            self.alerts_emitted += len(item.alerts)
            counts = self.alert_counts
            for a in item.alerts:
                key = (a.level, a.rule)
                counts[key] = counts.get(key, 0) + 1
        self.threat_updates += len(item.updates)
        for update in item.updates:
            log.warning("threat level %s -> %s (score %.1f) on %s", update.previous_level, update.level,
                        update.score, update.host)
        for slot in self.slots:
            slot.heartbeat = time.time()
            if slot.quarantined:
                slot.dropped += len(item.alerts)
                continue
            if slot.retry_at:
                if time.monotonic() < slot.retry_at:
                    slot.dropped += len(item.alerts)
                    continue
                slot.retry_at = 0.0
            try:
                if item.alerts:
                    slot.component.emit_alerts(item.alerts)
                for update in item.updates:
                    slot.component.emit_threat(update)
                for host, incidents in item.incidents.items():
                    slot.component.emit_incidents(host, incidents)
                slot.processed += len(item.alerts)
            except Exception as exc:
                slot.dropped += len(item.alerts)
                self.supervisor.fail(slot, exc)

    def stats(self) -> dict[str, dict[str, int]]:
        return {s.name: {"alerts": s.processed, "dropped": s.dropped, "restarts": s.restarts} for s in self.slots}
