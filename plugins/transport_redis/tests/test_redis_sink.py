"""The redis sink: threat level keys, the threat_updates channel, the bounded alerts stream."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from ravn_transport_redis.config import RedisSinkConfig
from ravn_transport_redis.sink import RedisSink

from ravn_core.components import Alert, ThreatUpdate
from ravn_core.testing import RedisServer, make_context, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def sinks() -> Iterator[list[RedisSink]]:
    made: list[RedisSink] = []
    yield made
    for s in made:
        s.close()


def _sink(made: list[RedisSink], port: int, **kw: Any) -> RedisSink:
    s = RedisSink("redis", RedisSinkConfig(port=port, **kw), make_context("sink", host="h1"))
    made.append(s)
    return s


def _alert(i: int, score: int = 60) -> Alert:
    return Alert("analyzer_rules", f"rule-{i}", score, f"alert {i}", pid=100 + i, comm="sh", host="h1",
                 level="MEDIUM", tags=["T1059.004"])


def test_threat_update_sets_keys_and_publishes(redis_server: RedisServer, sinks: list[RedisSink]) -> None:
    r = redis.Redis(port=redis_server.port)
    pubsub = r.pubsub()
    pubsub.subscribe("ravn:threat_updates")
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    sink = _sink(sinks, redis_server.port, top_alerts=2)
    sink.emit_threat(ThreatUpdate("h1", "HIGH", 87.5, "MEDIUM", [_alert(1), _alert(2), _alert(3)]))
    assert r.get("ravn:threat_level") == b"HIGH"
    h = r.hgetall("ravn:threat:{h1}")
    assert h[b"level"] == b"HIGH" and float(h[b"score"]) == 87.5 and h[b"previous_level"] == b"MEDIUM"
    assert r.zscore("ravn:threat_scores", "h1") == 87.5
    msg = pubsub.get_message(timeout=2)
    assert msg is not None and msg["type"] == "message"
    body = json.loads(msg["data"])
    assert (body["level"], body["score"], body["host"]) == ("HIGH", 87.5, "h1")
    assert [a["rule"] for a in body["top_alerts"]] == ["rule-1", "rule-2"]
    pubsub.close()


def test_open_incidents_hash_is_replaced_whole_and_deleted_when_none(redis_server: RedisServer,
                                                                     sinks: list[RedisSink]) -> None:
    r = redis.Redis(port=redis_server.port)
    pubsub = r.pubsub()
    pubsub.subscribe("ravn:threat_updates")
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    sink = _sink(sinks, redis_server.port)
    a = {"id": "ab12-1", "root": {"pid": 4321, "comm": "bash", "exe": "/usr/bin/bash"}, "rules": ["x", "y"],
         "score": 84.6, "level": "HIGH", "age_s": 3.0}
    b = {"id": "ab12-2", "root": {"pid": 99, "comm": "cron", "exe": ""}, "rules": ["z"], "score": 60,
         "level": "MEDIUM", "age_s": 1.0}
    sink.emit_incidents("h1", [a, b])
    got = {k.decode(): json.loads(v) for k, v in r.hgetall("ravn:incidents:{h1}").items()}
    assert got == {"ab12-1": a, "ab12-2": b}
    sink.emit_incidents("h1", [b])  # a closed: the hash holds only what is open
    assert list(r.hgetall("ravn:incidents:{h1}")) == [b"ab12-2"]
    assert not r.exists("ravn:incidents:{h1}:next")
    sink.emit_threat(ThreatUpdate("h1", "MEDIUM", 60, "HIGH", [], incidents=[b]))
    msg = pubsub.get_message(timeout=2)
    assert msg is not None and json.loads(msg["data"])["incidents"] == [b]
    sink.emit_incidents("h1", [])
    assert not r.exists("ravn:incidents:{h1}")
    pubsub.close()


def test_alerts_go_to_a_bounded_stream(redis_server: RedisServer, sinks: list[RedisSink]) -> None:
    sink = _sink(sinks, redis_server.port, alerts_maxlen=100, prefix="x:")
    for i in range(600):
        sink.emit_alerts([_alert(i)])
    r = redis.Redis(port=redis_server.port)
    n = r.xlen("x:alerts")
    assert 100 <= n < 400
    last = r.xrevrange("x:alerts", count=1)[0][1]
    assert last[b"rule"] == b"rule-599" and json.loads(last[b"json"])["tags"] == ["T1059.004"]
    assert sink.health().counters["alerts"] == 600


def test_alerts_wait_while_redis_is_away(sinks: list[RedisSink]) -> None:
    server = RedisServer()
    sink = _sink(sinks, server.port, buffer_alerts=5, backoff_s=0.01, backoff_max_s=0.05)
    for i in range(8):
        sink.emit_alerts([_alert(i)])
    assert sink.health().state == "degraded"
    assert sink.health().counters["dropped"] == 3
    server.start()
    try:
        time.sleep(0.06)
        sink.emit_threat(ThreatUpdate("h1", "MEDIUM", 55, "LOW", []))
        r = redis.Redis(port=server.port)
        assert wait_for(lambda: r.xlen("ravn:alerts") == 5, 2)
        assert [e[1][b"rule"] for e in r.xrange("ravn:alerts")] == [f"rule-{i}".encode() for i in range(3, 8)]
        assert r.get("ravn:threat_level") == b"MEDIUM" and sink.health().state == "ok"
    finally:
        server.stop()


def test_sink_warns_at_start_without_auth_or_tls(sinks: list[RedisSink], caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: only the transport warned; a sink without AUTH, or off loopback without TLS, started silently
    although whoever reaches that Redis can then forge or read the threat level and alerts."""
    server = RedisServer("--requirepass", "s3cret").start()
    try:
        with caplog.at_level(logging.WARNING):
            bare = _sink(sinks, server.port)  # reached without AUTH
        assert any("no password (AUTH) configured" in m for m in caplog.messages), caplog.messages
        bare.emit_alerts([_alert(1)])
        assert bare.health().state == "degraded"  # and refused: NOAUTH
        caplog.clear()
        monkeypatch.setenv("RAVN_TEST_PW", "s3cret")
        with caplog.at_level(logging.WARNING):
            ok = _sink(sinks, server.port, password={"$env": "RAVN_TEST_PW"})
            ok.emit_alerts([_alert(2)])
            assert ok.health().state == "ok" and ok.health().counters["alerts"] == 1
        assert not any("AUTH" in m or "TLS" in m for m in caplog.messages), caplog.messages
    finally:
        server.stop()
    pw = {"password": {"$env": "RAVN_TEST_PW"}}
    for kw, warned in (({"url": "redis://192.0.2.10:6379/0"}, True), ({"url": "redis://redis.example:6379/0"}, True),
                       ({"url": "redis://192.0.2.10:6379/0", "tls": {"enabled": True}}, False),
                       ({"url": "rediss://redis.example:6379/0"}, False), ({"url": "unix:///run/redis.sock"}, False),
                       ({"url": "redis://localhost:6379/0"}, False), ({"url": "redis://127.0.0.2:6379/0"}, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _sink(sinks, 6379, **kw, **pw)  # connects lazily: nothing is dialled here
        assert any("not loopback and no TLS" in m for m in caplog.messages) == warned, kw
