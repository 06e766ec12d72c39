"""Exponential backoff: the one helper behind every retry delay in RAVN (a component's restart in the runtime's
supervisor, a sink's retries in ``ravn_sinks``, the Redis transport's and sink's reconnects).

The delay after the n-th failure in a row (n = 1, 2, ...) is ``min(max_s, initial_s * 2**(n-1))``. With ``jitter``
it is multiplied by U(0.5, 1), so that clients that failed together (agents losing one Redis server) do not all
come back at the same moment.
"""

from __future__ import annotations

import random
import time


def backoff_delay(failures: int, initial_s: float, max_s: float, jitter: bool = False) -> float:
    """The delay (seconds) after ``failures`` (>= 1) failures in a row."""
    delay = min(max_s, initial_s * 2.0 ** min(max(failures - 1, 0), 60))
    return delay * random.uniform(0.5, 1.0) if jitter else delay


class Backoff:
    """Backoff with state, for a loop that retries until it succeeds.

    :ivar failures: failures in a row since the last success.
    :ivar next_try: monotonic time before which the next attempt should not be made.
    """

    def __init__(self, initial_s: float, max_s: float, jitter: bool = False) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.failures = 0
        self.next_try = 0.0

    def failed(self) -> float:
        """Record a failure; returns the delay until the next attempt."""
        self.failures += 1
        delay = backoff_delay(self.failures, self.initial_s, self.max_s, self.jitter)
        self.next_try = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.next_try

    def remaining(self) -> float:
        return max(0.0, self.next_try - time.monotonic())
