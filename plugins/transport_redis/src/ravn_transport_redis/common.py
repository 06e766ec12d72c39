"""What the publisher and the consumers of one Redis transport share: the key names, the link to Redis (client,
stop event, last error) and the token an ``ack`` needs."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from ravn_transport_redis.config import RedisTransportConfig

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def name_part(text: str) -> str:
    """A host/source name as it may appear in a client name or key (no spaces, braces or colons)."""
    return _SAFE.sub("_", text) or "_"


class Keys:
    """Every key the transport uses. Stream keys carry the host as a cluster hash tag (one slot per host)."""

    def __init__(self, cfg: RedisTransportConfig) -> None:
        p = cfg.prefix
        self.cfg = cfg
        self.registry = f"{p}streams"
        self.deadletter = f"{p}deadletter"
        self.list = f"{p}events:raw"
        self.workers = f"{p}workers"

    def stream(self, host: str, source: str = "") -> str:
        per = self.cfg.stream_per
        if per == "fleet":
            return f"{self.cfg.prefix}events"
        key = f"{self.cfg.prefix}events:{{{name_part(host)}}}"
        return f"{key}:{name_part(source or 'unknown')}" if per == "source" else key

    def processing(self, consumer: str) -> str:
        return f"{self.cfg.prefix}processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.cfg.prefix}worker:{consumer}"


@dataclass
class Token:
    """What ``ack`` needs: where the batch came from. ``published_ns`` is the agent's clock at publish."""

    key: str
    entry: Any  # stream entry id (bytes), or the raw list element (bytes)
    batch_id: str
    published_ns: int


def is_error(exc: BaseException, code: str) -> bool:
    """Whether a Redis error reply starts with ``code`` (``BUSYGROUP``, ``NOGROUP``)."""
    return str(exc).startswith(code)


class Link:
    """One transport's connection to Redis, shared by its publisher and its consumer.

    :ivar name: the transport's instance name (thread names, spool file name).
    :ivar cfg: the validated config.
    :ivar keys: key names under ``cfg.prefix``.
    :ivar client: the redis-py client (thread-safe pool; cluster client built lazily).
    :ivar where: where we connect, for logs (never the password).
    :ivar consumer: this worker's consumer name in the group (list mode: its processing list's suffix).
    :ivar stop: set by ``close()`` (and by tests that simulate a crash): threads and reads end.
    :ivar last_error: the last connection or command error, for ``health()``.
    """

    def __init__(self, name: str, cfg: RedisTransportConfig, client: Any, where: str, consumer: str,
                 log: logging.Logger) -> None:
        self.name = name
        self.cfg = cfg
        self.keys = Keys(cfg)
        self.client = client
        self.where = where
        self.consumer = consumer
        self.log = log
        self.stop = threading.Event()
        self.last_error = ""
