"""The egress stage: the transport thread takes batches off the ingress queue and publishes them.

A publish that raises is retried after the transport's backoff until it succeeds, the transport is quarantined, or
shutdown gives up on draining; only then are its events counted ``publish_lost``. Nothing is dropped silently.
"""

from __future__ import annotations

import time

from ravn_core.batchqueue import BatchQueue
from ravn_core.components import Transport
from ravn_core.events import Batch
from ravn_core.runtime.phases import Phases
from ravn_core.runtime.supervisor import Slot, Supervisor


class EgressStage:
    """The transport thread. Its counters have one writer, that thread."""

    def __init__(self, supervisor: Supervisor, phases: Phases, ingress: BatchQueue[Batch], hostname: str) -> None:
        self.supervisor = supervisor
        self.phases = phases
        self.ingress = ingress
        self.hostname = hostname
        self.transport: Slot | None = None
        self.published = 0
        self.publish_lost = 0

    def loop(self) -> None:
        assert self.transport is not None
        slot = self.transport
        transport: Transport = slot.component
        sup = self.supervisor
        while True:
            slot.heartbeat = time.time()
            batch = self.ingress.get(timeout=0.05)
            if batch is None:
                if self.phases.sources_done.is_set():
                    break
                continue
            while True:
                try:
                    transport.publish(self.hostname, batch)
                    self.published += len(batch)
                    break
                except Exception as exc:
                    sup.fail(slot, exc)
                    # retried until shutdown gives up on draining (the final phase)
                    if slot.quarantined or not sup.wait_retry(slot, self.phases.final):
                        self.publish_lost += len(batch)
                        break
                    slot.retry_at = 0.0
