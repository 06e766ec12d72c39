"""A FIFO of batches bounded both in batches and in events.

A queue bounded only in batches holds as much memory as its biggest batches allow: a burst of full 16K-event
batches behind a slow analyzer can pin gigabytes. Bounding the events too caps the memory a stage can hold
(roughly 1 KB per event dict). A batch larger than the event bound is still accepted into an empty queue, so
nothing is ever refused for its size alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchQueue(Generic[T]):
    """Thread-safe; ``put`` waits at most ``timeout`` for room and says whether the item went in."""

    def __init__(self, max_batches: int, max_events: int) -> None:
        self.max_batches = max_batches
        self.max_events = max_events
        self._items: deque[tuple[T, int]] = deque()
        self._events = 0
        self._cond = threading.Condition()

    def _room(self, n: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_batches and self._events + n <= self.max_events

    def put(self, item: T, size: int, timeout: float | None = None) -> bool:
        """Append ``item`` holding ``size`` events; False when there was no room within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._room(size):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._items.append((item, size))
            self._events += size
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> T | None:
        """The oldest item, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item, size = self._items.popleft()
            self._events -= size
            self._cond.notify_all()
            return item

    def qsize(self) -> int:
        """Batches held."""
        return len(self._items)

    def events(self) -> int:
        """Events held."""
        return self._events
