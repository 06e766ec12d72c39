"""The embedded in-process transport: the default, no Redis needed.

A bounded queue of batches between the sources and the analysis threads. Under ``ravn run`` (role ``all``) the
source threads ``offer`` their batches to it themselves (no transport thread, no second queue: one thread handoff
per batch fewer); a batch that finds no room within the sources' wait is counted dropped at the source, as on the
stage queue. ``publish`` (from a transport thread) blocks while the queue is full. Nothing either accepted is lost:
the runtime drains the queue at shutdown.
"""

from __future__ import annotations

import threading

from pydantic import Field

from ravn_core import hookimpl
from ravn_core.batchqueue import BatchQueue
from ravn_core.components import Delivery, Health, PluginConfig, RuntimeContext, Transport
from ravn_core.events import Batch
from ravn_core.registry import TransportRegistry


class EmbeddedConfig(PluginConfig):
    capacity_batches: int = Field(256, ge=1, le=1_000_000, description="batches held between transport and analysis")
    capacity_events: int = Field(262144, ge=1, description="events held between transport and analysis (bounds memory)")


class EmbeddedTransport(Transport):
    """In-process queue from the transport thread to the analysis threads."""

    def __init__(self, name: str, config: EmbeddedConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._queue: BatchQueue[Delivery] = BatchQueue(config.capacity_batches, config.capacity_events)
        self._lock = threading.Lock()
        self.published = 0
        self.consumed = 0

    def publish(self, host: str, batch: Batch) -> None:
        self._queue.put(Delivery(host, batch), len(batch))
        with self._lock:
            self.published += 1

    def offer(self, host: str, batch: Batch, timeout_s: float) -> bool:
        """``publish`` that waits at most ``timeout_s`` for room; False (nothing queued) when none came. Safe from
        several threads at once: each source thread calls it (see ``ravn_core.runtime.source``)."""
        if not self._queue.put(Delivery(host, batch), len(batch), timeout=timeout_s):
            return False
        with self._lock:
            self.published += 1
        return True

    def consume(self, timeout_s: float) -> Delivery | None:
        delivery = self._queue.get(timeout_s)
        if delivery is None:
            return None
        with self._lock:
            self.consumed += 1
        return delivery

    def pending(self) -> int:
        return self._queue.qsize()

    def health(self) -> Health:
        return Health(counters={"published_batches": self.published, "consumed_batches": self.consumed,
                                "pending_batches": self.pending()})


@hookimpl
def ravn_register_transports(registry: TransportRegistry) -> None:
    registry.add("embedded", EmbeddedTransport, EmbeddedConfig)
