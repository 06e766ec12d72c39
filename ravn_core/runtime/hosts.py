"""Per-host state: a process tree and an incident tracker (the host's threat level) per host, bounded.

A fleet worker sees many hosts; at most ``ravn.max_hosts`` are kept. Past that the least recently seen tenth is
forgotten (never this host's own), counted in ``evicted``: one sort per tenth of the bound, so a flood of new host
names costs a bounded amount per host. Trees are created and evicted under ``lock``; the trackers are read and
written only under it (the analysis threads score, the health thread reads status).

Each tree has its own writer lock (``tree_lock``): with ``ravn.analysis_threads`` > 1 two analysis threads may
update one host's tree at once, and the health thread shrinks trees under memory pressure. Readers (analyzers'
``get``/``ancestors``, the trackers' lineage) take no lock: each read is one dict lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ravn_core.components import Alert, ThreatUpdate
from ravn_core.config import CoreConfig
from ravn_core.proctree import ProcessTree
from ravn_core.threat import IncidentTracker

log = logging.getLogger("ravn.runtime")


class Hosts:
    """Process trees and incident trackers by host name."""

    def __init__(self, core: CoreConfig, hostname: str) -> None:
        self.core = core
        self.hostname = hostname
        self.lock = threading.Lock()
        self.trees: dict[str, ProcessTree] = {}
        self._tree_locks: dict[str, threading.Lock] = {}  # per host: held while its tree is written
        self.trackers: dict[str, IncidentTracker] = {}  # per host: incidents and the host's threat level
        self._seen: dict[str, float] = {}  # host -> monotonic time of its last batch
        self.evicted = 0  # hosts forgotten over max_hosts (written under lock)

    def tree(self, host: str) -> ProcessTree:
        """The host's process tree (made on its first batch); marks the host as seen now."""
        self._seen[host] = time.monotonic()
        tree = self.trees.get(host)
        if tree is None:
            with self.lock:
                tree = self._tree_locked(host)
        return tree

    def _tree_locked(self, host: str) -> ProcessTree:
        tree = self.trees.get(host)
        if tree is None:
            tree = self.trees[host] = ProcessTree(self.core.proctree_max)
            self._tree_locks[host] = threading.Lock()
            if len(self.trees) > self.core.max_hosts:
                self._evict()
        return tree

    def _evict(self) -> None:
        seen = self._seen
        others = sorted((h for h in self.trees if h != self.hostname), key=lambda h: seen.get(h, 0.0))
        gone = others[: max(1, len(self.trees) - self.core.max_hosts + self.core.max_hosts // 10)]
        for h in gone:
            self.trees.pop(h, None)
            self._tree_locks.pop(h, None)
            self.trackers.pop(h, None)
            seen.pop(h, None)
        self.evicted += len(gone)
        log.warning("%d hosts over ravn.max_hosts (%d): forgot the %d least recently seen (process trees and "
                    "threat levels)", len(self.trees) + len(gone), self.core.max_hosts, len(gone))

    def tree_lock(self, host: str) -> threading.Lock:
        """The lock to hold while writing ``host``'s tree (after ``tree(host)``; a lock of its own if the host
        was evicted since, so a writer never fails)."""
        lock = self._tree_locks.get(host)
        return lock if lock is not None else threading.Lock()

    def _tracker(self, host: str) -> IncidentTracker:
        tracker = self.trackers.get(host)
        if tracker is None:
            tracker = self.trackers[host] = IncidentTracker(host, self.core.threat, self._tree_locked(host))
        return tracker

    def process(self, host: str, alerts: list[Alert], now: float) -> tuple[list[Alert], list[ThreatUpdate]]:
        """Join, fold and score one host's alerts (IncidentTracker.process)."""
        with self.lock:
            return self._tracker(host).process(alerts, now)

    def tick(self, alerts: list[Alert], now: float
             ) -> tuple[list[Alert], list[ThreatUpdate], dict[str, list[dict[str, Any]]]]:
        """About once a second: every host's tracker ticks, or processes the alerts ``tick()`` raised for it.
        Also returns, per host, its open incidents when they changed since the last tick."""
        out: list[Alert] = []
        updates: list[ThreatUpdate] = []
        incidents: dict[str, list[dict[str, Any]]] = {}
        with self.lock:
            hosts = list(self.trackers)
            if self.hostname not in self.trackers:
                hosts.append(self.hostname)
            for h in hosts:
                mine = [a for a in alerts if a.host == h]
                if not mine and h != self.hostname and h not in self.trackers:
                    continue  # evicted by a host made earlier in this loop
                tracker = self._tracker(h)
                o, u = tracker.process(mine, now) if mine else tracker.tick(now)
                out.extend(o)
                updates.extend(u)
                changed = tracker.take_changed(now)  # the open incidents go to the sinks once a tick, when changed
                if changed is not None:
                    incidents[h] = changed
        return out, updates, incidents

    def shrink_trees(self, fraction: float) -> None:
        """Memory pressure: drop the least recently updated ``fraction`` of every tree."""
        for host, tree in list(self.trees.items()):
            with self.tree_lock(host):
                tree.shrink(fraction)

    def threat(self, now: float) -> dict[str, dict[str, Any]]:
        """Each host's level, score, open incidents and tracker counters (for status)."""
        with self.lock:
            return {h: {"level": t.level, "score": t.score, "incidents": t.open_incidents(now, 50),
                        "open_by_level": t.open_by_level(), "counters": dict(t.counters)}
                    for h, t in self.trackers.items()}

    def proctrees(self) -> dict[str, tuple[int, int]]:
        """host -> (processes held, evictions), for /metrics."""
        return {h: (len(t), t.evictions) for h, t in list(self.trees.items())}
