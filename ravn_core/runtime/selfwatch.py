"""Self-watch, on the health thread: RAVN's own memory and event drops.

- Memory: private memory 32 MB over the lowest seen asks glibc for freed heap (at most every
  ``ravn.heap_trim_interval_s``); over ``ravn.memory_limit_mb`` the process trees are halved, the heap trimmed,
  and a self-alert goes out (at most every 5 minutes).
- Heap at start (``settle_heap``; the CLI daemon only: ``ravn --config``, ``ravn agent``, ``ravn analyze``): what
  start-up built is moved out of the cyclic collector's sight and young objects are collected less often.
- Drops: a share of events dropped in one health interval over ``ravn.drop_alert_ratio`` raises a self-alert at
  most every ``ravn.drop_alert_interval_s`` or, with ``ravn.drop_policy: exit``, stops RAVN with exit code 1.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from ravn_core.builtin.health import anon_rss_bytes, rss_bytes, trim_heap
from ravn_core.components import Health
from ravn_core.config import CoreConfig
from ravn_core.runtime.hosts import Hosts
from ravn_core.runtime.source import SourceStage

log = logging.getLogger("ravn.runtime")

#: the cyclic collector's thresholds once the daemon runs: a young collection every 50,000 net allocations (the
#: default, 700, ran one about every 20 events of a storm), the older generations as in CPython's defaults x 2-10
GC_THRESHOLD = (50_000, 20, 100)
TRIM_GROWTH_BYTES = 32 << 20  # private memory this far above its lowest asks for a heap trim (heap_trim_interval_s)
MEMORY_ALERT_EVERY_S = 300.0


def settle_heap() -> None:
    """Once the daemon has started: collect what start-up left, freeze the survivors (modules, compiled rules, the
    model, the seeded process trees: gc.freeze, so full collections no longer walk them) and raise the collector's
    thresholds (GC_THRESHOLD). Events are dicts and lists without cycles, freed by reference counting; with the
    defaults the collector still took about 10% of the daemon's CPU in an exec storm (bench/e2e.py), half of it in
    full collections of ~50 ms each over everything start-up had built."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class SelfWatch:
    """Memory and drop checks. One writer of its counters: the health thread."""

    def __init__(self, core: CoreConfig, hosts: Hosts, sources: SourceStage,
                 alert: Callable[[str, int, str, dict[str, Any]], None], stop: Callable[[str], None],
                 stopping: Callable[[], bool]) -> None:
        self.core = core
        self.hosts = hosts
        self.sources = sources
        self.alert = alert
        self.stop = stop
        self.stopping = stopping
        self.heap_trims = 0
        self.drop_alerts = 0
        self.exit_code = 0
        self._memory_low = 0  # lowest private memory seen (bytes), the reference of the heap trim
        self._last_trim = 0.0
        self._last_memory_alert = 0.0
        self._last_drop_alert = 0.0
        self._drop_base = (0, 0)

    def check_memory(self) -> None:
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
            self.heap_trims += 1
            rss = anon_rss_bytes()
            self._memory_low = min(self._memory_low, rss)
        limit = self.core.memory_limit_mb * 1024 * 1024
        if rss <= limit:
            return
        self.hosts.shrink_trees(0.5)
        trim_heap()
        if now - self._last_memory_alert > MEMORY_ALERT_EVERY_S or not self._last_memory_alert:
            self._last_memory_alert = now
            mb = rss / 1048576
            log.error("private memory %.0f MB is over the %.0f MB limit; process trees trimmed", mb,
                      self.core.memory_limit_mb)
            self.alert("ravn_memory_limit", 60, f"RAVN uses {mb:.0f} MB of private memory, over its "
                       f"{self.core.memory_limit_mb:.0f} MB limit; caches trimmed",
                       {"rss_bytes": rss, "total_rss_bytes": rss_bytes(), "limit_bytes": limit})

    def check_drops(self, healths: dict[str, Health]) -> None:
        slots = self.sources.slots
        accepted = self.sources.accepted()
        dropped = self.sources.dropped()
        for slot in slots:
            dropped += int(healths.get(f"source:{slot.name}", Health()).counters.get("drops", 0))
        base_a, base_d = self._drop_base
        self._drop_base = (accepted, dropped)
        d_acc, d_drop = accepted - base_a, dropped - base_d
        total = d_acc + d_drop
        if total <= 0 or d_drop / total <= self.core.drop_alert_ratio:
            return
        ratio = f"{100 * d_drop / total:.1f}%"
        if self.core.drop_policy == "exit":
            if not self.stopping():
                log.error("RAVN dropped %d of %d events in the last %.1fs (%s, over ravn.drop_alert_ratio %s); "
                          "exiting (ravn.drop_policy: exit)", d_drop, total, self.core.health_interval_s, ratio,
                          self.core.drop_alert_ratio)
                self.exit_code = 1
                self.stop(f"drops over ravn.drop_alert_ratio ({ratio})")
            return
        now = time.monotonic()
        if self._last_drop_alert and now - self._last_drop_alert < self.core.drop_alert_interval_s:
            return
        self._last_drop_alert = now
        self.drop_alerts += 1
        self.alert("ravn_event_drops", 55, f"RAVN dropped {d_drop} of {total} events in the last "
                   f"{self.core.health_interval_s:.1f}s ({ratio})", {"dropped": d_drop, "total": total})
