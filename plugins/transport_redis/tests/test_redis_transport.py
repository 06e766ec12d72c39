"""Round trips, sharing, discovery, dead-lettering and dedup against a real redis-server."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
import redis
from ravn_transport_redis import codec
from redis_helpers import Made, all_seqs, batches, drain, event

from ravn_core.events import SCHEMA_VERSION
from ravn_core.testing import RedisServer, wait_for

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_round_trip(redis_server: RedisServer, make_transport: Made, mode: str) -> None:
    agent = make_transport(redis_server, mode=mode)
    worker = make_transport(redis_server, host="w", mode=mode)
    for b in batches("h1", 0, 20, 50):
        agent.publish("h1", b)
    agent.flush(5)
    assert agent.pending() == 0
    got = drain([worker], 1000)
    assert all_seqs(got) == list(range(1000))
    assert worker.consume(0.1) is None  # nothing left, nothing redelivered
    h = worker.health().counters
    assert (h["consumed"], h["acked"], h["consumed_events"]) == (20, 20, 1000)
    assert agent.health().counters["published"] == 20 and agent.health().state == "ok"
    r = redis.Redis(port=redis_server.port)
    if mode == "stream":
        key = "ravn:events:{h1}"
        assert r.smembers("ravn:streams") == {key.encode()}
        assert r.xlen(key) == 20  # one entry per batch
        assert r.xpending(key, "ravn-analyzers")["pending"] == 0
    else:
        assert r.llen("ravn:events:raw") == 0
        assert r.llen(f"ravn:processing:{worker.consumer_name}") == 0


def test_event_fields_arrive_unchanged(redis_server: RedisServer, make_transport: Made) -> None:
    agent, worker = make_transport(redis_server), make_transport(redis_server, host="w")
    batch = [event(1), {"evt.type": "syscall_summary", "evt.source": "ebpf_syscall", "syscall.counts": {"read": 2},
                        "syscall.seq": [0, 1], "proc.comm": "zsh\u00e9", "x": None, "neg": -5, "big": 2**63 - 1}]
    agent.publish("h1", batch)
    agent.flush(5)
    d = worker.consume(5)
    assert d is not None and d.host == "h1" and d.batch == batch
    worker.ack(d)


def test_several_agents_two_workers_share_the_work(redis_server: RedisServer, make_transport: Made) -> None:
    agents = [make_transport(redis_server, host=f"h{i}") for i in range(3)]
    workers = [make_transport(redis_server, host=f"w{i}", read_count=2) for i in range(2)]
    for i, a in enumerate(agents):
        for b in batches(f"h{i}", i * 100_000, 30, 20):
            a.publish(f"h{i}", b)
    for a in agents:
        a.flush(5)
    got = drain(workers, 3 * 600, timeout_s=15)
    want = sorted(i * 100_000 + s for i in range(3) for s in range(600))
    assert all_seqs(got) == want  # every event exactly once
    assert got[0] and got[1]  # both workers took a share
    r = redis.Redis(port=redis_server.port)
    assert len(r.smembers("ravn:streams")) == 3  # workers found every host's stream through the registry
    for i in range(3):
        assert r.xpending(f"ravn:events:{{h{i}}}", "ravn-analyzers")["pending"] == 0


def test_stream_per_source_and_fleet(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server, stream_per="source")
    worker = make_transport(redis_server, host="w", stream_per="source")
    agent.publish("h1", [event(0, source="ebpf_file"), event(1, source="ebpf_network"), event(2, source="ebpf_file")])
    agent.flush(5)
    assert all_seqs(drain([worker], 3)) == [0, 1, 2]
    r = redis.Redis(port=redis_server.port)
    assert r.smembers("ravn:streams") == {b"ravn:events:{h1}:ebpf_file", b"ravn:events:{h1}:ebpf_network"}
    fleet_a = make_transport(redis_server, stream_per="fleet", prefix="f:")
    fleet_w = make_transport(redis_server, host="w", stream_per="fleet", prefix="f:")
    fleet_a.publish("h1", [event(7)])
    fleet_a.publish("h2", [event(8)])
    fleet_a.flush(5)
    assert all_seqs(drain([fleet_w], 2)) == [7, 8]
    assert r.xlen("f:events") == 2


def test_maxlen_bounds_the_stream(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server, maxlen=100)
    for b in batches("h1", 0, 600, 1):
        agent.publish("h1", b)
    agent.flush(5)
    n = redis.Redis(port=redis_server.port).xlen("ravn:events:{h1}")
    assert 100 <= n < 300  # approximate trimming (whole macro nodes)


def test_bad_entries_are_dead_lettered_and_the_worker_goes_on(redis_server: RedisServer, make_transport: Made) -> None:
    agent, worker = make_transport(redis_server), make_transport(redis_server, host="w")
    agent.publish("h1", [event(0)])
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    key = "ravn:events:{h1}"
    good = codec.stream_fields("h1", "h1:x:1", [event(1), event(2)], 0)
    truncated = {**good, b"b": b"h1:x:2", b"d": good[b"d"][:20]}
    future = {**good, b"b": b"h1:x:3", b"v": b"7"}
    newer_schema = {**good, b"b": b"h1:x:4", b"s": b"%d" % (SCHEMA_VERSION + 1)}
    not_a_dict = {**good, b"b": b"h1:x:5", b"d": msgpack.packb([event(1), "x"])}
    wrong_count = {**good, b"b": b"h1:x:6", b"n": b"3"}
    ids = [r.xadd(key, f) for f in ({b"junk": b"\xff\x00"}, truncated, future, newer_schema,
                                   {**good, b"d": msgpack.packb("nope")}, not_a_dict, wrong_count)]
    r.xadd(key, {**good, b"b": b"h1:x:9", b"d": codec.pack_events([event(3)]), b"n": b"1"})
    r.xadd(key, codec.stream_fields("h1", "h1:x:10", [event(4)], 0, fmt=1))  # a 0.1 agent's entry
    got = drain([worker], 3)
    assert all_seqs(got) == [0, 3, 4]
    dl = r.xrange("ravn:deadletter")
    assert [e[1][b"id"] for e in dl] == ids
    reasons = [e[1][b"reason"].decode() for e in dl]
    assert "format version field 'v' is missing" in reasons[0]
    assert "not valid msgpack" in reasons[1]
    assert "transport format version 7, this worker understands [1, 2]" in reasons[2]
    assert f"event schema version {SCHEMA_VERSION + 1}, this worker understands [{SCHEMA_VERSION}]" in reasons[3]
    assert "payload is not a list of events" in reasons[4]
    assert "got `str` - at `$[1]`" in reasons[5]
    assert "payload holds 2 events, the header says 3" in reasons[6]
    assert dl[1][1][b"orig.d"] == truncated[b"d"]  # the original entry is kept for inspection
    assert worker.health().counters["dead_lettered"] == 7
    assert r.xpending(key, "ravn-analyzers")["pending"] == 0  # dead-lettered entries are acked


def test_list_mode_bad_element_dead_lettered(redis_server: RedisServer, make_transport: Made) -> None:
    worker = make_transport(redis_server, host="w", mode="list")
    r = redis.Redis(port=redis_server.port)
    r.lpush("ravn:events:raw", b"{garbage")
    r.lpush("ravn:events:raw", codec.list_element("h1", "h1:x:1", [event(5)], 0))
    assert all_seqs(drain([worker], 1)) == [5]
    assert wait_for(lambda: r.xlen("ravn:deadletter") == 1, 2)
    assert b"not valid JSON" in r.xrange("ravn:deadletter")[0][1][b"reason"]
    assert r.llen(f"ravn:processing:{worker.consumer_name}") == 0


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_duplicate_batch_ids_reach_the_runtime_once(redis_server: RedisServer, make_transport: Made,
                                                    mode: str) -> None:
    worker = make_transport(redis_server, host="w", mode=mode)
    agent = make_transport(redis_server, mode=mode)
    agent.publish("h1", [event(0)])  # registers the stream
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    for _ in range(3):  # the same batch three times, as a resend after a lost reply would
        if mode == "stream":
            r.xadd("ravn:events:{h1}", codec.stream_fields("h1", "h1:dup:1", [event(1)], 0))
        else:
            r.lpush("ravn:events:raw", codec.list_element("h1", "h1:dup:1", [event(1)], 0))
    got = drain([worker], 2)
    time.sleep(0.3)
    got2 = drain([worker], 1, timeout_s=0.5)
    assert all_seqs(got) + all_seqs(got2) == [0, 1]
    assert worker.health().counters["duplicates"] == 2


def test_list_mode_requeues_a_dead_workers_processing_list(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server, mode="list")
    for b in batches("h1", 0, 6, 10):
        agent.publish("h1", b)
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    # a worker that took two batches and died: processing list present, heartbeat expired, still registered
    r.lmove("ravn:events:raw", "ravn:processing:dead-1", "RIGHT", "LEFT")
    r.lmove("ravn:events:raw", "ravn:processing:dead-1", "RIGHT", "LEFT")
    r.sadd("ravn:workers", "dead-1")
    r.set("ravn:worker:dead-1", "1", px=1)
    worker = make_transport(redis_server, host="w", mode="list", claim_idle_ms=200, heartbeat_ttl_ms=1000)
    got = drain([worker], 60)
    assert all_seqs(got) == list(range(60))
    assert got[0][:20] == list(range(20))  # requeued at the head: the oldest batches come first
    assert r.llen("ravn:processing:dead-1") == 0 and not r.sismember("ravn:workers", "dead-1")
    assert worker.health().counters["reclaimed"] == 2
    assert r.exists(f"ravn:worker:{worker.consumer_name}")  # our own heartbeat is alive


def test_list_mode_worker_recovers_its_own_processing_list(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server, mode="list")
    for b in batches("h1", 0, 3, 10):
        agent.publish("h1", b)
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    r.lmove("ravn:events:raw", "ravn:processing:stable-w", "RIGHT", "LEFT")  # taken by us before a crash
    worker = make_transport(redis_server, host="w", mode="list", consumer="stable-w")
    got = drain([worker], 30)
    assert got[0] == list(range(30))


def test_stream_worker_with_stable_name_recovers_its_own_pending(redis_server: RedisServer,
                                                                 make_transport: Made) -> None:
    agent = make_transport(redis_server)
    for b in batches("h1", 0, 4, 10):
        agent.publish("h1", b)
    agent.flush(5)
    first = make_transport(redis_server, host="w", consumer="stable-s", claim_idle_ms=60_000)
    d = first.consume(2)
    assert d is not None  # taken, never acked: the process "crashes"
    first.link.stop.set()
    again = make_transport(redis_server, host="w", consumer="stable-s", claim_idle_ms=60_000)
    got = drain([again], 40)
    assert all_seqs(got) == list(range(40))


def test_consume_from_several_threads(redis_server: RedisServer, make_transport: Made) -> None:
    import threading

    agent = make_transport(redis_server)
    worker = make_transport(redis_server, host="w", read_count=4)
    for b in batches("h1", 0, 200, 5):
        agent.publish("h1", b)
    agent.flush(5)
    seen: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= 1000:
                    return
            d = worker.consume(0.05)
            if d is not None:
                with lock:
                    seen.extend(e["test.seq"] for e in d.batch)
                worker.ack(d)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1000))


def test_prefetched_entries_reclaimed_by_another_worker_are_not_processed_twice(
        redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server)
    for b in batches("h1", 0, 8, 10):
        agent.publish("h1", b)
    agent.flush(5)
    slow = make_transport(redis_server, host="slow", read_count=8, claim_idle_ms=300)
    d = slow.consume(2)
    assert d is not None
    slow.ack(d)  # the first batch is done; 7 more wait in slow's local queue
    slow.flush(0)
    time.sleep(0.4)  # ... longer than claim_idle_ms
    fast = make_transport(redis_server, host="fast", claim_idle_ms=300)
    got = drain([fast], 70)
    assert all_seqs(got) == list(range(10, 80)) and fast.health().counters["reclaimed"] == 7
    assert slow.consume(0.2) is None  # its queued entries belong to fast now: dropped, not processed
    assert slow.health().counters["lost_to_reclaim"] == 7


def test_a_reclaim_between_our_check_and_our_touch_does_not_deliver_twice(
        redis_server: RedisServer, make_transport: Made) -> None:
    """A worker that held an entry long checks it is still pending on it, then touches it. Another worker's
    XAUTOCLAIM landing between the two (injected here: the race cannot be timed for real) must not end with
    both workers processing the entry: the check and the touch are one server-side step."""
    agent = make_transport(redis_server)
    for b in batches("h1", 0, 2, 10):
        agent.publish("h1", b)
    agent.flush(5)
    slow = make_transport(redis_server, host="slow", read_count=2, claim_idle_ms=300)
    d = slow.consume(2)
    assert d is not None
    slow.ack(d)
    slow.flush(0)  # the second batch waits in slow's local queue
    time.sleep(0.4)  # ... longer than claim_idle_ms
    fast = make_transport(redis_server, host="fast", claim_idle_ms=300)
    real = slow.consumer.client
    other: list[Any] = []

    class Interleaved:
        """slow's client; right after any XPENDING it sends, fast reclaims and processes the entry."""

        def __getattr__(self, name: str) -> Any:
            attr = getattr(real, name)
            if name != "xpending_range":
                return attr

            def xpending_then_reclaim(*args: Any, **kwargs: Any) -> Any:
                reply = attr(*args, **kwargs)
                got = fast.consume(2)
                if got is not None:
                    other.append(got)
                    fast.ack(got)
                return reply
            return xpending_then_reclaim

    slow.consumer.client = Interleaved()
    mine = slow.consume(0.5)
    slow.consumer.client = real
    if mine is None and not other:
        got = fast.consume(2)  # nothing interleaved (the atomic path): fast reclaims it afterwards
        if got is not None:
            other.append(got)
    processed = [d for d in [mine, *other] if d is not None]
    assert len(processed) == 1, "the second batch was processed by both workers"
    assert [e["test.seq"] for e in processed[0].batch] == list(range(10, 20))


def test_idle_consumers_that_own_nothing_are_forgotten(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server)
    agent.publish("h1", [event(0)])
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    key = "ravn:events:{h1}"
    r.xreadgroup("ravn-analyzers", "ghost-empty", {key: ">"}, count=1)  # takes the entry ...
    r.xautoclaim(key, "ravn-analyzers", "ghost-owner", 0, "0-0")  # ... which ghost-owner now holds
    r.xreadgroup("ravn-analyzers", "ghost-empty2", {key: ">"}, count=1)
    time.sleep(1.1)  # > 10 x claim_idle_ms
    worker = make_transport(redis_server, host="w", claim_idle_ms=100)
    got = drain([worker], 1)
    assert all_seqs(got) == [0]  # reclaimed from ghost-owner
    names = {c["name"] for c in r.xinfo_consumers(key, "ravn-analyzers")}
    assert b"ghost-empty" not in names and b"ghost-empty2" not in names
    assert worker.consumer_name.encode() in names
