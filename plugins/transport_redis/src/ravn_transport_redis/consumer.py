"""The worker side of the Redis transport: one consumer base, a stream consumer and a list consumer.

``ConsumerBase`` owns what both modes do alike: the local queue of fetched entries, the read loop with its
backoff, decoding and dead-lettering, dropping batches whose id this worker has seen recently
(``dedup_window``), and acks queued and sent in one pipeline per read.

``StreamConsumer`` reads the per-host streams (found in the registry set the agents SADD to) through a consumer
group, XACKs after ``ack()``, XAUTOCLAIMs entries a dead consumer left pending for ``claim_idle_ms``, and
dead-letters entries that do not decode or were delivered ``max_deliveries`` times.

``ListConsumer`` BLMOVEs elements into a per-worker processing list, LREMs them after ``ack()``, keeps a
heartbeat key alive, and requeues the processing lists of workers whose heartbeat expired.

Threads: ``consume``/``ack`` from any number of analysis threads (the redis-py pool is thread-safe; local state
is under one lock); in list mode one heartbeat thread.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from typing import Any

import redis

from ravn_core.backoff import Backoff
from ravn_core.components import Delivery
from ravn_core.errors import DecodeError
from ravn_transport_redis.codec import Decoded, decode_list, decode_stream, invalid_events, preview
from ravn_transport_redis.common import Link, Token, is_error, name_part
from ravn_transport_redis.connection import CONNECTION_ERRORS

COUNTERS = ("consumed", "consumed_events", "acked", "dead_lettered", "reconnects", "reclaimed", "duplicates",
            "trimmed_unread", "lost_to_reclaim", "recovered", "invalid_events", "ignored_streams")
_DEAD_EXAMPLES = 10  # invalid events shown (bounded preview each) in one dead-letter record
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)

# (key, stream entry id or raw list element, stream fields or None, monotonic time fetched)
Fetched = tuple[str, Any, Any, float]


class ConsumerBase(ABC):
    """Reads batches for analysis; subclasses say how to read, decode, ack and take over dead workers' work."""

    def __init__(self, link: Link) -> None:
        cfg = link.cfg
        self.link = link
        self.cfg = cfg
        self.log = link.log
        self.client = link.client
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.connected = True
        self.ready = False  # set up (groups created / heartbeat running, own work recovered)
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._backoff = Backoff(cfg.backoff_s, cfg.backoff_max_s, jitter=True)
        self._ready: deque[Fetched] = deque()
        self._next_claim = 0.0
        self._allowed = (re.compile("|".join(fnmatch.translate(p) for p in cfg.allow_hosts)).fullmatch
                         if cfg.allow_hosts else None)
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._inflight: set[tuple[str, Any]] = set()
        self._acks: list[Token] = []  # acked by the runtime, not yet sent to Redis
        self._backlog = 0
        self._backlog_at = 0.0

    # ------------------------------------------------------------------------------------ what a mode provides
    @abstractmethod
    def _setup(self) -> None:
        """First contact: join (groups, worker set, heartbeat) and queue this worker's own unfinished work."""

    @abstractmethod
    def _recover_own(self) -> None:
        """Queue what Redis holds as this worker's (at startup, and after a reconnect)."""

    @abstractmethod
    def _housekeeping(self, now: float) -> None:
        """Before a read: what the mode does periodically (stream: re-read the registry)."""

    @abstractmethod
    def _read(self, block_ms: int) -> None:
        """Fetch entries into the local queue, blocking at most ``block_ms``."""

    @abstractmethod
    def _decode(self, key: str, entry: Any, fields: Any, fetched: float) -> Decoded | None:
        """The batch of a fetched entry; None when it is no longer ours to process (handled here). Raises
        ``DecodeError`` for an entry to dead-letter."""

    @abstractmethod
    def _ack_command(self, pipe: Any, key: str, entries: list[Any]) -> None:
        """Queue on ``pipe`` what removes ``entries`` of ``key`` from our pending work (XACK / LREM)."""

    @abstractmethod
    def _dead_record(self, key: str, entry: Any, fields: Any) -> dict[Any, Any]:
        """What the dead-letter stream keeps of an entry besides the reason."""

    @abstractmethod
    def _claim_dead(self) -> None:
        """Take over what dead workers left."""

    @abstractmethod
    def _server_backlog(self) -> int:
        """Batches not yet delivered to any worker (stream: the group's lag; list: LLEN)."""

    @abstractmethod
    def _leave(self) -> None:
        """At close: give back or release what this worker holds in Redis."""

    def _response_error(self, exc: redis.exceptions.ResponseError) -> None:
        """A read failed with an error reply; the default backs off like a connection failure."""
        self._failed(exc)

    # ------------------------------------------------------------------------------------ read loop
    def consume(self, timeout_s: float) -> Delivery | None:
        deadline = time.monotonic() + timeout_s
        stop = self.link.stop
        while True:
            delivery = self._next_ready()
            if delivery is not None:
                return delivery
            now = time.monotonic()
            if now >= deadline or stop.is_set():
                return None
            if not self._backoff.ready():
                stop.wait(min(self._backoff.remaining(), deadline - now))
                continue
            try:
                self._ensure_setup()
                if self._acks:
                    self._send_acks()
                self._housekeeping(now)
                if now >= self._next_claim:
                    self._claim()
                self._read(max(1, min(self.cfg.block_ms, int((deadline - now) * 1000))))
                self._ok()
            except CONNECTION_ERRORS as exc:
                self._failed(exc)
            except redis.exceptions.ResponseError as exc:
                self._response_error(exc)

    def _ok(self) -> None:
        self._backoff.succeeded()
        if not self.connected:
            self.counters["reconnects"] += 1
            self.log.info("redis %s reachable again (worker %s)", self.link.where, self.link.consumer)
            self.connected = True
            if self.ready:
                self._recover_own()

    def _failed(self, exc: BaseException) -> None:
        delay = self._backoff.failed()
        self.link.last_error = f"{type(exc).__name__}: {exc}"
        if self.connected or self._backoff.failures % 100 == 0:
            self.log.warning("redis %s: %s; next try in %.2fs", self.link.where, self.link.last_error, delay)
        self.connected = False

    def _ensure_setup(self) -> None:
        if self.ready:
            return
        with self._setup_lock:
            if not self.ready:
                self._setup()
                self.ready = True

    def _queue_own(self, todo: list[Fetched]) -> None:
        """Put recovered entries at the front of the local queue, skipping those we already hold."""
        with self._lock:
            queued = {(k, e) for k, e, _f, _t in self._ready}
            todo = [t for t in todo if (t[0], t[1]) not in queued and (t[0], t[1]) not in self._inflight]
            self._ready.extendleft(reversed(todo))
        if todo:
            self.log.info("recovered %d batches that Redis holds as this worker's (%s)", len(todo),
                          self.link.consumer)
            self.counters["recovered"] += len(todo)

    def _next_ready(self) -> Delivery | None:
        while True:
            with self._lock:
                if not self._ready:
                    return None
                key, entry, fields, fetched = item = self._ready.popleft()
            try:
                decoded = self._decode(key, entry, fields, fetched)
                if decoded is None:
                    continue
                if self._allowed is not None and not self._allowed(decoded.host):
                    raise DecodeError(f"host {decoded.host[:80]!r} is not in allow_hosts")
                bad = invalid_events(decoded.events)
                if bad and len(bad) == len(decoded.events):
                    self.counters["invalid_events"] += len(bad)
                    raise DecodeError(self._invalid_reason(decoded, bad))
            except DecodeError as exc:
                try:
                    self._dead_letter(key, entry, fields, str(exc))
                except CONNECTION_ERRORS as exc2:  # still pending on us: dead-lettered on a later try
                    self._requeue(item, exc2)
                    return None
                continue
            except CONNECTION_ERRORS as exc:
                self._requeue(item, exc)
                return None
            if not self._first_sight(key, entry, decoded):
                continue
            if bad:
                self.counters["invalid_events"] += len(bad)
                self._dead_letter_events(key, decoded, bad)
            self.counters["consumed"] += 1
            self.counters["consumed_events"] += len(decoded.events)
            return Delivery(decoded.host, decoded.events, Token(key, entry, decoded.batch_id, decoded.ts_ns))

    @staticmethod
    def _invalid_reason(d: Decoded, bad: list[tuple[int, str]]) -> str:
        i, why = bad[0]
        return (f"{len(bad)} of {len(d.events)} events do not fit the event schema (docs/EVENTS.md); "
                f"event {i}: {why}")

    def _dead_letter_events(self, key: str, d: Decoded, bad: list[tuple[int, str]]) -> None:
        """Some events of a batch do not fit the schema: they go to the dead-letter stream (one record, with a
        bounded preview of the first few) and leave ``d.events``; the rest is analyzed and the entry acked with
        it. The record is best effort: if Redis is away now, the events are only counted and logged."""
        reason = self._invalid_reason(d, bad)
        record: dict[Any, Any] = {"reason": reason, "source": key, "consumer": self.link.consumer,
                                  "ts": str(time.time()), "batch": d.batch_id, "host": d.host,
                                  "events": str(len(d.events)), "invalid": str(len(bad))}
        for i, why in bad[:_DEAD_EXAMPLES]:
            record[f"event.{i}"] = f"{why}: {preview(d.events[i])}"
        try:
            self.client.xadd(self.link.keys.deadletter, record, maxlen=self.cfg.deadletter_maxlen, approximate=True)
            self.counters["dead_lettered"] += 1
        except CONNECTION_ERRORS as exc:
            reason += f" (not dead-lettered: {type(exc).__name__})"
        if self.counters["invalid_events"] <= 100 or self.counters["dead_lettered"] % 1000 == 0:
            self.log.warning("%s, batch %s: %s; analyzing the other events", key, d.batch_id[:80], reason)
        drop = {i for i, _ in bad}
        d.events = [e for i, e in enumerate(d.events) if i not in drop]

    def _requeue(self, item: Fetched, exc: BaseException) -> None:
        with self._lock:
            self._ready.appendleft(item)
        self._failed(exc)

    def _first_sight(self, key: str, entry: Any, d: Decoded) -> bool:
        """Dedup: False for a batch id seen recently (its entry is acked unless it is our own in flight)."""
        with self._lock:
            if (key, entry) in self._inflight:
                return False  # our own entry, redelivered to us while we still work on it
            # Batch ids are namespaced by the key they came from: ids another writer put on another stream
            # can never make a real batch look like a duplicate.
            seen = (key, d.batch_id)
            if seen in self._seen:
                self._seen.move_to_end(seen)
                dup = True
            else:
                dup = False
                if self.cfg.dedup_window:
                    self._seen[seen] = None
                    if len(self._seen) > self.cfg.dedup_window:
                        self._seen.popitem(last=False)
                self._inflight.add((key, entry))
        if dup:
            self.counters["duplicates"] += 1
            try:
                pipe = self.client.pipeline(transaction=False)
                self._ack_command(pipe, key, [entry])
                pipe.execute()
            except CONNECTION_ERRORS:
                pass
            return False
        return True

    # ------------------------------------------------------------------------------------ acks
    def ack(self, token: Token) -> None:
        """Queue the ack. Queued acks go out in one pipeline before this worker's next read from Redis, when
        ``read_count`` of them are queued, and at ``flush``/``close``: one round trip per read instead of one
        per batch. A worker that dies with acks queued has those batches redelivered (at-least-once)."""
        with self._lock:
            self._inflight.discard((token.key, token.entry))
            self._acks.append(token)
            full = len(self._acks) >= self.cfg.read_count
        if full:
            try:
                self._send_acks()
            except CONNECTION_ERRORS as exc:
                self._failed(exc)

    def _send_acks(self) -> None:
        """Send the queued acks; on a connection error they stay queued for the next try."""
        with self._lock:
            todo, self._acks = self._acks, []
        if not todo:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            by_key: dict[str, list[Any]] = {}
            for t in todo:
                by_key.setdefault(t.key, []).append(t.entry)
            for key, entries in by_key.items():
                self._ack_command(pipe, key, entries)
            pipe.execute()
        except CONNECTION_ERRORS:
            with self._lock:
                self._acks[:0] = todo
            raise
        self.counters["acked"] += len(todo)

    def _dead_letter(self, key: str, entry: Any, fields: Any, reason: str) -> None:
        """Park an entry that cannot be processed in the dead-letter stream, with the reason; ack it."""
        record: dict[Any, Any] = {"reason": reason, "source": key, "consumer": self.link.consumer,
                                  "ts": str(time.time())}
        record.update(self._dead_record(key, entry, fields))
        if self.counters["dead_lettered"] < 10 or self.counters["dead_lettered"] % 1000 == 0:
            self.log.warning("dead-lettering %s %s: %s", key, record.get("id", "(list)"), reason)
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.link.keys.deadletter, record, maxlen=self.cfg.deadletter_maxlen, approximate=True)
        self._ack_command(pipe, key, [entry])
        pipe.execute()
        self.counters["dead_lettered"] += 1

    # ------------------------------------------------------------------------------------ dead workers
    def _claim(self) -> None:
        """Take over what dead workers left (one analysis thread at a time)."""
        if not self._claim_lock.acquire(blocking=False):
            return
        try:
            self._next_claim = time.monotonic() + self.cfg.claim_every_s
            self._claim_dead()
        finally:
            self._claim_lock.release()

    # ------------------------------------------------------------------------------------ lifecycle
    def local(self) -> int:
        """Entries fetched and not yet handed out."""
        with self._lock:
            return len(self._ready)

    def backlog(self) -> int:
        """Batches not yet delivered to any worker, cached for 100 ms; 0 before setup. Never raises."""
        if not self.ready:
            return 0
        now = time.monotonic()
        if now - self._backlog_at > 0.1:
            self._backlog_at = now
            try:
                self._backlog = self._server_backlog()
            except _CLOSE_ERRORS:
                pass
        return self._backlog

    def send_acks(self) -> None:
        """Queued acks out now (``flush``); a connection error leaves them queued."""
        try:
            self._send_acks()
        except CONNECTION_ERRORS:
            pass

    def close(self) -> None:
        """Send queued acks and leave (``link.stop`` is set by the caller first)."""
        try:
            self._send_acks()
            if self.ready:
                self._leave()
        except _CLOSE_ERRORS:
            pass


# KEYS[1] stream; ARGV group, idle threshold (ms), our own name. XINFO CONSUMERS replies (RESP2) are flat
# arrays: name, <name>, pending, <n>, idle, <ms>, ...
_KEEP_LUA = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

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


class StreamConsumer(ConsumerBase):
    """Reads the registered streams through the consumer group ``cfg.group``.

    Which streams: the registry's members that are stream keys of this transport's shape (``stream_per``
    host/source: ``<prefix>events:{<host>}`` or ``<prefix>events:{<host>}:<source>``; fleet:
    ``<prefix>events``), and whose host is in ``allow_hosts`` when that is set; other members are ignored and
    counted (``ignored_streams``). The host of a batch on a per-host stream is the one in its key, never the
    entry's ``h`` field: an entry whose ``h`` names another host is dead-lettered. With per-host ACL users
    (README, "Security") only that host's agent can write its stream."""

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        prefix = re.escape(self.cfg.prefix)
        self._per_host = self.cfg.stream_per != "fleet"
        self._shape = re.compile(rf"{prefix}events:\{{([A-Za-z0-9_.\-]+)\}}(?::[A-Za-z0-9_.\-]+)?"
                                 if self._per_host else rf"{prefix}events")
        self._ignored_logged = 0
        self.streams: list[str] = []
        self._groups: set[str] = set()
        self._next_discover = 0.0
        self._forget_script: Any = None  # registered on first use (the cluster client connects lazily)
        self._keep_script: Any = None

    def _setup(self) -> None:
        self._discover()
        self._recover_own()

    def _recover_own(self) -> None:
        """Entries pending on this consumer: at startup a previous run's work (a stable ``consumer`` name); after
        a reconnect what a reply lost with the connection had delivered to us (Redis with AOF restarts with it
        pending on us, and nobody would reclaim it before ``claim_idle_ms``). What we already hold is skipped
        (in flight) or dropped as a duplicate (already acked)."""
        now = time.monotonic()
        todo: list[Fetched] = []
        for key in list(self.streams):
            for _k, entries in self.client.xreadgroup(self.cfg.group, self.link.consumer, {key: "0"},
                                                      count=10_000) or []:
                todo += [(key, eid, f, now) for eid, f in entries]
        self._queue_own(todo)

    def _housekeeping(self, now: float) -> None:
        if now >= self._next_discover:
            self._discover()

    def _create_group(self, key: str) -> None:
        try:
            self.client.xgroup_create(key, self.cfg.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if not is_error(exc, "BUSYGROUP"):
                raise

    def _host_of(self, key: str) -> str | None:
        """The host named by a per-host stream key (None: fleet stream, or not a stream key of ours)."""
        m = self._shape.fullmatch(key)
        return m.group(1) if m is not None and self._per_host else None

    def _wanted(self, key: str) -> bool:
        m = self._shape.fullmatch(key)
        if m is None:
            return False
        return self._allowed is None or not self._per_host or self._allowed(m.group(1)) is not None

    def _discover(self) -> None:
        """Read the stream registry; create the group on streams we have not seen."""
        registered = [k.decode(errors="replace") for k in self.client.smembers(self.link.keys.registry)]
        members = sorted(k for k in registered if k in self._groups or self._wanted(k))
        ignored = len(registered) - len(members)
        self.counters["ignored_streams"] = ignored
        if ignored > 2 * self._ignored_logged:
            self._ignored_logged = ignored
            self.log.warning("ignoring %d members of %s that are not stream keys of this transport%s",
                             ignored, self.link.keys.registry, " or not in allow_hosts" if self._allowed else "")
        with self._lock:
            streams = sorted(set(self.streams) | set(members))
            new = [k for k in streams if k not in self._groups]
        for key in new:
            self._create_group(key)
        with self._lock:
            self._groups.update(new)
            self.streams = streams
        self._next_discover = time.monotonic() + self.cfg.discover_interval_s

    def _response_error(self, exc: redis.exceptions.ResponseError) -> None:
        if is_error(exc, "NOGROUP"):  # the server lost the group (restart without persistence)
            self.log.warning("consumer group %r is gone (%s); recreating it", self.cfg.group, exc)
            with self._lock:
                self._groups.clear()
            self._next_discover = 0.0
            self._backoff.failed()
        else:
            self._failed(exc)

    def _read(self, block_ms: int) -> None:
        streams = self.streams
        if not streams:  # no agent has registered a stream yet
            self.link.stop.wait(min(block_ms / 1000, max(0.0, self._next_discover - time.monotonic())))
            return
        # COUNT applies per stream: split read_count over the streams so one read never prefetches more than
        # max(read_count, streams) batches (prefetched entries age towards claim_idle_ms in our queue).
        count = max(1, -(-self.cfg.read_count // len(streams)))
        group, consumer = self.cfg.group, self.link.consumer
        if not self.cfg.cluster:
            reply = self.client.xreadgroup(group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms)
        else:
            # Cluster: one XREADGROUP may not span slots. One non-blocking read per stream, pipelined per node.
            pipe = self.client.pipeline()
            for key in streams:
                pipe.xreadgroup(group, consumer, {key: ">"}, count=count)
            reply = [r for rs in pipe.execute() for r in (rs or [])]
            if not reply:
                self.link.stop.wait(min(block_ms, 50) / 1000)
        now = time.monotonic()
        for key, entries in reply or []:
            k = key.decode() if isinstance(key, bytes) else key
            with self._lock:
                self._ready.extend((k, eid, f, now) for eid, f in entries)

    def _decode(self, key: str, entry: Any, fields: Any, fetched: float) -> Decoded | None:
        if time.monotonic() - fetched > self.cfg.claim_idle_ms / 2000 and not self._still_mine(key, entry):
            return None  # waited here so long that another worker reclaimed it: it is theirs now
        if not fields:  # trimmed (MAXLEN) while pending: the data is gone
            self.counters["trimmed_unread"] += 1
            self.client.xack(key, self.cfg.group, entry)
            return None
        d = decode_stream(fields)
        host = self._host_of(key)
        if host is not None:
            if name_part(d.host) != host:
                raise DecodeError(f"entry says host {d.host[:80]!r} on the stream of host {host!r}: the host of "
                                  "a batch is the one in its stream key (forged?)")
            d.host = host
        return d

    def _still_mine(self, key: str, entry: Any) -> bool:
        """For an entry that waited long in the local queue: is it still pending on us? Then touch it
        (XCLAIM JUSTID resets its idle time) so nobody reclaims it while we work on it. One script, so the
        check and the touch are atomic: another worker's XAUTOCLAIM between them would otherwise be taken
        back by our XCLAIM (min-idle 0) and the entry processed by both."""
        if self._keep_script is None:
            self._keep_script = self.client.register_script(_KEEP_LUA)
        if not self._keep_script(keys=[key], args=[self.cfg.group, self.link.consumer, entry]):
            self.counters["lost_to_reclaim"] += 1
            return False
        return True

    def _ack_command(self, pipe: Any, key: str, entries: list[Any]) -> None:
        pipe.xack(key, self.cfg.group, *entries)

    def _dead_record(self, key: str, entry: Any, fields: Any) -> dict[Any, Any]:
        record: dict[Any, Any] = {"id": entry}
        record.update({b"orig." + k: v for k, v in (fields or {}).items()})
        return record

    def _claim_dead(self) -> None:
        for key in list(self.streams):
            self._claim_stream(key)

    def _claim_stream(self, key: str) -> None:
        group, start = self.cfg.group, "0-0"
        for _ in range(10):  # bounded work per round; the rest next round
            reply = self.client.xautoclaim(key, group, self.link.consumer, self.cfg.claim_idle_ms, start, count=100)
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
        deleted = self._forget_script(keys=[key],
                                      args=[self.cfg.group, 10 * self.cfg.claim_idle_ms, self.link.consumer])
        if deleted:
            self.log.info("forgot %d idle consumers of %s", deleted, key)

    def _server_backlog(self) -> int:
        backlog = 0
        for key in list(self.streams):
            for g in self.client.xinfo_groups(key):
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if name == self.cfg.group:
                    backlog += int(g.get("lag") or 0)
        return backlog

    def _leave(self) -> None:
        """Delete our consumer from each group where it owns nothing (a stable name keeps what it owns)."""
        me = self.link.consumer
        for key in self.streams:
            info = [c for c in self.client.xinfo_consumers(key, self.cfg.group) if c["name"] in (me, me.encode())]
            if info and info[0]["pending"] == 0:
                self.client.xgroup_delconsumer(key, self.cfg.group, me)


class ListConsumer(ConsumerBase):
    """Moves elements of the shared list into this worker's processing list (reliable queue pattern)."""

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        self.processing = link.keys.processing(link.consumer)
        self._heartbeat: threading.Thread | None = None

    def _setup(self) -> None:
        self._beat()
        self.client.sadd(self.link.keys.workers, self.link.consumer)
        self._recover_own()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"ravn-{self.link.name}-heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def _recover_own(self) -> None:
        """This worker's processing list: a previous run's work (stable ``consumer`` name), or after a reconnect
        what a reply lost with the connection had moved there."""
        now = time.monotonic()
        own = self.client.lrange(self.processing, 0, -1)
        self._queue_own([(self.processing, raw, None, now) for raw in reversed(own)])

    def _housekeeping(self, now: float) -> None:
        pass

    def _read(self, block_ms: int) -> None:
        src, proc = self.link.keys.list, self.processing
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

    def _decode(self, key: str, entry: Any, fields: Any, fetched: float) -> Decoded | None:
        return decode_list(entry)

    def _ack_command(self, pipe: Any, key: str, entries: list[Any]) -> None:
        for raw in entries:
            pipe.lrem(key, 1, raw)

    def _dead_record(self, key: str, entry: Any, fields: Any) -> dict[Any, Any]:
        return {"element": entry}

    def _beat(self) -> None:
        self.client.set(self.link.keys.heartbeat(self.link.consumer), str(os.getpid()), px=self.cfg.heartbeat_ttl_ms)

    def _heartbeat_loop(self) -> None:
        while not self.link.stop.wait(self.cfg.heartbeat_ttl_ms / 3000):
            try:
                self._beat()
            except CONNECTION_ERRORS:
                pass

    def _claim_dead(self) -> None:
        """Workers whose heartbeat key expired are dead: move their processing lists back to the queue."""
        keys = self.link.keys
        for raw in self.client.smembers(keys.workers):
            worker = raw.decode()
            if worker == self.link.consumer or self.client.exists(keys.heartbeat(worker)):
                continue
            proc = keys.processing(worker)
            moved = 0
            # oldest is at the right end of proc; LEFT->RIGHT puts it at the right end of src (popped first)
            while self.client.lmove(proc, keys.list, "LEFT", "RIGHT") is not None:
                moved += 1
            self.client.srem(keys.workers, worker)
            if moved:
                self.counters["reclaimed"] += moved
                self.log.warning("worker %s is dead (heartbeat expired): requeued %d batches", worker, moved)

    def _server_backlog(self) -> int:
        return int(self.client.llen(self.link.keys.list))

    def _leave(self) -> None:
        """Give back what we took and did not finish; then leave the worker set."""
        if self._heartbeat is not None:
            self._heartbeat.join(2)
        keys = self.link.keys
        while self.client.lmove(self.processing, keys.list, "LEFT", "RIGHT") is not None:
            pass
        self.client.delete(keys.heartbeat(self.link.consumer))
        self.client.srem(keys.workers, self.link.consumer)
