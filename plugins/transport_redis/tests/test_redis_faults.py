"""Faults made real: redis-server SIGKILLed and restarted, a worker process SIGKILLed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis_helpers import Made, all_seqs, batches, drain, event

from ravn_core.testing import RedisServer, wait_for

pytestmark = pytest.mark.redis


def test_redis_sigkill_and_restart_every_event_exactly_once(make_transport: Made) -> None:
    """Durability assumption: Redis with appendonly yes + appendfsync always, so a reply means "on disk".

    The agent keeps publishing while the server is down (spool), resends what was in flight when it died
    (unless Redis already has it: checked by batch id), and the worker gets each event exactly once.
    """
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        agent = make_transport(server, pipeline_batches=8)
        worker = make_transport(server, host="w")
        n_batches, size = 300, 40
        got: list[int] = []
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                d = worker.consume(0.05)
                if d is not None:
                    got.extend(e["test.seq"] for e in d.batch)
                    worker.ack(d)

        reader = threading.Thread(target=consume)
        reader.start()
        for i, b in enumerate(batches("h1", 0, n_batches, size)):
            agent.publish("h1", b)
            if i == 100:
                server.kill(signal.SIGKILL)
            if 100 <= i < 200:
                assert agent.health().state in ("ok", "degraded")
            if i == 200:
                assert agent.health().state == "degraded"
                server.start()
            if not 60 <= i <= 100:  # a burst before the kill: the sender is mid-pipeline when Redis dies
                time.sleep(0.002)
        agent.flush(15)
        assert wait_for(lambda: len(got) >= n_batches * size, 15)
        time.sleep(0.3)  # would-be duplicates have time to arrive
        stop.set()
        reader.join()
        assert sorted(got) == list(range(n_batches * size))  # none lost, none twice
        h = agent.health()
        assert h.state == "ok" and h.counters["reconnects"] >= 1 and h.counters["spooled"] > 50
        assert h.counters["published"] + h.counters["confirmed_on_reconnect"] == n_batches
        assert worker.health().counters["reconnects"] >= 1
    finally:
        server.stop()


def test_worker_sigkilled_mid_batch_its_entries_are_reclaimed(redis_server: RedisServer, make_transport: Made,
                                                                tmp_path: Path) -> None:
    agent = make_transport(redis_server)
    for b in batches("h1", 0, 40, 25):
        agent.publish("h1", b)
    agent.flush(5)
    victim = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("redis_worker_proc.py")), str(redis_server.port),
         str(tmp_path / "victim"), "5"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    acked: list[int] = []
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            if line.startswith("HOLD"):
                break
            acked.extend(int(x) for x in line.split()[1:])
        r = redis.Redis(port=redis_server.port)
        pending = r.xpending("ravn:events:{h1}", "ravn-analyzers")
        assert pending["pending"] >= 1  # the batch it holds (and what it prefetched)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
    survivor = make_transport(redis_server, host="w", claim_idle_ms=300)
    got = drain([survivor], 1000 - len(acked), timeout_s=10)
    assert sorted(acked + all_seqs(got)) == list(range(1000))
    assert survivor.health().counters["reclaimed"] == pending["pending"]
    assert r.xpending("ravn:events:{h1}", "ravn-analyzers")["pending"] == 0


def test_poison_batch_dead_lettered_after_max_deliveries(redis_server: RedisServer, make_transport: Made) -> None:
    agent = make_transport(redis_server)
    agent.publish("h1", [event(1)])
    agent.flush(5)
    # three workers in turn take the batch and "crash" on it (never ack)
    for i in range(3):
        w = make_transport(redis_server, host=f"w{i}", claim_idle_ms=100, max_deliveries=3)
        assert w.consume(3) is not None
        w.link.stop.set()
        time.sleep(0.15)
    last = make_transport(redis_server, host="last", claim_idle_ms=100, max_deliveries=3)
    assert last.consume(1) is None
    r = redis.Redis(port=redis_server.port)
    dl = r.xrange("ravn:deadletter")
    assert len(dl) == 1 and b"delivered 4 times without an ack" in dl[0][1][b"reason"]


def test_agent_spools_to_file_while_redis_is_away_and_resends_after_restart(make_transport: Made,
                                                                            tmp_path: Path) -> None:
    server = RedisServer()
    try:
        state = str(tmp_path / "agent")  # redis never started: everything goes to the spool
        agent = make_transport(server, state_dir=state, spool_memory_mb=0.05, spool_file_mb=1, backoff_max_s=0.1)
        for b in batches("h1", 0, 50, 20):
            agent.publish("h1", b)
        time.sleep(0.3)
        h = agent.health()
        assert h.state == "degraded" and h.counters["spooled"] == 50 and h.counters["spool_batches"] == 50
        assert h.counters["spilled"] > 0 and h.counters["dropped"] == 0
        agent.close()  # the agent stops with Redis still away: the spool file keeps the batches
        assert os.path.getsize(f"{state}/redis-spool-h1-redis.bin") > 0
        server.start()
        again = make_transport(server, state_dir=state)
        worker = make_transport(server, host="w")
        again.publish("h1", [event(1000)])  # first publish of the new run sends the old spool first
        again.flush(5)
        got = drain([worker], 1001)
        assert all_seqs(got) == list(range(1001))
        assert got[0][:20] == list(range(20))  # in order
    finally:
        server.stop()


def test_spool_full_drops_and_counts(make_transport: Made) -> None:
    server = RedisServer()  # never started
    server.stop()  # (its temp dir)
    agent = make_transport(server, spool_memory_mb=0.02, spool_file_mb=0.05)
    for b in batches("h1", 0, 100, 20):
        agent.publish("h1", b)
    c = agent.health().counters
    assert c["dropped"] > 0 and c["dropped_events"] == c["dropped"] * 20
    assert c["spool_batches"] + c["dropped"] == 100


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_batches_whose_reply_was_lost_are_not_sent_twice(redis_server: RedisServer, make_transport: Made,
                                                          mode: str) -> None:
    """The connection broke after Redis took batches 1-3 but before the agent read the replies: after the
    reconnect the agent finds them by batch id and sends only 4-5."""
    from ravn_transport_redis import codec
    from ravn_transport_redis.spool import Entry

    agent = make_transport(redis_server, mode=mode)
    agent.publish("h1", [event(0)])  # registers the key, connects
    agent.flush(5)
    r = redis.Redis(port=redis_server.port)
    key = "ravn:events:{h1}" if mode == "stream" else "ravn:events:raw"
    entries = []
    for seq in range(1, 6):
        bid = f"h1:lost:{seq}"
        if mode == "stream":
            payload: dict[bytes, bytes] | bytes = codec.stream_fields("h1", bid, [event(seq)], 0)
        else:
            payload = codec.list_element("h1", bid, [event(seq)], 0)
        entries.append(Entry(key, bid, payload, 1, unconfirmed=True))
    for e in entries[:3]:  # these reached Redis
        r.xadd(key, e.payload) if mode == "stream" else r.lpush(key, e.payload)  # type: ignore[arg-type]
    with agent.publisher.spool.not_empty:  # as the sender leaves them after a broken pipeline
        agent.publisher.resync = True
    for e in entries:
        agent.publisher.spool.put(e)
    agent.flush(5)
    worker = make_transport(redis_server, host="w", mode=mode, dedup_window=0)  # no help from the worker
    got = drain([worker], 6)
    assert all_seqs(got) == [0, 1, 2, 3, 4, 5]
    assert agent.health().counters["confirmed_on_reconnect"] == 3


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_restart_without_persistence_recovers_groups(make_transport: Made, mode: str) -> None:
    """A Redis without persistence restarted: what it held is gone (documented), but agents re-register
    their streams, workers recreate the consumer group (NOGROUP) and the flow resumes on its own."""
    server = RedisServer().start()
    try:
        agent = make_transport(server, mode=mode)
        worker = make_transport(server, host="w", mode=mode)
        for b in batches("h1", 0, 5, 10):
            agent.publish("h1", b)
        agent.flush(5)
        assert all_seqs(drain([worker], 50)) == list(range(50))
        server.kill(signal.SIGKILL)
        server.start()
        for b in batches("h1", 50, 5, 10):
            agent.publish("h1", b)
        agent.flush(5)
        assert all_seqs(drain([worker], 50, timeout_s=10)) == list(range(50, 100))
        assert agent.health().state == "ok" and worker.health().state == "ok"
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_batches_delivered_in_a_reply_lost_with_the_connection_are_recovered(make_transport: Made,
                                                                           mode: str) -> None:
    """Redis (AOF) handed batches to this worker, then died before the reply arrived: after the reconnect the
    worker takes them from its own pending list / processing list at once, not after claim_idle_ms."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        agent = make_transport(server, mode=mode)
        worker = make_transport(server, host="w", mode=mode, claim_idle_ms=60_000)
        agent.publish("h1", [event(i) for i in range(10)])
        agent.flush(5)
        assert all_seqs(drain([worker], 10)) == list(range(10))  # batch 1; the worker is set up
        for b in batches("h1", 10, 2, 10):
            agent.publish("h1", b)
        agent.flush(5)
        r = redis.Redis(port=server.port)
        if mode == "stream":  # what the lost reply delivered: the rest, pending on the worker's consumer
            r.xreadgroup("ravn-analyzers", worker.consumer_name, {"ravn:events:{h1}": ">"})
        else:
            for _ in range(2):
                r.lmove("ravn:events:raw", f"ravn:processing:{worker.consumer_name}", "RIGHT", "LEFT")
        server.kill(signal.SIGKILL)
        assert worker.consume(0.3) is None
        server.start()
        got = drain([worker], 20, timeout_s=5)
        assert all_seqs(got) == list(range(10, 30))
        assert worker.health().counters["recovered"] == 2
    finally:
        server.stop()
