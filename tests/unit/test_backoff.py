"""ravn_core.backoff: the delays the supervisor, the sinks and the Redis transport wait between attempts."""

from __future__ import annotations

from ravn_core.backoff import Backoff, backoff_delay


def test_delays_double_from_the_first_and_stop_at_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 3.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(10_000, 0.5, 30.0) == 30.0  # no overflow after many failures


def test_jitter_stays_between_half_and_the_whole_delay() -> None:
    got = [backoff_delay(3, 1.0, 10.0, jitter=True) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in got) and len(set(got)) > 100


def test_backoff_counts_failures_in_a_row_and_a_success_resets_it() -> None:
    b = Backoff(0.05, 1.0)
    assert b.ready() and b.remaining() == 0.0
    assert [b.failed() for _ in range(3)] == [0.05, 0.1, 0.2]
    assert b.failures == 3 and not b.ready() and 0.0 < b.remaining() <= 0.2
    b.succeeded()
    assert b.failures == 0 and b.ready() and b.failed() == 0.05
