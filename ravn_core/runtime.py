"""The threaded runtime: sources -> stage queue -> transport -> analysis -> sink queue -> sinks, supervised.

Threads (the original design's thread model, with bounded queues of *batches* between stages):

    source thread (one per source)  --ingress queue-->  transport thread  --transport-->  analysis thread(s)
        --sink queue-->  sink thread;      health thread (every ravn.health_interval_s);      main thread

Accounting: every event a source returns is counted ``accepted`` by its source slot; it is then either put on the
ingress queue or counted ``dropped`` (queue full past a short wait). Everything on the ingress queue is published
(or counted ``lost`` if shutdown's time bound runs out), every published batch is analyzed, and its delivery is
acked only after the sinks took its alerts. ``Runtime.stats()`` returns the counters per stage.

Supervision: each component is called inside its own ``try``. A failure is logged once with the plugin's name,
fires ``ravn_component_error``, and the component is restarted after an exponential backoff; more than
``ravn.error_budget`` failures within ``ravn.error_window_s`` quarantine it (health: degraded) until SIGHUP.
One plugin never takes the daemon down.

Roles: ``all`` (one host), ``agent`` (sources -> transport), ``analyze`` (transport -> analyzers -> sinks),
``record`` (sources -> a JSONL file) and ``replay`` (a JSONL file -> analyzers -> sinks, stops at its end).
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ravn_core.batchqueue import BatchQueue
from ravn_core.builtin.health import anon_rss_bytes, rss_bytes, trim_heap
from ravn_core.components import (
    Alert,
    BatchContext,
    Component,
    Delivery,
    Health,
    HealthProbe,
    RuntimeContext,
    RuntimeSnapshot,
    Sink,
    Source,
    ThreatUpdate,
    Transport,
)
from ravn_core.config import ComponentSpec, RavnConfig
from ravn_core.errors import DidNotEnable, RavnError, StartupError
from ravn_core.events import Batch
from ravn_core.plugins import PluginHost
from ravn_core.proctree import ProcessTree
from ravn_core.sdnotify import Notifier
from ravn_core.status import ensure_state_dir, write_private_json
from ravn_core.threat import IncidentTracker

log = logging.getLogger("ravn.runtime")

ROLES = ("all", "agent", "analyze", "record", "replay")
POLL_MS = 50
TICK_S = 1.0
TRIM_GROWTH_BYTES = 32 << 20  # private memory this far above its lowest asks for a heap trim (heap_trim_interval_s)
#: upper bounds (seconds) of the analysis latency histogram that /metrics exports (ravn_analysis_latency_seconds)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Slot:
    """One component under supervision."""

    spec: ComponentSpec
    component: Any
    errors: deque[float] = field(default_factory=deque)
    restarts: int = 0
    quarantined: bool = False
    last_error: str = ""
    retry_at: float = 0.0
    heartbeat: float = field(default_factory=time.time)
    restart_requested: bool = False
    reload_requested: bool = False
    # counters (one writer: the slot's own thread)
    accepted: int = 0
    dropped: int = 0
    batches: int = 0
    processed: int = 0
    skipped: int = 0  # analyzer: events it did not see (restart delay, quarantine, a batch it failed on)
    dead_letters: int = 0  # analyzer: events it raised on alone while the rest of their batch went through

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        """source, transport, analyzer, sink or health_probe."""
        return str(getattr(self.component, "kind", self.spec.kind))

    def health(self) -> Health:
        if self.quarantined:
            return Health("degraded", f"quarantined after {self.restarts} restarts: {self.last_error}")
        try:
            h: Health = self.component.health()
        except Exception as exc:
            return Health("degraded", f"health() raised {type(exc).__name__}: {exc}")
        if h.state == "ok" and self.retry_at:
            return Health("degraded", f"restarting after: {self.last_error}", h.counters)
        return h


@dataclass
class SinkItem:
    delivery: Delivery | None
    alerts: list[Alert]
    updates: list[ThreatUpdate]
    incidents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # host -> open incidents, if changed


def runtime_context(config: RavnConfig) -> RuntimeContext:
    """The daemon-wide context (components get a copy with their own logger)."""
    return RuntimeContext(host=config.core.hostname(), ravn_pid=os.getpid(), state_dir=config.core.state_dir,
                          logger=logging.getLogger("ravn"), config_path=config.path)


class Runtime:
    """Builds the components of a validated config and runs them in threads until stopped."""

    def __init__(
        self,
        config: RavnConfig,
        host: PluginHost,
        role: str = "all",
        transport: Transport | None = None,
        context: RuntimeContext | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.config = config
        self.core = config.core
        self.host = host
        self.role = role
        self.hostname = config.core.hostname()
        self.context = context or runtime_context(config)
        self._transport_override = transport
        self.sources: list[Slot] = []
        self.transport_slot: Slot | None = None
        self.analyzers: list[list[Slot]] = []  # per analysis thread
        self.sinks: list[Slot] = []
        self.probes: list[Slot] = []
        self.ingress: BatchQueue[Batch] = BatchQueue(config.core.queue_batches, config.core.queue_events)
        self.sinkq: queue.Queue[SinkItem] = queue.Queue(maxsize=config.core.queue_batches)
        self._threads: dict[str, threading.Thread] = {}
        self._died: set[str] = set()  # threads whose loop raised (restarted by the health thread); not those that ended
        self._stop_sources = threading.Event()
        self._sources_done = threading.Event()
        self._egress_done = threading.Event()
        self._analysis_done = threading.Event()
        self._health_stop = threading.Event()
        self._stopping = threading.Event()
        self._stop_reason = ""
        self._signals = 0
        self._reload = threading.Event()
        self._threat_lock = threading.Lock()
        # per-host state, bounded by ravn.max_hosts (least recently seen host evicted first, never this host)
        self._hosts_lock = threading.Lock()
        self.trees: dict[str, ProcessTree] = {}
        self.scorers: dict[str, IncidentTracker] = {}  # per host: incidents and the host's threat level
        self._host_seen: dict[str, float] = {}  # host -> monotonic time of its last batch
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=20)  # the last few, for `ravn status`
        self._sink_ident = 0  # the sink thread's ident: what it scores itself it queues locally, not on sinkq
        self._sink_local: deque[SinkItem] = deque()
        self.recent_alerts: deque[Alert] = deque(maxlen=50)
        self.latencies: deque[float] = deque(maxlen=4096)
        # for /metrics: cumulative histogram of batch latency (one bisect per batch) and alerts per (level, rule)
        self.latency_buckets: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.alert_counts: dict[tuple[str, str], int] = {}
        self.counters: dict[str, int] = {
            "published": 0, "publish_lost": 0, "analyzed": 0, "analyzed_batches": 0, "alerts": 0,
            "alerts_emitted": 0, "threat_updates": 0, "acked": 0, "sink_items_lost": 0, "self_alerts": 0,
            "heap_trims": 0, "dead_letters": 0, "hosts_evicted": 0, "drop_alerts": 0,
        }
        self.exit_code = 0
        self.started_at = 0.0
        self._last_drop_alert = 0.0
        self._last_memory_alert = 0.0
        self._memory_low = 0  # lowest private memory seen (bytes), the reference of the heap trim
        self._last_trim = 0.0
        self._drop_base = (0, 0)
        self._stats_final: dict[str, Any] | None = None
        self._state_dir_ok = False
        self.notifier = Notifier()  # systemd: READY at start, WATCHDOG while progressing, STOPPING at stop
        self._stalled: list[str] = []

    # ================================================================================== building
    def _build(self, spec: ComponentSpec) -> Component:
        ctx = RuntimeContext(
            host=self.hostname, ravn_pid=self.context.ravn_pid, state_dir=self.context.state_dir,
            logger=logging.getLogger(f"ravn.{spec.kind}.{spec.name}"), config_path=self.context.config_path,
        )
        try:
            return spec.registration.factory(spec.name, spec.config, ctx)
        except DidNotEnable:
            raise
        except RavnError:
            raise
        except Exception as exc:
            raise StartupError(
                f"{spec.kind} {spec.name!r} ({spec.registration.distribution}) cannot be built: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _wants(self, part: str) -> bool:
        return {
            "sources": self.role in ("all", "agent", "record"),
            "analysis": self.role in ("all", "analyze", "replay"),
        }[part]

    def build(self) -> None:
        """Build every component the role needs (no thread yet). On error, close what was built and raise."""
        try:
            self.host.configure(self.config)
            if self._transport_override is not None:
                t = self._transport_override
                spec = ComponentSpec("transport", t.name, t.name, t.config, self.config.transport.registration)
                self.transport_slot = Slot(spec, t)
            else:
                self.transport_slot = Slot(self.config.transport, self._build(self.config.transport))
            if self._wants("analysis"):
                for _ in range(self.core.analysis_threads):
                    self.analyzers.append(self._build_analyzers())
                for spec in self.config.sinks:
                    self.sinks.append(Slot(spec, self._build(spec)))
            if self._wants("sources"):
                for spec in self.config.sources:
                    self.sources.append(Slot(spec, self._build(spec)))
            for spec in self.config.health_probes:
                self.probes.append(Slot(spec, self._build(spec)))
        except BaseException:
            self._close_all()
            raise

    def _build_analyzers(self) -> list[Slot]:
        slots = []
        for spec in self.config.analyzers:
            try:
                slots.append(Slot(spec, self._build(spec)))
            except DidNotEnable as exc:
                if spec.plugin in self.config.explicitly_named:
                    raise StartupError(f"analyzer {spec.name!r} cannot start: {exc}") from exc
                log.info("analyzer %s not enabled (%s)", spec.name, exc)
        return slots

    # ================================================================================== starting
    def start(self) -> None:
        """Build, start sources (synchronously, so an unusable environment fails here), then every thread."""
        try:
            ensure_state_dir(self.context.state_dir)  # StartupError: someone else's directory, or a symlink
            self._state_dir_ok = True
        except (OSError, StartupError) as exc:
            if isinstance(exc, StartupError) and self.role != "replay":
                raise
            # `ravn replay` needs no root: as a user who cannot create /run/ravn (or whose config names root's
            # state dir) it runs without a status file or socket
            log.warning("cannot use state dir %s (%s): no status file or socket", self.context.state_dir, exc)
        self.build()
        started: list[Slot] = []
        try:
            for slot in self.sources:
                slot.component.start()
                started.append(slot)
        except BaseException:
            for slot in started:
                self._safe(slot, slot.component.stop)
            self._close_all()
            raise
        self.started_at = time.time()
        if self._wants("analysis") and self.role != "replay":
            tree = self._tree(self.hostname)
            try:
                tree.seed_from_proc()
            except OSError as exc:
                log.warning("cannot seed the process tree from /proc: %s", exc)
        try:
            self.host.runtime_started(self, self.components(), self.snapshot)
        except StartupError:
            self._stopping.set()
            for slot in self.sources:
                self._safe(slot, slot.component.stop)
            self._close_all()
            self.host.runtime_stopped({**self.stats(), "reason": "startup failed"}, self.snapshot)
            raise
        for slot in self.sources:
            self._spawn(f"source:{slot.name}", self._source_loop, slot)
        if self._wants("sources"):
            self._spawn("transport", self._egress_loop)
        else:
            self._sources_done.set()
            self._egress_done.set()
        if self._wants("analysis"):
            for i, slots in enumerate(self.analyzers):
                self._spawn(f"analysis:{i}", self._analysis_loop, slots)
            self._spawn("sink", self._sink_loop)
        self._spawn("health", self._health_loop)
        self.notifier.ready(f"running: {len(self.sources)} sources attached")
        log.info("RAVN running (role %s, host %s, %d sources, %d analyzers, %d sinks)", self.role, self.hostname,
                 len(self.sources), len(self.analyzers[0]) if self.analyzers else 0, len(self.sinks))

    def components(self) -> list[Component]:
        slots = [*self.sources, *([self.transport_slot] if self.transport_slot else []),
                 *(self.analyzers[0] if self.analyzers else []), *self.sinks, *self.probes]
        return [s.component for s in slots]

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException:
                log.exception("thread %s died; the health thread will restart it", name)
                self._died.add(name)

        t = threading.Thread(target=run, name=f"ravn-{name}", daemon=True)
        t.start()
        self._threads[name] = t

    # ================================================================================== supervision
    def _fail(self, slot: Slot, exc: BaseException) -> None:
        now = time.monotonic()
        slot.errors.append(now)
        while slot.errors and now - slot.errors[0] > self.core.error_window_s:
            slot.errors.popleft()
        slot.last_error = f"{type(exc).__name__}: {exc}"
        slot.restarts += 1
        plugin = f"{slot.spec.plugin} ({slot.spec.registration.distribution})"
        if len(slot.errors) > self.core.error_budget:
            newly = not slot.quarantined
            slot.quarantined = True
            log.error("%s %r from %s quarantined after %d errors in %.0fs; last: %s", slot.kind, slot.name,
                      plugin, len(slot.errors), self.core.error_window_s, slot.last_error)
            if newly:
                # a source, transport or analyzer out of the pipeline blinds RAVN (in part): HIGH (score 100)
                blinding = slot.kind in ("source", "transport", "analyzer")
                self.self_alert("ravn_component_quarantined", 100 if blinding else 60,
                                f"RAVN's {slot.kind} {slot.name!r} ({plugin}) is quarantined after "
                                f"{len(slot.errors)} errors in {self.core.error_window_s:.0f}s and stays out "
                                f"until SIGHUP; last error: {slot.last_error}",
                                {"component": f"{slot.kind}:{slot.name}", "plugin": slot.spec.plugin,
                                 "errors": len(slot.errors), "last_error": slot.last_error})
        else:
            delay = min(self.core.restart_backoff_s * 2 ** (len(slot.errors) - 1), self.core.restart_backoff_max_s)
            slot.retry_at = now + delay
            log.error("%s %r from %s failed: %s; restart in %.1fs", slot.kind, slot.name, plugin,
                      slot.last_error, delay, exc_info=slot.restarts == 1)
        self.host.component_error(slot.component, exc, slot.restarts, slot.quarantined)

    def _safe(self, slot: Slot, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.warning("%s %r: %s raised %s: %s", slot.kind, slot.name, getattr(fn, "__name__", "call"),
                        type(exc).__name__, exc)
            return None

    def _wait_retry(self, slot: Slot, stop: threading.Event) -> bool:
        """Sleep until the slot's retry time (interruptible). False when stopping."""
        while time.monotonic() < slot.retry_at:
            if stop.wait(min(0.1, max(0.0, slot.retry_at - time.monotonic()))):
                return False
        return True

    # ================================================================================== source threads
    def _source_loop(self, slot: Slot) -> None:
        src: Source = slot.component
        stop = self._stop_sources
        while not stop.is_set():
            slot.heartbeat = time.time()
            if slot.quarantined:
                stop.wait(0.2)
                continue
            if slot.restart_requested or slot.retry_at:
                slot.restart_requested = False
                if not self._wait_retry(slot, stop):
                    break
                slot.retry_at = 0.0
                self._safe(slot, src.stop)
                try:
                    src.start()
                    log.info("source %r restarted", slot.name)
                except Exception as exc:
                    self._fail(slot, exc)
                    continue
            if slot.reload_requested:
                slot.reload_requested = False
                self._safe(slot, src.reload)
            try:
                batch = src.poll(POLL_MS)
            except Exception as exc:
                self._fail(slot, exc)
                continue
            if batch:
                self._accept(slot, batch)
        # shutdown: whatever the source still holds, then detach
        if not slot.quarantined:
            batch = self._safe(slot, src.drain) or []
            if batch:
                self._accept(slot, batch)
        self._safe(slot, src.stop)

    def _accept(self, slot: Slot, batch: Batch) -> None:
        slot.accepted += len(batch)
        slot.batches += 1
        wait = 0.25 if not self._stopping.is_set() else self.core.shutdown_timeout_s
        if not self.ingress.put(batch, len(batch), timeout=wait):
            slot.dropped += len(batch)

    # ================================================================================== transport thread
    def _egress_loop(self) -> None:
        assert self.transport_slot is not None
        slot = self.transport_slot
        transport: Transport = slot.component
        while True:
            slot.heartbeat = time.time()
            batch = self.ingress.get(timeout=0.05)
            if batch is None:
                if self._sources_done.is_set():
                    break
                continue
            while True:
                try:
                    transport.publish(self.hostname, batch)
                    self.counters["published"] += len(batch)
                    break
                except Exception as exc:
                    self._fail(slot, exc)
                    # Retried until shutdown gives up on draining (the health stop event is set last).
                    if slot.quarantined or not self._wait_retry(slot, self._health_stop):
                        self.counters["publish_lost"] += len(batch)
                        break
                    slot.retry_at = 0.0

    # ================================================================================== analysis threads
    def _tree(self, host: str) -> ProcessTree:
        self._host_seen[host] = time.monotonic()
        tree = self.trees.get(host)
        if tree is None:
            with self._hosts_lock:
                tree = self.trees.get(host)
                if tree is None:
                    tree = self.trees[host] = ProcessTree(self.core.proctree_max)
                    if len(self.trees) > self.core.max_hosts:
                        self._evict_hosts()
        return tree

    def _evict_hosts(self) -> None:
        """Over ``ravn.max_hosts``: forget the least recently seen tenth of the hosts (tree and threat score),
        never this one. Called with the hosts lock held; amortised, one sort per tenth of the bound."""
        seen = self._host_seen
        others = sorted((h for h in self.trees if h != self.hostname), key=lambda h: seen.get(h, 0.0))
        gone = others[: max(1, len(self.trees) - self.core.max_hosts + self.core.max_hosts // 10)]
        with self._threat_lock:
            for h in gone:
                self.trees.pop(h, None)
                self.scorers.pop(h, None)
                seen.pop(h, None)
        self.counters["hosts_evicted"] += len(gone)
        log.warning("%d hosts over ravn.max_hosts (%d): forgot the %d least recently seen (process trees and "
                    "threat scores)", len(self.trees) + len(gone), self.core.max_hosts, len(gone))

    def _scorer(self, host: str) -> IncidentTracker:
        scorer = self.scorers.get(host)
        if scorer is None:
            scorer = self.scorers[host] = IncidentTracker(host, self.core.threat, self._tree(host))
        return scorer

    def _now(self, batch: Batch | None) -> float:
        if self.role == "replay" and batch:
            ts = batch[-1].get("evt.ts")
            if isinstance(ts, int | float):
                return float(ts) / 1e9
        return time.time()

    def _analysis_loop(self, slots: list[Slot]) -> None:
        assert self.transport_slot is not None
        transport: Transport = self.transport_slot.component
        last_tick = time.monotonic()
        timeline = time.time()
        while True:
            for slot in slots:
                slot.heartbeat = time.time()
                if slot.reload_requested:
                    slot.reload_requested = False
                    self._safe(slot, slot.component.reload)
            delivery = None
            try:
                delivery = transport.consume(0.05)
            except Exception as exc:
                self._fail(self.transport_slot, exc)
                self._wait_retry(self.transport_slot, self._health_stop)
                self.transport_slot.retry_at = 0.0
            if delivery is not None:
                timeline = self._now(delivery.batch)
                self._analyze(slots, delivery, timeline)
            if time.monotonic() - last_tick >= TICK_S:
                last_tick = time.monotonic()
                if self.role != "replay":
                    timeline = time.time()
                self._tick(slots, timeline)
            if delivery is None:
                if self.role == "analyze":
                    if self._stopping.is_set():
                        break  # fleet worker: what it has not taken stays in the transport for the others
                elif self._egress_done.is_set() and transport.pending() == 0 and (
                    self.role != "replay" or getattr(transport, "exhausted", True)
                ):
                    break
        self._tick(slots, timeline + 3600 if self.role == "replay" else time.time())

    def _analyze(self, slots: list[Slot], delivery: Delivery, now: float) -> None:
        batch = delivery.batch
        taken = len(batch)
        tree = self._tree(delivery.host)
        try:
            tree.update(batch)
        except Exception:
            batch = self._update_per_event(tree, batch)
        ctx = BatchContext(delivery.host, tree, now)
        alerts: list[Alert] = []
        for slot in slots:
            if not self._analyzer_ready(slot):
                slot.skipped += len(batch)
                continue
            try:
                found = slot.component.analyze(batch, ctx)
                slot.processed += len(batch)
            except Exception as exc:
                found = self._isolate(slot, batch, ctx, exc)
            if found:
                alerts.extend(found)
        self.counters["analyzed"] += taken
        self.counters["analyzed_batches"] += 1
        if batch:
            ts = batch[0].get("evt.ts")
            if isinstance(ts, int) and self.role != "replay":
                latency = time.time() - ts / 1e9
                self.latencies.append(latency)
                self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
                self.latency_sum += latency
        self._score(delivery, alerts, now)

    def _update_per_event(self, tree: ProcessTree, batch: Batch) -> Batch:
        """The process tree raised on the batch: apply it event by event and dead-letter the events it raises on
        (they are malformed: no analyzer sees them). Returns the rest of the batch."""
        good: Batch = []
        for ev in batch:
            try:
                tree.update([ev])
            except Exception as exc:
                self._dead_letter("proctree", ev, exc)
                continue
            good.append(ev)
        return good

    def _isolate(self, slot: Slot, batch: Batch, ctx: BatchContext, exc: Exception) -> list[Alert]:
        """The analyzer raised on a batch: run it on each event alone, so that a bad event costs only itself.

        The events it raises on alone are dead-lettered and the analyzer goes on, its error budget untouched.
        When it raises on every event, the fault is the analyzer's: it fails (restart after backoff, budget) and
        the batch counts as skipped for it. Events before the bad one may reach a stateful analyzer twice; the
        threat scorer folds an alert repeated within ``threat.fold_window_s``.
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
            self._fail(slot, exc)
            return []
        if not bad:
            log.warning("analyzer %r raised %s: %s on a batch and on none of its events alone; went on", slot.name,
                        type(exc).__name__, exc)
        slot.processed += len(batch) - len(bad)
        slot.dead_letters += len(bad)
        for event, raised in bad:
            self._dead_letter(f"analyzer:{slot.name}", event, raised)
        return found

    def _dead_letter(self, stage: str, event: dict[str, Any], exc: Exception) -> None:
        """Count a bad event, keep a short copy of the last few for ``ravn status``, log the first ones."""
        n = self.counters["dead_letters"] = self.counters["dead_letters"] + 1
        error = f"{type(exc).__name__}: {exc}"[:200]
        text = repr(event)
        self.dead_letters.append({"ts": time.time(), "stage": stage, "error": error,
                                  "event": text if len(text) <= 400 else text[:400] + "..."})
        if n <= 10 or n % 1000 == 0:
            log.warning("dead letter %d: %s raised %s on the event %s%s", n, stage, error, text[:200],
                        "" if n < 10 else " (from now on every 1000th is logged)" if n == 10 else "")

    def _tick(self, slots: list[Slot], now: float) -> None:
        host = self.hostname
        ctx = BatchContext(host, self._tree(host), now)
        alerts: list[Alert] = []
        for slot in slots:
            if not self._analyzer_ready(slot):
                continue
            try:
                alerts.extend(slot.component.tick(ctx) or [])
            except Exception as exc:
                self._fail(slot, exc)
        self._score(None, alerts, now, tick=True)

    def _analyzer_ready(self, slot: Slot) -> bool:
        if slot.quarantined:
            return False
        if slot.retry_at:
            if time.monotonic() < slot.retry_at:
                return False
            slot.retry_at = 0.0
            self._safe(slot, slot.component.close)
            try:
                slot.component = self._build(slot.spec)
                log.info("analyzer %r rebuilt", slot.name)
            except Exception as exc:
                self._fail(slot, exc)
                return False
        return True

    def _score(self, delivery: Delivery | None, alerts: list[Alert], now: float, tick: bool = False,
               fold: bool = True) -> None:
        host = delivery.host if delivery else self.hostname
        for a in alerts:
            a.host = a.host or host
        with self._threat_lock:
            out: list[Alert] = []
            updates: list[ThreatUpdate] = []
            hosts = list(self.scorers) if tick else [host]
            if tick and host not in hosts:
                hosts.append(host)
            incidents: dict[str, list[dict[str, Any]]] = {}
            for h in hosts:
                mine = [a for a in alerts if a.host == h] if tick else alerts
                if tick and not mine:
                    o, u = self._scorer(h).tick(now)
                else:
                    o, u = self._scorer(h).process(mine, now)
                out.extend(o)
                updates.extend(u)
                if tick:  # the open incidents go to the sinks once a tick, when they changed
                    changed = self._scorer(h).take_changed(now)
                    if changed is not None:
                        incidents[h] = changed
        if not fold:  # scored, and sent even when the scorer folded them (self-alerts: each one is news)
            out = [a for a in out if all(a is not b for b in alerts)] + alerts
        self.counters["alerts"] += len(alerts)
        if delivery is None and not out and not updates and not incidents:
            return
        # the sink thread needs the delivery only to ack it: do not pin the batch's events while alerts wait
        ack = Delivery(delivery.host, [], delivery.token) if delivery is not None else None
        item = SinkItem(ack, out, updates, incidents)
        if threading.get_ident() == self._sink_ident:
            self._sink_local.append(item)  # scored on the sink thread itself (a sink's self-alert): no self-wait
            return
        while True:
            try:
                self.sinkq.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._health_stop.is_set():
                    self.counters["sink_items_lost"] += 1
                    return

    def self_alert(self, rule: str, score: int, description: str, evidence: dict[str, Any]) -> None:
        """An alert about RAVN itself (memory, drops, a quarantined component), scored like any other and sent
        through the sinks each time (never folded into an earlier one)."""
        alert = Alert("ravn", rule, score, description, pid=os.getpid(), comm="ravn", tags=["ravn.self"],
                      evidence=evidence, host=self.hostname)
        self.counters["self_alerts"] += 1
        if self._wants("analysis"):
            self._score(None, [alert], time.time(), fold=False)
        else:
            log.warning("self-alert %s: %s", rule, description)

    # ================================================================================== sink thread
    def _sink_loop(self) -> None:
        assert self.transport_slot is not None
        transport: Transport = self.transport_slot.component
        last_flush = time.monotonic()
        self._sink_ident = threading.get_ident()
        while True:
            while self._sink_local:
                self._emit(self._sink_local.popleft())
            try:
                item = self.sinkq.get(timeout=0.05)
            except queue.Empty:
                if self._analysis_done.is_set():
                    break
                if time.monotonic() - last_flush > 1.0:
                    last_flush = time.monotonic()
                    for slot in self.sinks:
                        if not slot.quarantined:
                            self._safe(slot, slot.component.flush)
                for slot in self.sinks:
                    slot.heartbeat = time.time()
                continue
            self._emit(item)
            if item.delivery is not None:
                try:
                    transport.ack(item.delivery)
                    self.counters["acked"] += 1
                except Exception as exc:
                    self._fail(self.transport_slot, exc)
        while self._sink_local:
            self._emit(self._sink_local.popleft())
        for slot in self.sinks:
            if not slot.quarantined:
                self._safe(slot, slot.component.flush)

    def _emit(self, item: SinkItem) -> None:
        if item.alerts:
            self.recent_alerts.extend(item.alerts)
            self.counters["alerts_emitted"] += len(item.alerts)
            counts = self.alert_counts
            for a in item.alerts:
                key = (a.level, a.rule)
                counts[key] = counts.get(key, 0) + 1
        self.counters["threat_updates"] += len(item.updates)
        for update in item.updates:
            log.warning("threat level %s -> %s (score %.1f) on %s", update.previous_level, update.level,
                        update.score, update.host)
        for slot in self.sinks:
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
                self._fail(slot, exc)

    # ================================================================================== health thread
    def _health_loop(self) -> None:
        # With a systemd watchdog, wake often enough to feed it (every third of WatchdogSec) between checks.
        every = self.core.health_interval_s
        wake = min(every, self.notifier.watchdog_s / 3) if self.notifier.watchdog_s else every
        next_check = time.monotonic() + every
        while not self._health_stop.wait(max(0.0, min(wake, next_check - time.monotonic()))):
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + every
                try:
                    self.check_health()
                except Exception:
                    log.exception("health check failed")
            if self.notifier.watchdog_s:
                stalled = self.stalled_threads()
                if not stalled:
                    self.notifier.watchdog()
                elif stalled != self._stalled:
                    log.error("pipeline thread(s) %s stalled for over %.1fs; no longer feeding the systemd watchdog",
                              ", ".join(stalled), self.core.stall_timeout_s)
                self._stalled = stalled

    def stalled_threads(self) -> list[str]:
        """Pipeline threads that are dead or whose components' heartbeats are older than ravn.stall_timeout_s
        (a source, the transport thread, an analysis thread, the sink thread); [] while all make progress."""
        if self._stopping.is_set():
            return []
        now = time.time()
        beats: dict[str, list[Slot]] = {f"source:{s.name}": [s] for s in self.sources}
        if self.transport_slot is not None:
            beats["transport"] = [self.transport_slot]
        for i, slots in enumerate(self.analyzers):
            beats[f"analysis:{i}"] = slots
        beats["sink"] = self.sinks
        out = []
        for name, t in list(self._threads.items()):
            if name == "health":
                continue
            slots = beats.get(name, [])
            if not t.is_alive() or (slots and max(s.heartbeat for s in slots) < now - self.core.stall_timeout_s):
                out.append(name)
        return sorted(out)

    def check_health(self) -> dict[str, Health]:
        """One round: restart failed sources and dead threads, check memory and drops. Returns every health."""
        out: dict[str, Health] = {}
        for slot in self.sources:
            h = slot.health()
            out[f"source:{slot.name}"] = h
            if h.state == "failed" and not slot.quarantined and not slot.retry_at and not self._stopping.is_set():
                log.error("source %r reports failed (%s); reattaching", slot.name, h.detail)
                slot.restart_requested = True
        for kind, slots in (("transport", [self.transport_slot] if self.transport_slot else []),
                            ("analyzer", self.analyzers[0] if self.analyzers else []),
                            ("sink", self.sinks)):
            for slot in slots:
                out[f"{kind}:{slot.name}"] = slot.health()
        for slot in self.probes:
            try:
                out[f"health_probe:{slot.name}"] = slot.component.check()
            except Exception as exc:
                self._fail(slot, exc)
                out[f"health_probe:{slot.name}"] = Health("degraded", slot.last_error)
        self._restart_dead_threads()
        self._check_memory()
        self._check_drops(out)
        return out

    def _restart_dead_threads(self) -> None:
        if self._stopping.is_set():
            return
        targets: dict[str, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        for slot in self.sources:
            targets[f"source:{slot.name}"] = (self._source_loop, (slot,))
        if self._wants("sources"):
            targets["transport"] = (self._egress_loop, ())
        if self._wants("analysis"):
            for i, slots in enumerate(self.analyzers):
                targets[f"analysis:{i}"] = (self._analysis_loop, (slots,))
            targets["sink"] = (self._sink_loop, ())
        for name, (fn, args) in targets.items():
            t = self._threads.get(name)
            if t is not None and not t.is_alive() and name in self._died:
                self._died.discard(name)
                log.error("thread %s is dead; restarting it", name)
                self.counters["thread_restarts"] = self.counters.get("thread_restarts", 0) + 1
                self._spawn(name, fn, *args)

    def _check_memory(self) -> None:
        rss = anon_rss_bytes()
        now = time.monotonic()
        if not self._memory_low or rss < self._memory_low:
            self._memory_low = rss
        every = self.core.heap_trim_interval_s
        if every and rss >= self._memory_low + TRIM_GROWTH_BYTES and now - self._last_trim >= every:
            # a burst's objects are freed by now or later; glibc keeps their pages until asked (pymalloc's
            # arenas it frees itself, once empty). Asked at most every heap_trim_interval_s: a few ms each.
            trim_heap()
            self._last_trim = now
            self.counters["heap_trims"] += 1
            rss = anon_rss_bytes()
            self._memory_low = min(self._memory_low, rss)
        limit = self.core.memory_limit_mb * 1024 * 1024
        if rss <= limit:
            return
        for tree in list(self.trees.values()):
            tree.shrink(0.5)
        trim_heap()
        if now - self._last_memory_alert > 300 or not self._last_memory_alert:
            self._last_memory_alert = now
            mb = rss / 1048576
            log.error("private memory %.0f MB is over the %.0f MB limit; process trees trimmed", mb,
                      self.core.memory_limit_mb)
            self.self_alert("ravn_memory_limit", 60, f"RAVN uses {mb:.0f} MB of private memory, over its "
                            f"{self.core.memory_limit_mb:.0f} MB limit; caches trimmed",
                            {"rss_bytes": rss, "total_rss_bytes": rss_bytes(), "limit_bytes": limit})

    def _check_drops(self, healths: dict[str, Health]) -> None:
        accepted = sum(s.accepted for s in self.sources)
        dropped = sum(s.dropped for s in self.sources)
        for slot in self.sources:
            dropped += int(healths.get(f"source:{slot.name}", Health()).counters.get("drops", 0))
        base_a, base_d = self._drop_base
        self._drop_base = (accepted, dropped)
        d_acc, d_drop = accepted - base_a, dropped - base_d
        total = d_acc + d_drop
        if total <= 0 or d_drop / total <= self.core.drop_alert_ratio:
            return
        ratio = f"{100 * d_drop / total:.1f}%"
        if self.core.drop_policy == "exit":
            if not self._stopping.is_set():
                log.error("RAVN dropped %d of %d events in the last %.1fs (%s, over ravn.drop_alert_ratio %s); "
                          "exiting (ravn.drop_policy: exit)", d_drop, total, self.core.health_interval_s, ratio,
                          self.core.drop_alert_ratio)
                self.exit_code = 1
                self.request_stop(f"drops over ravn.drop_alert_ratio ({ratio})")
            return
        now = time.monotonic()
        if self._last_drop_alert and now - self._last_drop_alert < self.core.drop_alert_interval_s:
            return
        self._last_drop_alert = now
        self.counters["drop_alerts"] += 1
        self.self_alert("ravn_event_drops", 55, f"RAVN dropped {d_drop} of {total} events in the last "
                        f"{self.core.health_interval_s:.1f}s ({ratio})", {"dropped": d_drop, "total": total})

    # ================================================================================== reload, stop
    def request_reload(self) -> None:
        self._reload.set()

    def reload(self, reason: str = "SIGHUP") -> None:
        """Ask every component to reload on its own thread; lift quarantines."""
        self.host.reload(reason)
        for slot in self._all_slots():
            slot.reload_requested = True
            if slot.quarantined:
                log.info("%s %r leaves quarantine on reload", slot.kind, slot.name)
                slot.quarantined = False
                slot.errors.clear()
                slot.retry_at = time.monotonic()
        for slot in self.sinks + self.probes:
            slot.reload_requested = False
            self._safe(slot, slot.component.reload)

    def _all_slots(self) -> list[Slot]:
        out = [*self.sources, *self.sinks, *self.probes]
        for slots in self.analyzers:
            out.extend(slots)
        if self.transport_slot:
            out.append(self.transport_slot)
        return out

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason
        self._stopping.set()

    def stop(self, reason: str | None = None) -> dict[str, Any]:
        """Stop sources, drain every queue within ravn.shutdown_timeout_s, flush sinks, close everything."""
        if self._stats_final is not None:
            return self._stats_final
        reason = reason or self._stop_reason or "stop"
        self._stopping.set()
        self.notifier.stopping(f"stopping: {reason}")
        self.host.runtime_stopping(reason)
        deadline = time.monotonic() + self.core.shutdown_timeout_s

        def join(prefix: str) -> None:
            for name, t in list(self._threads.items()):
                if name.startswith(prefix):
                    t.join(max(0.0, deadline - time.monotonic()))

        self._stop_sources.set()
        join("source:")
        self._sources_done.set()
        join("transport")
        if self.transport_slot is not None:
            self._safe(self.transport_slot, lambda: self.transport_slot.component.flush(  # type: ignore[union-attr]
                max(0.0, deadline - time.monotonic())))
        self._egress_done.set()
        join("analysis:")
        self._analysis_done.set()
        join("sink")
        self._health_stop.set()
        join("health")
        alive = [n for n, t in self._threads.items() if t.is_alive()]
        if alive:
            log.error("shutdown bound of %.0fs reached with %s still running; %d batches not drained",
                      self.core.shutdown_timeout_s, ", ".join(alive), self.ingress.qsize() + self.sinkq.qsize())
        stats = self.stats()
        stats["reason"] = reason
        stats["exit_code"] = self.exit_code
        stats["undrained_batches"] = self.ingress.qsize() + self.sinkq.qsize()
        self._close_all()
        self.host.runtime_stopped(stats, self.snapshot)
        self._stats_final = stats
        self.write_status()
        return stats

    def _close_all(self) -> None:
        for slot in [*self.sinks, *(s for slots in self.analyzers for s in slots), *self.probes]:
            self._safe(slot, slot.component.close)
        if self.transport_slot is not None:
            self._safe(self.transport_slot, self.transport_slot.component.close)
        self.sinks, self.probes = [], []

    # ================================================================================== introspection
    def stats(self) -> dict[str, Any]:
        sources = {s.name: {"accepted": s.accepted, "dropped": s.dropped, "batches": s.batches,
                            "kernel_drops": int(self._counter(s, "drops"))} for s in self.sources}
        analyzers: dict[str, dict[str, Any]] = {}
        for slots in self.analyzers:  # one slot per analyzer per analysis thread: summed
            for s in slots:
                a = analyzers.setdefault(s.name, {"processed": 0, "skipped": 0, "dead_letters": 0, "restarts": 0,
                                                  "quarantined": False})
                a["processed"] += s.processed
                a["skipped"] += s.skipped
                a["dead_letters"] += s.dead_letters
                a["restarts"] += s.restarts
                a["quarantined"] = a["quarantined"] or s.quarantined
        sinks = {s.name: {"alerts": s.processed, "dropped": s.dropped, "restarts": s.restarts}
                 for s in self.sinks}
        return {
            "sources": sources,
            "accepted": sum(s.accepted for s in self.sources),
            "dropped": sum(s.dropped for s in self.sources),
            "ingress_depth": self.ingress.qsize(),
            "ingress_events": self.ingress.events(),
            "sink_depth": self.sinkq.qsize(),
            "transport_pending": self._pending(),
            **self.counters,
            "analyzers": analyzers,
            "sinks": sinks,
        }

    def _pending(self) -> int:
        if self.transport_slot is None:
            return 0
        try:
            return int(self.transport_slot.component.pending())
        except Exception:
            return -1

    @staticmethod
    def _counter(slot: Slot, name: str) -> float:
        try:
            return float(slot.component.health().counters.get(name, 0))
        except Exception:
            return 0.0

    def latency_quantiles(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        if not lat:
            return {}
        return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}

    def status(self) -> dict[str, Any]:
        """What ``ravn status`` shows: threat, recent alerts, components, counters."""
        components: dict[str, Any] = {}
        for slot in self._all_slots():
            if slot.kind == "analyzer" and slot not in (self.analyzers[0] if self.analyzers else []):
                continue
            h = slot.health()
            components[f"{slot.kind}:{slot.name}"] = {
                "state": h.state, "detail": h.detail, "counters": h.counters, "restarts": slot.restarts,
                "quarantined": slot.quarantined, "last_error": slot.last_error, "heartbeat": slot.heartbeat,
            }
        threads = {name: t.is_alive() for name, t in self._threads.items()}
        now = time.time()
        with self._threat_lock:
            threat = {h: {"level": s.level, "score": s.score, "incidents": s.open_incidents(now, 50),
                          "open_by_level": s.open_by_level(), "counters": dict(s.counters)}
                      for h, s in self.scorers.items()}
        mine = threat.get(self.hostname, {"level": "LOW", "score": 0.0, "incidents": []})
        degraded = [n for n, c in components.items() if c["state"] != "ok"]
        return {
            "pid": os.getpid(), "host": self.hostname, "role": self.role, "started_at": self.started_at,
            "updated_at": time.time(), "stopping": self._stopping.is_set(),
            "level": mine["level"], "score": mine["score"], "incidents": mine["incidents"], "hosts": threat,
            "health": "degraded" if degraded else "ok", "degraded": degraded,
            "components": components, "threads": threads, "stats": self.stats(),
            "latency_s": self.latency_quantiles(), "rss_bytes": rss_bytes(), "anon_rss_bytes": anon_rss_bytes(),
            "recent_alerts": [a.to_dict() for a in list(self.recent_alerts)[-10:]],
            "dead_letters": list(self.dead_letters),
        }

    def snapshot(self) -> RuntimeSnapshot:
        """A copy of what observers read (the HTTP endpoint's /metrics and /status); callable from any thread."""
        return RuntimeSnapshot(
            status=self.status(), latency_bounds=LATENCY_BUCKETS, latency_counts=tuple(self.latency_buckets),
            latency_sum=self.latency_sum, alert_counts=dict(self.alert_counts),
            proctrees={h: (len(t), t.evictions) for h, t in list(self.trees.items())},
            queue_capacity=self.core.queue_batches, proctree_max=self.core.proctree_max,
            memory_limit_bytes=int(self.core.memory_limit_mb * 1048576),
        )

    def status_path(self) -> str:
        return os.path.join(self.context.state_dir, "status.json")

    def write_status(self) -> None:
        """Write status.json (0600 in the 0700 state dir, never through a symlink) atomically."""
        if not self._state_dir_ok:
            return
        path = self.status_path()
        try:
            write_private_json(path, self.status())
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    # ================================================================================== main loop
    def run(self, duration: float | None = None, install_signals: bool = True) -> dict[str, Any]:
        """Start, then wait on the main thread for a signal, ``duration`` or the end of a replay; then stop."""
        if install_signals:
            self._install_signals()
        self.start()
        end = time.monotonic() + duration if duration else None
        last_status = 0.0
        while not self._stopping.wait(0.1):
            if self._reload.is_set():
                self._reload.clear()
                self.reload("SIGHUP")
            if end is not None and time.monotonic() >= end:
                self.request_stop("duration")
            if self.role == "replay" and self._replay_finished():
                self.request_stop("end of replay")
            if time.monotonic() - last_status >= 1.0:
                last_status = time.monotonic()
                self.write_status()
        return self.stop()

    def _replay_finished(self) -> bool:
        t = self.transport_slot.component if self.transport_slot else None
        return bool(getattr(t, "exhausted", False)) and all(
            not th.is_alive() for n, th in self._threads.items() if n.startswith("analysis:"))

    def _install_signals(self) -> None:
        def on_stop(signum: int, frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                os.write(2, b"ravn: second signal, exiting now\n")
                os._exit(1)
            self.request_stop(signal.Signals(signum).name)

        def on_hup(signum: int, frame: Any) -> None:
            self.request_reload()

        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_hup)


__all__ = ["ROLES", "HealthProbe", "Runtime", "Sink", "Slot"]
