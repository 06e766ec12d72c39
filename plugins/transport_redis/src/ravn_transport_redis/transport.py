"""The Redis transport: agents publish batches, analyzer workers consume them (docs: ../../README.md).

``RedisTransport`` is the component the runtime holds. It builds the link to Redis and hands the work to a
``Publisher`` (agent side, publisher.py: spool and sender thread), made on the first ``publish``, and to a
consumer (worker side, consumer.py: ``StreamConsumer`` or ``ListConsumer`` by ``mode``, over one
``ConsumerBase``), made on the first ``consume``. One process may do both (role ``all``).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading

from ravn_core.components import Delivery, Health, RuntimeContext, Transport
from ravn_core.events import Batch
from ravn_transport_redis.common import Link, Token, name_part
from ravn_transport_redis.config import RedisTransportConfig
from ravn_transport_redis.connection import describe, insecure, make_client
from ravn_transport_redis.consumer import COUNTERS as CONSUMER_COUNTERS
from ravn_transport_redis.consumer import ConsumerBase, ListConsumer, StreamConsumer
from ravn_transport_redis.publisher import COUNTERS as PUBLISHER_COUNTERS
from ravn_transport_redis.publisher import Publisher

COUNTERS = tuple(dict.fromkeys((*PUBLISHER_COUNTERS, *CONSUMER_COUNTERS)))


class RedisTransport(Transport):
    """Redis streams (default) or reliable lists between agents and analyzer workers."""

    def __init__(self, name: str, config: RedisTransportConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.cfg = config
        consumer = config.consumer or f"{name_part(socket.gethostname())}-{os.getpid()}-{secrets.token_hex(2)}"
        client_name = config.client_name or f"ravn-{name_part(context.host)}-{os.getpid()}"
        self.link = Link(name, config, make_client(config, client_name), describe(config), consumer, self.log)
        for warning in insecure(config):
            self.log.warning("%s", warning)
        self._made = threading.Lock()
        self._publisher: Publisher | None = None
        self._consumer: ConsumerBase | None = None

    @property
    def consumer_name(self) -> str:
        """This worker's consumer name (stream: in the group; list: its processing list is named after it)."""
        return self.link.consumer

    @property
    def publisher(self) -> Publisher:
        """The agent side, made on first use."""
        if self._publisher is None:
            with self._made:
                if self._publisher is None:
                    self._publisher = Publisher(self.link, self.context.host, self.context.state_dir)
        return self._publisher

    @property
    def consumer(self) -> ConsumerBase:
        """The worker side, made on first use."""
        if self._consumer is None:
            with self._made:
                if self._consumer is None:
                    kind = StreamConsumer if self.cfg.mode == "stream" else ListConsumer
                    self._consumer = kind(self.link)
        return self._consumer

    def publish(self, host: str, batch: Batch) -> None:
        """Encode and queue; the sender thread delivers. Never blocks on Redis."""
        self.publisher.publish(host, batch)

    def consume(self, timeout_s: float) -> Delivery | None:
        return self.consumer.consume(timeout_s)

    def ack(self, delivery: Delivery) -> None:
        """Queue the XACK (LREM in list mode); see ``ConsumerBase.ack``."""
        if isinstance(delivery.token, Token):
            self.consumer.ack(delivery.token)

    def flush(self, timeout_s: float) -> None:
        """Wait until the spool is sent (or ``timeout_s``); then send queued acks."""
        if self._publisher is not None:
            self._publisher.wait_sent(timeout_s)
        if self._consumer is not None:
            self._consumer.send_acks()

    def pending(self) -> int:
        """Batches in the spool, fetched and not handed out, and (once this instance consumes) not yet
        delivered to any worker (stream: the group's ``lag``; list: LLEN). Cached for 100 ms; never raises."""
        n = 0
        if self._publisher is not None:
            n += len(self._publisher.spool)
        if self._consumer is not None:
            n += self._consumer.local() + self._consumer.backlog()
        return n

    def health(self) -> Health:
        c: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        connected = True
        for part in (self._publisher, self._consumer):
            if part is not None:
                for k, v in part.counters.items():
                    c[k] += v
                connected = connected and part.connected
        spool = self._publisher.spool if self._publisher is not None else None
        c["spool_batches"] = len(spool) if spool is not None else 0
        c["spool_bytes"] = spool.bytes if spool is not None else 0
        c["spilled"] = spool.spilled if spool is not None else 0
        state = "ok" if connected else "degraded"
        detail = f"redis {self.link.where}" + ("" if connected else f" unreachable: {self.link.last_error}")
        return Health(state, detail, c)  # type: ignore[arg-type]

    def close(self) -> None:
        self.link.stop.set()
        if self._publisher is not None:
            self._publisher.close()
        if self._consumer is not None:
            self._consumer.close()
        try:
            self.link.client.close()
        except Exception:  # closing a broken client must not fail shutdown
            pass
