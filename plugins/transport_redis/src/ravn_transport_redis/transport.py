"""The Redis transport: agents publish batches, analyzer workers consume them (docs: ../../README.md).

Agent side (``publish``): the batch is encoded on the caller's thread and queued in the spool; a sender thread
pipelines the spool to Redis (``pipeline_batches`` per round trip) and removes entries only once Redis replied.
While Redis is away the spool holds them (memory, then a file); after a reconnect the sender first asks Redis
which of the batches that were in flight when the connection broke it already has (XREVRANGE / LRANGE on the
agent's own key, matched by batch id), drops those and sends the rest in order.

Worker side (``consume``/``ack``): stream mode reads the per-host streams (found in the registry set the
agents SADD to) through a consumer group, XACKs after ``ack()`` (batched: see ``ack``), XAUTOCLAIMs entries
a dead consumer left pending for ``claim_idle_ms``, and dead-letters entries that do not decode or were delivered
``max_deliveries`` times. List mode BLMOVEs elements into a per-worker processing list, LREMs them after
``ack()``, keeps a heartbeat key alive, and requeues the processing lists of workers whose heartbeat expired.
Both drop batches whose id this worker has seen recently (``dedup_window``).

Threads: ``publish`` from one thread; ``consume``/``ack`` from any number of analysis threads (the redis-py
pool is thread-safe; local state is under one lock); one sender thread; in list mode one heartbeat thread.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import redis

from ravn_core.components import Delivery, Health, RuntimeContext, Transport
from ravn_core.errors import DecodeError
from ravn_core.events import Batch
from ravn_transport_redis.codec import Decoded, decode_list, decode_stream, list_element, peek_batch_id, stream_fields
from ravn_transport_redis.config import RedisTransportConfig
from ravn_transport_redis.connection import CONNECTION_ERRORS, Backoff, describe, make_client
from ravn_transport_redis.spool import Entry, Spool

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)
# KEYS[1] stream; ARGV group, idle threshold (ms), our own name. XINFO CONSUMERS replies (RESP2) are flat
# arrays: name, <name>, pending, <n>, idle, <ms>, ...
_FORGET_LUA = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
"""
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _name_part(text: str) -> str:
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
        key = f"{self.cfg.prefix}events:{{{_name_part(host)}}}"
        return f"{key}:{_name_part(source or 'unknown')}" if per == "source" else key

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


def _is(exc: BaseException, code: str) -> bool:
    return str(exc).startswith(code)


class RedisTransport(Transport):
    """Redis streams (default) or reliable lists between agents and analyzer workers."""

    def __init__(self, name: str, config: RedisTransportConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.cfg = config
        self.keys = Keys(config)
        self.boot_id = f"{int(time.time()):x}{secrets.token_hex(3)}"
        self.consumer = config.consumer or f"{_name_part(socket.gethostname())}-{os.getpid()}-{secrets.token_hex(2)}"
        client_name = config.client_name or f"ravn-{_name_part(context.host)}-{os.getpid()}"
        self.client = make_client(config, client_name)
        self.where = describe(config)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counters: dict[str, float] = dict.fromkeys(
            ("published", "published_events", "consumed", "consumed_events", "acked", "spooled", "dropped",
             "dropped_events", "dead_lettered", "reconnects", "reclaimed", "duplicates", "confirmed_on_reconnect",
             "trimmed_unread", "send_errors", "lost_to_reclaim", "recovered"), 0)
        self._last_error = ""
        # agent side
        self._seq = 0
        spool_path = os.path.join(context.state_dir, f"redis-spool-{_name_part(context.host)}-{_name_part(name)}.bin")
        self._spool = Spool(int(config.spool_memory_mb * 2**20), int(config.spool_file_mb * 2**20), spool_path)
        self._sender: threading.Thread | None = None
        self._send_backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._send_connected = True
        self._send_resync = False
        self._registered: set[str] = set()
        self._in_flight = 0
        # worker side
        self._recv_backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._recv_connected = True
        self._worker_ready = False
        self._setup_lock = threading.Lock()
        self._ready: deque[tuple[str, Any, Any, float]] = deque()  # (key, id or raw, fields or None, fetched at)
        self._streams: list[str] = []
        self._groups: set[str] = set()
        self._next_discover = 0.0
        self._next_claim = 0.0
        self._claim_lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: set[tuple[str, Any]] = set()
        self._acks: list[Token] = []  # acked by the runtime, XACK not yet sent
        self._heartbeat: threading.Thread | None = None
        self._backlog = 0
        self._backlog_at = 0.0
        self._forget_script: Any = None  # registered on first use (the cluster client connects lazily)

    # ============================================================================================ agent side
    def publish(self, host: str, batch: Batch) -> None:
        """Encode and queue; the sender thread delivers. Never blocks on Redis."""
        if not batch:
            return
        if self._sender is None:
            self._start_sender()
        if self.cfg.stream_per == "source" and self.cfg.mode == "stream":
            parts: dict[str, Batch] = {}
            for e in batch:
                parts.setdefault(self.keys.stream(host, str(e.get("evt.source", ""))), []).append(e)
            items = list(parts.items())
        else:
            items = [(self.keys.stream(host) if self.cfg.mode == "stream" else self.keys.list, batch)]
        now = time.time_ns()
        for key, part in items:
            self._seq += 1
            bid = f"{host}:{self.boot_id}:{self._seq}"
            if self.cfg.mode == "stream":
                payload: dict[bytes, bytes] | bytes = stream_fields(host, bid, part, now)
            else:
                payload = list_element(host, bid, part, now)
            if self._spool.put(Entry(key, bid, payload, len(part))):
                if not self._send_connected:
                    self.counters["spooled"] += 1
            else:
                self.counters["dropped"] += 1
                self.counters["dropped_events"] += len(part)
                if self.counters["dropped"] in (1, 10, 100) or self.counters["dropped"] % 1000 == 0:
                    self.log.error("redis spool full (%s MB memory + %s MB file): dropped %d batches so far",
                                   self.cfg.spool_memory_mb, self.cfg.spool_file_mb, self.counters["dropped"])

    def _start_sender(self) -> None:
        left = self._spool.recover()
        if left:
            self.log.warning("resending %d batches a previous run left in %s", left, self._spool.path)
        self._sender = threading.Thread(target=self._send_loop, name=f"ravn-{self.name}-sender", daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        spool = self._spool
        while True:
            with spool.not_empty:
                while spool.count_locked() == 0 and not self._stop.is_set():
                    spool.not_empty.wait(0.5)
                if self._stop.is_set() and (spool.count_locked() == 0 or not self._send_connected):
                    return
            if not self._send_backoff.ready():
                self._stop.wait(min(self._send_backoff.remaining(), 0.2))
                continue
            entries: list[Entry] = []
            try:
                if self._send_resync:
                    self._resync()
                entries = spool.peek(self.cfg.pipeline_batches)
                self._in_flight = len(entries)
                sent = self._send(entries)
                spool.pop(sent)
                self.counters["published"] += sent
                self.counters["published_events"] += sum(e.events for e in entries[:sent])
                self._send_backoff.succeeded()
                if not self._send_connected:
                    self.counters["reconnects"] += 1
                    self.log.info("redis %s reachable again; spool: %d batches", self.where, len(spool))
                self._send_connected = True
            except CONNECTION_ERRORS as exc:
                spool.mark_unconfirmed(len(entries))
                self._send_resync = True
                self._send_failed(exc)
            except redis.exceptions.RedisError as exc:  # refused command (OOM, NOPERM, ...): keep and retry
                self.counters["send_errors"] += 1
                spool.mark_unconfirmed(len(entries))
                self._send_resync = True
                self._send_failed(exc)
            finally:
                self._in_flight = 0

    def _send_failed(self, exc: BaseException) -> None:
        delay = self._send_backoff.failed()
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._send_connected or self._send_backoff.failures in (2, 10) or self._send_backoff.failures % 100 == 0:
            self.log.warning("redis %s: %s; spooling, next try in %.2fs (attempt %d)", self.where,
                             self._last_error, delay, self._send_backoff.failures)
        if self._send_connected:  # what waits in the spool now waits for a reconnect
            self.counters["spooled"] += len(self._spool)
        self._send_connected = False

    def _register(self, key: str) -> None:
        if key in self._registered:
            return
        if self.cfg.mode == "stream":
            self.client.sadd(self.keys.registry, key)
            self._create_group(key)
        self._registered.add(key)

    def _create_group(self, key: str) -> None:
        try:
            self.client.xgroup_create(key, self.cfg.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if not _is(exc, "BUSYGROUP"):
                raise

    def _send(self, entries: list[Entry]) -> int:
        """One pipeline; returns how many leading entries Redis accepted (raises if none)."""
        for key in {e.key for e in entries}:
            self._register(key)
        pipe = self.client.pipeline(transaction=False)
        for e in entries:
            if isinstance(e.payload, dict):
                pipe.xadd(e.key, e.payload, maxlen=self.cfg.maxlen, approximate=True)
            else:
                pipe.lpush(e.key, e.payload)
        results = pipe.execute(raise_on_error=False)
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                if i == 0:
                    raise r
                self._spool.pop(i)
                self.counters["published"] += i
                self.counters["published_events"] += sum(e.events for e in entries[:i])
                raise r
        return len(entries)

    def _resync(self) -> None:
        """After a reconnect: forget what the server may have lost, and skip batches it already has."""
        self.client.ping()
        self._registered.clear()
        unconfirmed = self._spool.unconfirmed()
        if unconfirmed:
            by_key: dict[str, set[str]] = {}
            for e in unconfirmed:
                by_key.setdefault(e.key, set()).add(e.batch_id)
            have: set[str] = set()
            for key, ids in by_key.items():
                # Only this agent writes its host stream and the sender is sequential: the in-flight batches are
                # the newest entries. A shared key (fleet stream, list mode) interleaves other agents' batches.
                own_key = self.cfg.mode == "stream" and self.cfg.stream_per != "fleet"
                window = len(ids) + 16 if own_key else len(ids) * 4 + 64
                if self.cfg.mode == "stream":
                    for _id, fields in self.client.xrevrange(key, count=window):
                        bid = (fields or {}).get(b"b", b"").decode(errors="replace")
                        if bid in ids:
                            have.add(bid)
                else:
                    for raw in self.client.lrange(key, 0, window - 1):
                        bid2 = peek_batch_id(raw)
                        if bid2 in ids:
                            have.add(bid2)
            removed = self._spool.drop_first(have)
            self.counters["confirmed_on_reconnect"] += removed
            if removed:
                self.log.info("after reconnect: %d of %d in-flight batches had reached Redis; resending %d",
                              removed, len(unconfirmed), len(unconfirmed) - removed)
        self._send_resync = False

    def flush(self, timeout_s: float) -> None:
        """Wait until the spool is sent (or ``timeout_s``); then send queued acks."""
        deadline = time.monotonic() + timeout_s
        while (len(self._spool) or self._in_flight) and time.monotonic() < deadline and self._sender is not None:
            time.sleep(0.01)
        try:
            self._send_acks()
        except CONNECTION_ERRORS:
            pass

    # ============================================================================================ worker side
    def consume(self, timeout_s: float) -> Delivery | None:
        deadline = time.monotonic() + timeout_s
        while True:
            delivery = self._next_ready()
            if delivery is not None:
                return delivery
            now = time.monotonic()
            if now >= deadline or self._stop.is_set():
                return None
            if not self._recv_backoff.ready():
                self._stop.wait(min(self._recv_backoff.remaining(), deadline - now))
                continue
            try:
                self._worker_setup()
                if self._acks:
                    self._send_acks()
                if now >= self._next_discover:
                    self._discover()
                if now >= self._next_claim:
                    self._claim()
                block_ms = max(1, min(self.cfg.block_ms, int((deadline - now) * 1000)))
                if self.cfg.mode == "stream":
                    self._read_streams(block_ms)
                else:
                    self._read_list(block_ms)
                self._recv_ok()
            except CONNECTION_ERRORS as exc:
                self._recv_failed(exc)
            except redis.exceptions.ResponseError as exc:
                if _is(exc, "NOGROUP"):  # the server lost the group (restart without persistence)
                    self.log.warning("consumer group %r is gone (%s); recreating it", self.cfg.group, exc)
                    with self._lock:
                        self._groups.clear()
                    self._next_discover = 0.0
                    self._recv_backoff.failed()
                else:
                    self._recv_failed(exc)

    def _recv_ok(self) -> None:
        self._recv_backoff.succeeded()
        if not self._recv_connected:
            self.counters["reconnects"] += 1
            self.log.info("redis %s reachable again (worker %s)", self.where, self.consumer)
            self._recv_connected = True
            if self._worker_ready:
                self._recover_own()

    def _recv_failed(self, exc: BaseException) -> None:
        delay = self._recv_backoff.failed()
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._recv_connected or self._recv_backoff.failures % 100 == 0:
            self.log.warning("redis %s: %s; next try in %.2fs", self.where, self._last_error, delay)
        self._recv_connected = False

    def _worker_setup(self) -> None:
        if self._worker_ready:
            return
        with self._setup_lock:
            if self._worker_ready:
                return
            if self.cfg.mode == "list":
                self._beat()
                self.client.sadd(self.keys.workers, self.consumer)
                self._recover_own()
                self._heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"ravn-{self.name}-heartbeat",
                                                   daemon=True)
                self._heartbeat.start()
            else:
                self._discover()
                self._recover_own()
            self._worker_ready = True

    def _recover_own(self) -> None:
        """Queue what Redis holds as ours: entries pending on this consumer (stream) or this worker's processing
        list (list). At startup that is a previous run's work (a stable ``consumer`` name); after a reconnect it
        is what a reply lost with the connection had delivered to us (Redis with AOF restarts with it pending on
        us, and nobody would reclaim it before ``claim_idle_ms``). What we already hold is skipped by
        ``_first_sight`` (in flight) or dropped as a duplicate (already acked)."""
        now = time.monotonic()
        if self.cfg.mode == "list":
            proc = self.keys.processing(self.consumer)
            own = self.client.lrange(proc, 0, -1)
            with self._lock:
                queued = {e for _k, e, _f, _t in self._ready}
                todo = [raw for raw in reversed(own) if raw not in queued and (proc, raw) not in self._inflight]
                self._ready.extendleft(reversed([(proc, raw, None, now) for raw in todo]))
        else:
            todo = []
            for key in list(self._streams):
                for _k, entries in self.client.xreadgroup(self.cfg.group, self.consumer, {key: "0"},
                                                          count=10_000) or []:
                    todo += [(key, eid, f, now) for eid, f in entries]
            with self._lock:
                queued = {(k, e) for k, e, _f, _t in self._ready}
                todo = [t for t in todo if (t[0], t[1]) not in queued and (t[0], t[1]) not in self._inflight]
                self._ready.extendleft(reversed(todo))
        if todo:
            self.log.info("recovered %d batches that Redis holds as this worker's (%s)", len(todo), self.consumer)
            self.counters["recovered"] += len(todo)

    def _discover(self) -> None:
        """Read the stream registry; create the group on streams we have not seen."""
        if self.cfg.mode != "stream":
            self._next_discover = time.monotonic() + 3600
            return
        members = sorted(k.decode() for k in self.client.smembers(self.keys.registry))
        with self._lock:
            streams = sorted(set(self._streams) | set(members))
            new = [k for k in streams if k not in self._groups]
        for key in new:
            self._create_group(key)
        with self._lock:
            self._groups.update(new)
            self._streams = streams
        self._next_discover = time.monotonic() + self.cfg.discover_interval_s

    def _read_streams(self, block_ms: int) -> None:
        streams = self._streams
        if not streams:  # no agent has registered a stream yet
            self._stop.wait(min(block_ms / 1000, max(0.0, self._next_discover - time.monotonic())))
            return
        # COUNT applies per stream: split read_count over the streams so one read never prefetches more than
        # max(read_count, streams) batches (prefetched entries age towards claim_idle_ms in our queue).
        count = max(1, -(-self.cfg.read_count // len(streams)))
        if not self.cfg.cluster:
            reply = self.client.xreadgroup(self.cfg.group, self.consumer, dict.fromkeys(streams, ">"),
                                           count=count, block=block_ms)
        else:
            # Cluster: one XREADGROUP may not span slots. One non-blocking read per stream, pipelined per node.
            pipe = self.client.pipeline()
            for key in streams:
                pipe.xreadgroup(self.cfg.group, self.consumer, {key: ">"}, count=count)
            reply = [r for rs in pipe.execute() for r in (rs or [])]
            if not reply:
                self._stop.wait(min(block_ms, 50) / 1000)
        got = 0
        now = time.monotonic()
        for key, entries in reply or []:
            k = key.decode() if isinstance(key, bytes) else key
            with self._lock:
                self._ready.extend((k, eid, f, now) for eid, f in entries)
            got += len(entries)

    def _next_ready(self) -> Delivery | None:
        while True:
            with self._lock:
                if not self._ready:
                    return None
                key, entry, fields, fetched = self._ready.popleft()
            try:
                if self.cfg.mode == "stream" and time.monotonic() - fetched > self.cfg.claim_idle_ms / 2000:
                    if not self._still_mine(key, entry):
                        continue  # waited here so long that another worker reclaimed it: it is theirs now
                if self.cfg.mode == "stream":
                    if not fields:  # trimmed (MAXLEN) while pending: the data is gone
                        self.counters["trimmed_unread"] += 1
                        self.client.xack(key, self.cfg.group, entry)
                        continue
                    decoded = decode_stream(fields)
                else:
                    decoded = decode_list(entry)
            except DecodeError as exc:
                reason = str(exc)
            except CONNECTION_ERRORS as exc:
                with self._lock:
                    self._ready.appendleft((key, entry, fields, fetched))
                self._recv_failed(exc)
                return None
            else:
                reason = ""
            if reason:
                try:
                    self._dead_letter(key, entry, fields, reason)
                except CONNECTION_ERRORS as exc:  # still pending on us: dead-lettered on a later try
                    with self._lock:
                        self._ready.appendleft((key, entry, fields, fetched))
                    self._recv_failed(exc)
                    return None
                continue
            if not self._first_sight(key, entry, decoded):
                continue
            self.counters["consumed"] += 1
            self.counters["consumed_events"] += len(decoded.events)
            return Delivery(decoded.host, decoded.events, Token(key, entry, decoded.batch_id, decoded.ts_ns))

    def _still_mine(self, key: str, entry: Any) -> bool:
        """For an entry that waited long in the local queue: is it still pending on us? Then touch it
        (XCLAIM JUSTID resets its idle time) so nobody reclaims it while we work on it."""
        p = self.client.xpending_range(key, self.cfg.group, min=entry, max=entry, count=1,
                                       consumername=self.consumer)
        if not p:
            self.counters["lost_to_reclaim"] += 1
            return False
        self.client.xclaim(key, self.cfg.group, self.consumer, 0, [entry], justid=True)
        return True

    def _first_sight(self, key: str, entry: Any, d: Decoded) -> bool:
        """Dedup: False for a batch id seen recently (its entry is acked unless it is our own in flight)."""
        with self._lock:
            if (key, entry) in self._inflight:
                return False  # our own entry, redelivered to us while we still work on it
            if d.batch_id in self._seen:
                self._seen.move_to_end(d.batch_id)
                dup = True
            else:
                dup = False
                if self.cfg.dedup_window:
                    self._seen[d.batch_id] = None
                    if len(self._seen) > self.cfg.dedup_window:
                        self._seen.popitem(last=False)
                self._inflight.add((key, entry))
        if dup:
            self.counters["duplicates"] += 1
            try:
                self._ack_raw(key, entry)
            except CONNECTION_ERRORS:
                pass
            return False
        return True

    def ack(self, delivery: Delivery) -> None:
        """Queue the XACK (LREM in list mode). Queued acks go out in one pipeline, grouped per stream
        (``XACK key group id id ...``), before this instance's next read from Redis, when ``read_count`` of
        them are queued, and at ``flush``/``close``: one round trip per read instead of one per batch. A
        worker that dies with acks queued has those batches redelivered (at-least-once, as ever)."""
        token = delivery.token
        if not isinstance(token, Token):
            return
        with self._lock:
            self._inflight.discard((token.key, token.entry))
            self._acks.append(token)
            full = len(self._acks) >= self.cfg.read_count
        if full:
            try:
                self._send_acks()
            except CONNECTION_ERRORS as exc:
                self._recv_failed(exc)

    def _ack_raw(self, key: str, entry: Any) -> None:
        if self.cfg.mode == "stream":
            self.client.xack(key, self.cfg.group, entry)
        else:
            self.client.lrem(key, 1, entry)

    def _send_acks(self) -> None:
        """Send the queued acks; on a connection error they stay queued for the next try."""
        with self._lock:
            todo, self._acks = self._acks, []
        if not todo:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            if self.cfg.mode == "stream":
                by_key: dict[str, list[Any]] = {}
                for t in todo:
                    by_key.setdefault(t.key, []).append(t.entry)
                for key, ids in by_key.items():
                    pipe.xack(key, self.cfg.group, *ids)
            else:
                for t in todo:
                    pipe.lrem(t.key, 1, t.entry)
            pipe.execute()
        except CONNECTION_ERRORS:
            with self._lock:
                self._acks[:0] = todo
            raise
        self.counters["acked"] += len(todo)

    def _dead_letter(self, key: str, entry: Any, fields: dict[bytes, bytes] | None, reason: str) -> None:
        """Park an entry that cannot be processed in the dead-letter stream, with the reason; ack it."""
        self.log.warning("dead-lettering %s %s: %s", key, entry if self.cfg.mode == "stream" else "(list)", reason)
        record: dict[Any, Any] = {"reason": reason, "source": key, "consumer": self.consumer,
                                  "ts": str(time.time())}
        if self.cfg.mode == "stream":
            record["id"] = entry
            record.update({b"orig." + k: v for k, v in (fields or {}).items()})
        else:
            record["element"] = entry
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.keys.deadletter, record, maxlen=self.cfg.deadletter_maxlen, approximate=True)
        if self.cfg.mode == "stream":
            pipe.xack(key, self.cfg.group, entry)
        else:
            pipe.lrem(key, 1, entry)
        pipe.execute()
        self.counters["dead_lettered"] += 1

    # -------------------------------------------------------------------------------- dead consumers
    def _claim(self) -> None:
        """Take over what dead consumers left (one analysis thread at a time)."""
        if not self._claim_lock.acquire(blocking=False):
            return
        try:
            self._next_claim = time.monotonic() + self.cfg.claim_every_s
            if self.cfg.mode == "stream":
                for key in list(self._streams):
                    self._claim_stream(key)
            else:
                self._requeue_dead_workers()
        finally:
            self._claim_lock.release()

    def _claim_stream(self, key: str) -> None:
        group, start = self.cfg.group, "0-0"
        for _ in range(10):  # bounded work per round; the rest next round
            reply = self.client.xautoclaim(key, group, self.consumer, self.cfg.claim_idle_ms, start, count=100)
            start, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self.counters["trimmed_unread"] += len(deleted)
                self.log.error("%d pending entries of %s were trimmed (MAXLEN) before any worker acked them; "
                               "raise maxlen or add workers", len(deleted), key)
            if claimed:
                # delivery counts, to stop a poison batch from killing worker after worker
                pipe = self.client.pipeline(transaction=False)
                for eid, _f in claimed:
                    pipe.xpending_range(key, group, min=eid, max=eid, count=1)
                counts = [p[0]["times_delivered"] if p else 0 for p in pipe.execute()]
                for (eid, fields), times in zip(claimed, counts, strict=True):
                    if times > self.cfg.max_deliveries:
                        reason = f"delivered {times} times without an ack (max_deliveries {self.cfg.max_deliveries})"
                        self._dead_letter(key, eid, fields, reason + ": poison batch?")
                        continue
                    self.counters["reclaimed"] += 1
                    with self._lock:
                        self._ready.append((key, eid, fields, time.monotonic()))
                self.log.info("reclaimed %d entries of %s left pending by dead consumers", len(claimed), key)
            if start in (b"0-0", "0-0"):
                break
        self._forget_dead_consumers(key)

    def _forget_dead_consumers(self, key: str) -> None:
        """Delete consumers that own nothing and were idle for 10x claim_idle_ms (keeps XINFO readable).

        Atomic (a script): a check-then-delete from here could delete a consumer that just read entries,
        and XGROUP DELCONSUMER drops its pending entries with it."""
        if self._forget_script is None:
            self._forget_script = self.client.register_script(_FORGET_LUA)
        deleted = self._forget_script(keys=[key], args=[self.cfg.group, 10 * self.cfg.claim_idle_ms, self.consumer])
        if deleted:
            self.log.info("forgot %d idle consumers of %s", deleted, key)

    # -------------------------------------------------------------------------------- list mode
    def _read_list(self, block_ms: int) -> None:
        src, proc = self.keys.list, self.keys.processing(self.consumer)
        pipe = self.client.pipeline(transaction=False)
        for _ in range(self.cfg.read_count):
            pipe.lmove(src, proc, "RIGHT", "LEFT")
        got = [raw for raw in pipe.execute() if raw is not None]
        if not got:
            raw = self.client.blmove(src, proc, block_ms / 1000, "RIGHT", "LEFT")
            got = [raw] if raw is not None else []
        with self._lock:
            now = time.monotonic()
            self._ready.extend((proc, raw, None, now) for raw in got)

    def _beat(self) -> None:
        self.client.set(self.keys.heartbeat(self.consumer), str(os.getpid()), px=self.cfg.heartbeat_ttl_ms)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_ttl_ms / 3000):
            try:
                self._beat()
            except CONNECTION_ERRORS:
                pass

    def _requeue_dead_workers(self) -> None:
        """Workers whose heartbeat key expired are dead: move their processing lists back to the queue."""
        for raw in self.client.smembers(self.keys.workers):
            worker = raw.decode()
            if worker == self.consumer or self.client.exists(self.keys.heartbeat(worker)):
                continue
            proc = self.keys.processing(worker)
            moved = 0
            # oldest is at the right end of proc; LEFT->RIGHT puts it at the right end of src (popped first)
            while self.client.lmove(proc, self.keys.list, "LEFT", "RIGHT") is not None:
                moved += 1
            self.client.srem(self.keys.workers, worker)
            if moved:
                self.counters["reclaimed"] += moved
                self.log.warning("worker %s is dead (heartbeat expired): requeued %d batches", worker, moved)

    # ============================================================================================ lifecycle
    def pending(self) -> int:
        """Batches in the spool, fetched and not handed out, and (once this instance consumes) not yet
        delivered to any worker (stream: the group's ``lag``; list: LLEN). Cached for 100 ms; never raises."""
        with self._lock:
            local = len(self._spool) + len(self._ready)
        if not self._worker_ready:
            return local
        now = time.monotonic()
        if now - self._backlog_at > 0.1:
            self._backlog_at = now
            try:
                if self.cfg.mode == "list":
                    self._backlog = int(self.client.llen(self.keys.list))
                else:
                    self._backlog = 0
                    for key in list(self._streams):
                        for g in self.client.xinfo_groups(key):
                            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                            if name == self.cfg.group:
                                self._backlog += int(g.get("lag") or 0)
            except _CLOSE_ERRORS:
                pass
        return local + self._backlog

    def health(self) -> Health:
        c = dict(self.counters)
        c["spool_batches"] = len(self._spool)
        c["spool_bytes"] = self._spool.bytes
        c["spilled"] = self._spool.spilled
        connected = self._send_connected and self._recv_connected
        state = "ok" if connected else "degraded"
        detail = f"redis {self.where}" + ("" if connected else f" unreachable: {self._last_error}")
        return Health(state, detail, c)  # type: ignore[arg-type]

    def close(self) -> None:
        self._stop.set()
        if self._sender is not None:
            self._sender.join(5)
        for t in (self._heartbeat,):
            if t is not None:
                t.join(2)
        try:
            self._send_acks()
            if self.cfg.mode == "list" and self._worker_ready:
                # give back what we took and did not finish; then leave the worker set
                proc = self.keys.processing(self.consumer)
                while self.client.lmove(proc, self.keys.list, "LEFT", "RIGHT") is not None:
                    pass
                self.client.delete(self.keys.heartbeat(self.consumer))
                self.client.srem(self.keys.workers, self.consumer)
            elif self._worker_ready:
                for key in self._streams:
                    info = [c for c in self.client.xinfo_consumers(key, self.cfg.group)
                            if c["name"] in (self.consumer, self.consumer.encode())]
                    if info and info[0]["pending"] == 0:
                        self.client.xgroup_delconsumer(key, self.cfg.group, self.consumer)
        except _CLOSE_ERRORS:
            pass
        left = len(self._spool)
        self._spool.close()
        if left:
            self.log.warning("%d batches not yet in Redis kept in %s; the next start sends them", left,
                             self._spool.path)
        try:
            self.client.close()
        except Exception:  # closing a broken client must not fail shutdown
            pass

