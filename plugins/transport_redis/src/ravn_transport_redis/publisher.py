"""The agent side of the Redis transport: encode, spool, send.

``publish`` encodes the batch on the caller's thread and queues it in the spool; a sender thread pipelines the
spool to Redis (``pipeline_batches`` per round trip) and removes entries only once Redis replied. While Redis is
away the spool holds them (memory, then a file); after a reconnect the sender first asks Redis which of the
batches that were in flight when the connection broke it already has (XREVRANGE / LRANGE on the agent's own
key, matched by batch id), drops those and sends the rest in order.

Threads: ``publish`` from one thread; one sender thread.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import redis

from ravn_core.backoff import Backoff
from ravn_core.events import Batch
from ravn_transport_redis.codec import list_element, peek_batch_id, stream_fields
from ravn_transport_redis.common import Link, is_error, name_part
from ravn_transport_redis.connection import CONNECTION_ERRORS
from ravn_transport_redis.spool import Entry, Spool

COUNTERS = ("published", "published_events", "spooled", "dropped", "dropped_events", "confirmed_on_reconnect",
            "send_errors", "reconnects")


class Publisher:
    """Publishes one agent's batches: stream entries (XADD) or list elements (LPUSH)."""

    def __init__(self, link: Link, host: str, state_dir: str) -> None:
        cfg = link.cfg
        self.link = link
        self.log = link.log
        self.streams = cfg.mode == "stream"
        self.boot_id = f"{int(time.time()):x}{secrets.token_hex(3)}"
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.connected = True
        path = os.path.join(state_dir, f"redis-spool-{name_part(host)}-{name_part(link.name)}.bin")
        self.spool = Spool(int(cfg.spool_memory_mb * 2**20), int(cfg.spool_file_mb * 2**20), path)
        self.in_flight = 0
        self.resync = False  # the connection broke with batches in flight: check them before sending more
        self._seq = 0
        self._sender: threading.Thread | None = None
        self._backoff = Backoff(cfg.backoff_s, cfg.backoff_max_s, jitter=True)
        self._registered: set[str] = set()

    def publish(self, host: str, batch: Batch) -> None:
        """Encode and queue; the sender thread delivers. Never blocks on Redis."""
        if not batch:
            return
        if self._sender is None:
            self._start_sender()
        keys = self.link.keys
        if self.streams and self.link.cfg.stream_per == "source":
            parts: dict[str, Batch] = {}
            for e in batch:
                parts.setdefault(keys.stream(host, str(e.get("evt.source", ""))), []).append(e)
            items = list(parts.items())
        else:
            items = [(keys.stream(host) if self.streams else keys.list, batch)]
        now = time.time_ns()
        for key, part in items:
            self._seq += 1
            bid = f"{host}:{self.boot_id}:{self._seq}"
            if self.streams:
                payload: dict[bytes, bytes] | bytes = stream_fields(host, bid, part, now)
            else:
                payload = list_element(host, bid, part, now)
            if self.spool.put(Entry(key, bid, payload, len(part))):
                if not self.connected:
                    self.counters["spooled"] += 1
            else:
                self.counters["dropped"] += 1
                self.counters["dropped_events"] += len(part)
                if self.counters["dropped"] in (1, 10, 100) or self.counters["dropped"] % 1000 == 0:
                    self.log.error("redis spool full (%s MB memory + %s MB file): dropped %d batches so far",
                                   self.link.cfg.spool_memory_mb, self.link.cfg.spool_file_mb,
                                   self.counters["dropped"])

    def _start_sender(self) -> None:
        left = self.spool.recover()
        if left:
            self.log.warning("resending %d batches a previous run left in %s", left, self.spool.path)
        self._sender = threading.Thread(target=self._send_loop, name=f"ravn-{self.link.name}-sender", daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        spool, stop = self.spool, self.link.stop
        while True:
            with spool.not_empty:
                while spool.count_locked() == 0 and not stop.is_set():
                    spool.not_empty.wait(0.5)
                if stop.is_set() and (spool.count_locked() == 0 or not self.connected):
                    return
            if not self._backoff.ready():
                stop.wait(min(self._backoff.remaining(), 0.2))
                continue
            entries: list[Entry] = []
            try:
                if self.resync:
                    self._resync()
                entries = spool.peek(self.link.cfg.pipeline_batches)
                self.in_flight = len(entries)
                sent = self._send(entries)
                spool.pop(sent)
                self.counters["published"] += sent
                self.counters["published_events"] += sum(e.events for e in entries[:sent])
                self._backoff.succeeded()
                if not self.connected:
                    self.counters["reconnects"] += 1
                    self.log.info("redis %s reachable again; spool: %d batches", self.link.where, len(spool))
                self.connected = True
            except CONNECTION_ERRORS as exc:
                spool.mark_unconfirmed(len(entries))
                self.resync = True
                self._failed(exc)
            except redis.exceptions.RedisError as exc:  # refused command (OOM, NOPERM, ...): keep and retry
                self.counters["send_errors"] += 1
                spool.mark_unconfirmed(len(entries))
                self.resync = True
                self._failed(exc)
            finally:
                self.in_flight = 0

    def _failed(self, exc: BaseException) -> None:
        delay = self._backoff.failed()
        self.link.last_error = f"{type(exc).__name__}: {exc}"
        if self.connected or self._backoff.failures in (2, 10) or self._backoff.failures % 100 == 0:
            self.log.warning("redis %s: %s; spooling, next try in %.2fs (attempt %d)", self.link.where,
                             self.link.last_error, delay, self._backoff.failures)
        if self.connected:  # what waits in the spool now waits for a reconnect
            self.counters["spooled"] += len(self.spool)
        self.connected = False

    def _register(self, key: str) -> None:
        if key in self._registered:
            return
        if self.streams:
            client = self.link.client
            client.sadd(self.link.keys.registry, key)
            try:
                client.xgroup_create(key, self.link.cfg.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if not is_error(exc, "BUSYGROUP"):
                    raise
        self._registered.add(key)

    def _send(self, entries: list[Entry]) -> int:
        """One pipeline; returns how many leading entries Redis accepted (raises if none)."""
        for key in {e.key for e in entries}:
            self._register(key)
        pipe = self.link.client.pipeline(transaction=False)
        maxlen = self.link.cfg.maxlen
        for e in entries:
            if isinstance(e.payload, dict):
                pipe.xadd(e.key, e.payload, maxlen=maxlen, approximate=True)
            else:
                pipe.lpush(e.key, e.payload)
        results = pipe.execute(raise_on_error=False)
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                if i == 0:
                    raise r
                self.spool.pop(i)
                self.counters["published"] += i
                self.counters["published_events"] += sum(e.events for e in entries[:i])
                raise r
        return len(entries)

    def _resync(self) -> None:
        """After a reconnect: forget what the server may have lost, and skip batches it already has."""
        client = self.link.client
        client.ping()
        self._registered.clear()
        unconfirmed = self.spool.unconfirmed()
        if unconfirmed:
            by_key: dict[str, set[str]] = {}
            for e in unconfirmed:
                by_key.setdefault(e.key, set()).add(e.batch_id)
            # Only this agent writes its host stream and the sender is sequential: the in-flight batches are
            # the newest entries. A shared key (fleet stream, list mode) interleaves other agents' batches.
            own_key = self.streams and self.link.cfg.stream_per != "fleet"
            have: set[str] = set()
            for key, ids in by_key.items():
                window = len(ids) + 16 if own_key else len(ids) * 4 + 64
                if self.streams:
                    for _id, fields in client.xrevrange(key, count=window):
                        bid = (fields or {}).get(b"b", b"").decode(errors="replace")
                        if bid in ids:
                            have.add(bid)
                else:
                    for raw in client.lrange(key, 0, window - 1):
                        bid2 = peek_batch_id(raw)
                        if bid2 in ids:
                            have.add(bid2)
            removed = self.spool.drop_first(have)
            self.counters["confirmed_on_reconnect"] += removed
            if removed:
                self.log.info("after reconnect: %d of %d in-flight batches had reached Redis; resending %d",
                              removed, len(unconfirmed), len(unconfirmed) - removed)
        self.resync = False

    def wait_sent(self, timeout_s: float) -> None:
        """Wait until the spool is sent (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while (len(self.spool) or self.in_flight) and time.monotonic() < deadline and self._sender is not None:
            time.sleep(0.01)

    def close(self) -> None:
        """End the sender (``link.stop`` is set) and keep what Redis has not confirmed in the spool file."""
        if self._sender is not None:
            self._sender.join(5)
        left = len(self.spool)
        self.spool.close()
        if left:
            self.log.warning("%d batches not yet in Redis kept in %s; the next start sends them", left,
                             self.spool.path)
