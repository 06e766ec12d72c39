"""The runtime's phases: events set once each, in this order, by ``Runtime.stop`` (``stopping`` also by a signal,
the end of a replay, ``--duration`` or the drop policy)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Phases:
    """:ivar stopping: a stop was asked; a fleet worker stops taking work, sources hand over with a longer wait.
    :ivar sources_stop: source threads drain their source and detach.
    :ivar sources_done: every source thread has ended: the transport thread ends once the ingress queue is empty.
    :ivar egress_done: the transport thread has ended and the transport is flushed: analysis threads end once the
        transport has nothing pending.
    :ivar analysis_done: analysis threads have ended: the sink thread ends once the sink queue is empty.
    :ivar final: the shutdown bound is spent or every stage has ended: retries give up (counted lost).
    """

    stopping: threading.Event = field(default_factory=threading.Event)
    sources_stop: threading.Event = field(default_factory=threading.Event)
    sources_done: threading.Event = field(default_factory=threading.Event)
    egress_done: threading.Event = field(default_factory=threading.Event)
    analysis_done: threading.Event = field(default_factory=threading.Event)
    final: threading.Event = field(default_factory=threading.Event)
