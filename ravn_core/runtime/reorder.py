"""Events of separate rings put back in time order before analysis.

Each probe has its own ring and reads it at most once per ``batch_ms``, so a script's chmod (file probe) can reach
the analysis thread after the exec (security probe) that followed it. Sequence rules need the order in which things
happened. The analysis thread therefore holds what it takes for ``reorder_ms`` of event time and releases, per host,
the events at least that old, sorted by ``evt.ts``: events that arrive within ``reorder_ms`` of happening are analysed
in the order they happened, later ones as they come. A delivery is acked once all of its events went out.

Releases come in steps of a third of ``reorder_ms`` (an event waits between ``reorder_ms`` and 4/3 of it): releasing
whatever became due at every wakeup made an analyze call per millisecond of a storm, each with its fixed cost.

A host whose clock is ahead of ours (a fleet member) or an event stamped in the future would be held for ever: what
has been held ``FORCE`` times ``reorder_ms`` since it arrived is released anyway. Per event there is one pass over
each batch's timestamps when it is added (its newest decides when it is acked; a ring's records are in submit order
and their evt.ts is often the syscall's entry, so the last is not always the newest) and the sort's key when held
events are out of order.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from ravn_core.components import Delivery
from ravn_core.events import Batch

#: events held this many times reorder_ms after they arrived are released whatever their evt.ts says
FORCE = 4
#: a host's events are released when its oldest is due by this share of reorder_ms (one analyze call per step)
STEP = 1 / 3


def event_ts(ev: dict[str, Any]) -> int:
    """The sort key: evt.ts, 0 when missing or not an int (such an event goes out first; the process tree or an
    analyzer dead-letters it if it is malformed)."""
    ts = ev.get("evt.ts")
    return ts if type(ts) is int else 0


@dataclass(eq=False)
class Held:
    """One host's held events and the deliveries they came in (with each one's newest evt.ts and arrival)."""

    events: Batch = field(default_factory=list)
    deliveries: list[tuple[Delivery, int, float]] = field(default_factory=list)
    oldest_ts: float = math.inf  # smallest evt.ts held
    last_ts: int = 0  # evt.ts of the last event held
    in_order: bool = True


@dataclass(eq=False)
class Release:
    """Events of one host to analyse now, in evt.ts order, and the deliveries this completes (to ack)."""

    host: str
    batch: Batch
    acks: list[Delivery]


class Reorder:
    """The analysis thread's hold; one per analysis thread (not thread-safe)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_ns = int(hold_s * 1e9)
        self.step_ns = int(hold_s * STEP * 1e9)
        self.force_s = FORCE * hold_s
        self.held: dict[str, Held] = {}

    def add(self, delivery: Delivery, arrived: float) -> None:
        batch = delivery.batch
        h = self.held.get(delivery.host)
        if h is None:
            h = self.held[delivery.host] = Held()
        newest = 0
        if batch:
            # a ring's records are in submit order, their evt.ts is often the syscall's entry: not sorted
            ts = [event_ts(e) for e in batch]
            newest = max(ts)
            if h.in_order and (ts[0] < h.last_ts or not all(map(operator.le, ts, ts[1:]))):
                h.in_order = False
            h.oldest_ts = min(h.oldest_ts, min(ts))
            h.last_ts = ts[-1] if h.in_order else max(h.last_ts, newest)
            h.events.extend(batch)
        h.deliveries.append((delivery, newest, arrived))

    def due_in(self, now_ns: int, now: float) -> float:
        """Seconds until ``release`` has something to give (0 when it has now, inf when nothing is held)."""
        due = math.inf
        for h in self.held.values():
            due = min(due, (h.oldest_ts + self.hold_ns + self.step_ns - now_ns) / 1e9,
                      h.deliveries[0][2] + self.force_s - now)
        return max(due, 0.0)

    def release(self, now_ns: int, now: float, everything: bool = False) -> list[Release]:
        """What is due at wall time ``now_ns`` (evt.ts clock) and monotonic ``now``; ``everything``: all that is
        held (the thread is stopping)."""
        out: list[Release] = []
        for host, h in list(self.held.items()):
            if everything or now - h.deliveries[0][2] >= self.force_s:
                cutoff = math.inf
            elif now_ns - self.hold_ns - self.step_ns >= h.oldest_ts:
                cutoff = now_ns - self.hold_ns
            else:
                continue
            events = h.events
            if not h.in_order:
                events.sort(key=event_ts)
                h.in_order = True
            if cutoff == math.inf:
                batch, h.events = events, []
            else:
                i = bisect.bisect_right(events, cutoff, key=event_ts)
                batch, h.events = events[:i], events[i:]
            acks = [d for d, newest, _ in h.deliveries if newest <= cutoff]
            if len(acks) == len(h.deliveries):
                h.deliveries = []
            else:
                h.deliveries = [x for x in h.deliveries if x[1] > cutoff]
            # a delivery is kept while its newest event is held: no delivery left, no event left
            if not h.deliveries:
                del self.held[host]
            else:
                h.oldest_ts = event_ts(h.events[0]) if h.events else math.inf
            if batch or acks:
                out.append(Release(host, batch, acks))
        return out
