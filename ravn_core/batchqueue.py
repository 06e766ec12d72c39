"""A FIFO of batches bounded both in batches and in events.

A queue bounded only in batches holds as much memory as its biggest batches allow: a burst of full 16K-event
batches behind a slow analyzer can pin gigabytes. Bounding the events too caps the memory a stage can hold
(roughly 1 KB per event dict). A batch larger than the event bound is still accepted into an empty queue, so
nothing is ever refused for its size alone.

Producers wait on one condition (room), consumers on another (items), both over one lock, and each ``put`` or
``get`` wakes at most one thread of the other side, and only when one waits: a put onto a queue whose consumer is
busy wakes no one.
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
        lock = threading.Lock()
        self._has_items = threading.Condition(lock)
        self._has_room = threading.Condition(lock)
        self._getters = 0  # threads waiting in get (under the lock)
        self._putters = 0  # threads waiting in put

    def _room(self, n: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_batches and self._events + n <= self.max_events

    def put(self, item: T, size: int, timeout: float | None = None) -> bool:
        """Append ``item`` holding ``size`` events; False when there was no room within ``timeout`` seconds."""
        with self._has_room:
            if not self._room(size):
                deadline = None if timeout is None else time.monotonic() + timeout
                self._putters += 1
                try:
                    while not self._room(size):
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._has_room.wait(remaining)
                finally:
                    self._putters -= 1
            self._items.append((item, size))
            self._events += size
            if self._getters:
                self._has_items.notify()
            return True

    def get(self, timeout: float) -> T | None:
        """The oldest item, or None after ``timeout`` seconds."""
        with self._has_items:
            if not self._items:
                deadline = time.monotonic() + timeout
                self._getters += 1
                try:
                    while not self._items:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return None
                        self._has_items.wait(remaining)
                finally:
                    self._getters -= 1
            item, size = self._items.popleft()
            self._events -= size
            if self._putters:
                self._has_room.notify_all()  # room for one big batch may be room for several small ones
            return item

    def qsize(self) -> int:
        """Batches held."""
        return len(self._items)

    def events(self) -> int:
        """Events held."""
        return self._events
