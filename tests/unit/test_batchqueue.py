from __future__ import annotations

import threading
import time

from ravn_core.batchqueue import BatchQueue


def test_bounded_in_batches_and_in_events() -> None:
    q: BatchQueue[str] = BatchQueue(max_batches=3, max_events=100)
    assert q.put("a", 60, timeout=0) and q.put("b", 40, timeout=0)
    assert not q.put("c", 1, timeout=0.01)  # 101 events
    assert q.events() == 100 and q.qsize() == 2
    assert q.get(0) == "a"
    assert q.put("c", 1, timeout=0) and q.put("d", 1, timeout=0)
    assert not q.put("e", 1, timeout=0)  # 3 batches
    assert [q.get(0), q.get(0), q.get(0), q.get(0.01)] == ["b", "c", "d", None]


def test_an_oversized_batch_goes_into_an_empty_queue() -> None:
    q: BatchQueue[str] = BatchQueue(max_batches=3, max_events=10)
    assert q.put("huge", 1000, timeout=0)
    assert not q.put("x", 1, timeout=0)
    assert q.get(0) == "huge" and q.events() == 0


def test_put_waits_for_room() -> None:
    q: BatchQueue[int] = BatchQueue(max_batches=1, max_events=10)
    q.put(1, 5)
    threading.Timer(0.1, lambda: q.get(0)).start()
    t0 = time.monotonic()
    assert q.put(2, 5, timeout=2)
    assert 0.05 < time.monotonic() - t0 < 1.5


def test_each_put_wakes_one_waiting_consumer_and_none_is_left_behind() -> None:
    q: BatchQueue[int] = BatchQueue(max_batches=10, max_events=100)
    got: list[int | None] = []
    consumers = [threading.Thread(target=lambda: got.append(q.get(5))) for _ in range(3)]
    for t in consumers:
        t.start()
    time.sleep(0.1)  # all three wait
    t0 = time.monotonic()
    for i in range(3):
        q.put(i, 1)
    for t in consumers:
        t.join(5)
    assert sorted(x for x in got if x is not None) == [0, 1, 2] and time.monotonic() - t0 < 2


def test_a_get_lets_every_waiting_producer_recheck_for_room() -> None:
    q: BatchQueue[int] = BatchQueue(max_batches=10, max_events=10)
    q.put(0, 10)
    results: list[bool] = []
    producers = [threading.Thread(target=lambda: results.append(q.put(1, 3, timeout=5))) for _ in range(3)]
    for t in producers:
        t.start()
    time.sleep(0.1)
    assert q.get(0) == 0  # room for all three small batches at once
    for t in producers:
        t.join(5)
    assert results == [True, True, True] and q.events() == 9
