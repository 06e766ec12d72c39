"""The analysis thread's hold: events of separate rings come out in evt.ts order, deliveries acked when done."""

from __future__ import annotations

from typing import Any

from ravn_core.components import Delivery
from ravn_core.runtime.reorder import FORCE, Reorder

MS = 1_000_000
HOLD = 0.05  # s
T0 = 1_000_000 * 1_000_000_000  # an evt.ts (ns)


def ev(kind: str, ts: Any) -> dict[str, Any]:
    return {"evt.type": kind, "evt.ts": ts}


def kinds(batch: list[dict[str, Any]]) -> list[str]:
    return [e["evt.type"] for e in batch]


def test_a_chmod_delivered_after_the_exec_it_preceded_is_analysed_first() -> None:
    r = Reorder(HOLD)
    security = Delivery("h", [ev("fork", T0 + 1 * MS), ev("exec", T0 + 3 * MS)], "s")
    file = Delivery("h", [ev("chmod", T0 + 2 * MS)], "f")  # its ring was read 10 ms later
    r.add(security, arrived=0.0)
    assert r.release(T0 + 4 * MS, now=0.004) == []  # nothing is 50 ms old yet
    r.add(file, arrived=0.012)
    # the fork is due at T0 + 51 ms, released with the events due by then a step (50 / 3 ms) later
    assert abs(r.due_in(T0 + 12 * MS, now=0.012) - (1 + 50 + 50 / 3 - 12) / 1000) < 1e-9
    assert r.release(T0 + 67 * MS, now=0.067) == []
    (out,) = r.release(T0 + 68 * MS, now=0.068)
    assert (out.host, kinds(out.batch), [d.token for d in out.acks]) == ("h", ["fork", "chmod", "exec"], ["s", "f"])
    assert r.held == {} and r.due_in(T0, 0.0) == float("inf")


def test_only_events_past_the_hold_go_out_and_a_delivery_is_acked_with_its_last_event() -> None:
    r = Reorder(HOLD)
    r.add(Delivery("h", [ev("a", T0), ev("c", T0 + 40 * MS)], "1"), arrived=0.0)
    r.add(Delivery("h", [ev("b", T0 + 20 * MS)], "2"), arrived=0.02)
    (out,) = r.release(T0 + 70 * MS, now=0.07)  # cutoff T0 + 20 ms
    assert kinds(out.batch) == ["a", "b"] and [d.token for d in out.acks] == ["2"]
    assert r.release(T0 + 100 * MS, now=0.1) == []  # c is due at T0 + 90 ms, released a step later
    (out,) = r.release(T0 + 107 * MS, now=0.107)
    assert kinds(out.batch) == ["c"] and [d.token for d in out.acks] == ["1"] and r.held == {}


def test_a_batch_out_of_order_inside_is_sorted_and_acked_only_with_its_newest_event() -> None:
    """A ring's records come in submit order while evt.ts is often taken at the syscall's entry: a batch's last
    event need not be its newest. Nothing of it may be left behind when it is acked."""
    r = Reorder(HOLD)
    r.add(Delivery("h", [ev("a", T0), ev("c", T0 + 40 * MS), ev("b", T0 + 20 * MS)], "1"), arrived=0.0)
    (out,) = r.release(T0 + 70 * MS, now=0.07)  # cutoff T0 + 20 ms
    assert kinds(out.batch) == ["a", "b"] and out.acks == []
    (out,) = r.release(T0 + 107 * MS, now=0.107)
    assert kinds(out.batch) == ["c"] and [d.token for d in out.acks] == ["1"] and r.held == {}


def test_hosts_are_held_apart() -> None:
    r = Reorder(HOLD)
    r.add(Delivery("a", [ev("x", T0)], 1), arrived=0.0)
    r.add(Delivery("b", [ev("y", T0 + 30 * MS)], 2), arrived=0.0)
    (out,) = r.release(T0 + 70 * MS, now=0.07)
    assert (out.host, kinds(out.batch)) == ("a", ["x"]) and list(r.held) == ["b"]


def test_events_stamped_ahead_of_our_clock_are_released_after_the_force_limit() -> None:
    """A fleet member whose clock is an hour ahead, or a corrupt evt.ts: held FORCE x hold at most."""
    r = Reorder(HOLD)
    r.add(Delivery("far", [ev("x", T0 + 3600 * 10**9)], 1), arrived=10.0)
    assert r.release(T0, now=10.0 + FORCE * HOLD - 0.001) == []
    assert abs(r.due_in(T0, now=10.0) - FORCE * HOLD) < 1e-9
    (out,) = r.release(T0, now=10.0 + FORCE * HOLD + 0.001)
    assert kinds(out.batch) == ["x"] and r.held == {}


def test_bad_timestamps_sort_first_and_empty_deliveries_are_acked() -> None:
    r = Reorder(HOLD)
    r.add(Delivery("h", [ev("late", T0 + 1), ev("bad", "yesterday")], 1), arrived=0.0)
    r.add(Delivery("h", [ev("none", None), ev("early", T0)], 2), arrived=0.0)
    r.add(Delivery("h", [], 3), arrived=0.0)
    (out,) = r.release(T0 + 60 * MS, now=0.06)
    assert kinds(out.batch)[-2:] == ["early", "late"] and sorted(kinds(out.batch)[:2]) == ["bad", "none"]
    assert sorted(d.token for d in out.acks) == [1, 2, 3]


def test_everything_is_released_when_the_thread_stops() -> None:
    r = Reorder(HOLD)
    r.add(Delivery("h", [ev("b", T0 + 5), ev("c", T0 + 9)], 1), arrived=0.0)
    r.add(Delivery("h", [ev("a", T0)], 2), arrived=0.0)
    (out,) = r.release(T0, now=0.0, everything=True)
    assert kinds(out.batch) == ["a", "b", "c"] and len(out.acks) == 2 and r.held == {}
