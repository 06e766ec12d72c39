"""The source stage: one thread per source polls it and puts its batches on the bounded ingress queue.

Every event a source returns is counted ``accepted`` on its slot; it is then put on the ingress queue, or counted
``dropped`` when the queue stays full past a short wait (the pipeline is too slow). With the embedded transport
under role ``all`` (``direct``) there is no ingress queue and no transport thread: the source thread offers the
batch to the transport's own bounded queue with the same wait, and counts it ``published`` or ``dropped``.
A source whose poll raises is stopped and started again after its backoff; one whose health says ``failed``
(programs detached) is reattached when the health thread asks.
"""

from __future__ import annotations

import logging
import time

from ravn_core.batchqueue import BatchQueue
from ravn_core.builtin.transport_embedded import EmbeddedTransport
from ravn_core.components import Health, Source
from ravn_core.config import CoreConfig
from ravn_core.events import Batch
from ravn_core.runtime.phases import Phases
from ravn_core.runtime.supervisor import Slot, Supervisor

log = logging.getLogger("ravn.runtime")

POLL_MS = 50
PUT_WAIT_S = 0.25  # how long a batch waits for room on the ingress queue before it is dropped


class SourceStage:
    """Source slots, their threads, and the ingress queue they fill."""

    def __init__(self, core: CoreConfig, supervisor: Supervisor, phases: Phases) -> None:
        self.core = core
        self.supervisor = supervisor
        self.phases = phases
        self.slots: list[Slot] = []
        self.ingress: BatchQueue[Batch] = BatchQueue(core.queue_batches, core.queue_events)
        self.hostname = core.hostname()
        #: set by the runtime (role ``all``, embedded transport): the transport's slot, which the source threads
        #: offer their batches to instead of the ingress queue; no transport thread runs then
        self.direct: Slot | None = None

    def start(self) -> None:
        """Start every source on this thread, so an unusable environment fails startup; on error stop those
        already started and raise."""
        started: list[Slot] = []
        try:
            for slot in self.slots:
                slot.component.start()
                started.append(slot)
        except BaseException:
            for slot in started:
                self.supervisor.safe(slot, slot.component.stop)
            raise

    def spawn(self) -> None:
        for slot in self.slots:
            self.supervisor.spawn(f"source:{slot.name}", self.loop, slot)

    def loop(self, slot: Slot) -> None:
        src: Source = slot.component
        sup = self.supervisor
        stop = self.phases.sources_stop
        while not stop.is_set():
            slot.heartbeat = time.time()
            if slot.quarantined:
                stop.wait(0.2)
                continue
            if slot.restart_requested or slot.retry_at:
                slot.restart_requested = False
                if not sup.wait_retry(slot, stop):
                    break
                slot.retry_at = 0.0
                sup.safe(slot, src.stop)
                try:
                    src.start()
                    log.info("source %r restarted", slot.name)
                except Exception as exc:
                    sup.fail(slot, exc)
                    continue
            if slot.reload_requested:
                slot.reload_requested = False
                sup.safe(slot, src.reload)
            try:
                batch = src.poll(POLL_MS)
            except Exception as exc:
                sup.fail(slot, exc)
                continue
            if batch:
                self.accept(slot, batch)
        # shutdown: whatever the source still holds, then detach
        if not slot.quarantined:
            batch = sup.safe(slot, src.drain) or []
            if batch:
                self.accept(slot, batch)
        sup.safe(slot, src.stop)

    def accept(self, slot: Slot, batch: Batch) -> None:
        n = len(batch)
        slot.accepted += n
        slot.batches += 1
        wait = PUT_WAIT_S if not self.phases.stopping.is_set() else self.core.shutdown_timeout_s
        direct = self.direct
        if direct is not None:
            transport: EmbeddedTransport = direct.component
            direct.heartbeat = time.time()
            if transport.offer(self.hostname, batch, wait):
                slot.published += n
            else:
                slot.dropped += n
        elif not self.ingress.put(batch, n, timeout=wait):
            slot.dropped += n

    def check(self, out: dict[str, Health]) -> None:
        """Health round: note each source's health; ask a source that reports ``failed`` to reattach."""
        for slot in self.slots:
            h = slot.health()
            out[f"source:{slot.name}"] = h
            if (h.state == "failed" and not slot.quarantined and not slot.retry_at
                    and not self.phases.stopping.is_set()):
                log.error("source %r reports failed (%s); reattaching", slot.name, h.detail)
                slot.restart_requested = True

    def accepted(self) -> int:
        return sum(s.accepted for s in self.slots)

    def dropped(self) -> int:
        return sum(s.dropped for s in self.slots)

    def published(self) -> int:
        """Events the source threads handed to the transport themselves (``direct``)."""
        return sum(s.published for s in self.slots)

    def stats(self, healths: dict[int, Health] | None = None) -> dict[str, dict[str, int]]:
        """Per source. ``healths``: health already read (by ``id`` of the slot), used instead of asking again."""
        known = healths or {}
        return {s.name: {"accepted": s.accepted, "dropped": s.dropped, "batches": s.batches,
                         "kernel_drops": int(_counter(s, "drops", known.get(id(s))))} for s in self.slots}


def _counter(slot: Slot, name: str, health: Health | None = None) -> float:
    try:
        return float((health or slot.component.health()).counters.get(name, 0))
    except Exception:
        return 0.0
