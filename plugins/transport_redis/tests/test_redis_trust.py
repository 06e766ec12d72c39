"""Hostile writers and hostile events against a real redis-server (issue 13.1 and 13.2, docs/SECURITY.md).

Each test replays an attack that worked before the fix and passes only when it no longer works: a forged ``h``
field, foreign "next" batch ids, one ACL user for every host, forged host names growing a worker's state, and
events that do not fit the event schema."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from ravn_transport_redis import codec
from ravn_transport_redis.spool import Entry, Spool
from redis_helpers import Made, all_seqs, batches, drain, event

from ravn_core.events import FIELD_TYPES, MAX_STR
from ravn_core.testing import RedisServer, wait_for

pytestmark = pytest.mark.redis
README = Path(__file__).resolve().parents[1] / "README.md"


def _deliveries(worker: Any, timeout_s: float = 3.0, until: int = 0) -> list[Any]:
    """Everything the worker hands out within ``timeout_s`` (or once ``until`` deliveries arrived), acked."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (until and len(out) >= until):
        d = worker.consume(0.1)
        if d is not None:
            out.append(d)
            worker.ack(d)
    worker.flush(0)
    return out


# ------------------------------------------------------------------------------------------- forged writers
def test_forged_host_field_cannot_make_alerts_for_another_host(redis_server: RedisServer,
                                                               make_transport: Made) -> None:
    """Before: the worker took the host from the entry's ``h`` field, so any writer made batches (and alerts) for
    any host. Now the host is the one in the stream key and an entry naming another host is dead-lettered."""
    agent, worker = make_transport(redis_server, host="h1"), make_transport(redis_server, host="w")
    r = redis.Redis(port=redis_server.port)
    forged = codec.stream_fields("victim", "victim:x:1", [event(100, "victim")], time.time_ns())
    r.sadd("ravn:streams", "ravn:events:{evil}")
    r.xadd("ravn:events:{evil}", forged)  # the attacker's own stream
    r.xadd("ravn:events:{h1}", forged)  # or someone else's, with a shared ACL user
    agent.publish("h1", [event(1)])
    agent.flush(5)
    got = _deliveries(worker, until=1)
    assert [(d.host, [e["test.seq"] for e in d.batch]) for d in got] == [("h1", [1])]
    reasons = [f[b"reason"].decode() for _id, f in r.xrange("ravn:deadletter")]
    assert len(reasons) == 2 and all("entry says host 'victim' on the stream of host" in x for x in reasons)


def test_foreign_next_batch_ids_cannot_drop_a_real_batch(redis_server: RedisServer, make_transport: Made) -> None:
    """Before: dedup was by batch id alone; an attacker read h1's last id (XREVRANGE) and wrote entries with the
    next ids on its own stream, and h1's next real batch (an /etc/shadow read) was dropped as a duplicate."""
    agent, worker = make_transport(redis_server, host="h1"), make_transport(redis_server, host="w")
    agent.publish("h1", [event(1)])
    agent.flush(5)
    assert all_seqs(drain([worker], 1)) == [1]
    r = redis.Redis(port=redis_server.port)
    last = r.xrevrange("ravn:events:{h1}", count=1)[0][1][b"b"].decode()
    host, boot, seq = last.split(":")
    r.sadd("ravn:streams", "ravn:events:{evil}")
    for n in range(int(seq) + 1, int(seq) + 20):
        r.xadd("ravn:events:{evil}", codec.stream_fields("evil", f"{host}:{boot}:{n}", [event(900 + n, "evil")], 0))
    assert len(_deliveries(worker, until=19)) == 19  # the worker has seen all of the attacker's ids
    shadow = {**event(2), "file.path": "/etc/shadow"}
    agent.publish("h1", [shadow])
    agent.flush(5)
    got = _deliveries(worker, until=1)
    assert [(d.host, d.batch) for d in got] == [("h1", [shadow])]
    assert worker.health().counters["duplicates"] == 0


def test_a_real_duplicate_is_still_dropped(redis_server: RedisServer, make_transport: Made) -> None:
    """Namespacing keeps dedup working on the stream a batch really came from (the agent resends after a
    reconnect on the same stream)."""
    worker = make_transport(redis_server, host="w")
    r = redis.Redis(port=redis_server.port)
    r.sadd("ravn:streams", "ravn:events:{h1}")
    fields = codec.stream_fields("h1", "h1:b:1", [event(1)], 0)
    r.xadd("ravn:events:{h1}", fields)
    r.xadd("ravn:events:{h1}", fields)
    assert len(_deliveries(worker, timeout_s=2)) == 1 and worker.health().counters["duplicates"] == 1


# ------------------------------------------------------------------------------------------- per-host ACL users
def _acl_commands(host: str, password: str) -> list[list[str]]:
    """The README's ACL SETUSER commands, for one agent host and the workers."""
    lines = [ln.strip() for ln in README.read_text().splitlines() if ln.strip().startswith("ACL SETUSER ravn-")]
    assert len(lines) == 2, "README 'Security' gives one agent and one worker ACL SETUSER command"
    assert lines[0].startswith("ACL SETUSER ravn-agent-<host> ") and lines[1].startswith("ACL SETUSER ravn-worker ")
    return [ln.replace("<host>", host).replace("<password>", password).split() for ln in lines]


@pytest.fixture
def acl_server() -> Any:
    """A server with an admin user, the default user off, and the README's users for hosts h1, h2 and workers."""
    server = RedisServer("--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all", "--user", "default", "off")
    server.start()
    admin = redis.Redis(port=server.port, username="admin", password="admin-pw")
    try:
        for host in ("h1", "h2"):
            agent_cmd, _worker_cmd = _acl_commands(host, f"pw-{host}")
            assert admin.execute_command(*agent_cmd) in (b"OK", "OK", True)
        _agent_cmd, worker_cmd = _acl_commands("", "pw-worker")
        assert admin.execute_command(*worker_cmd) in (b"OK", "OK", True)
        yield server
    finally:
        server.stop()


def test_agent_acl_user_can_only_xadd_its_own_stream(acl_server: RedisServer, make_transport: Made,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the documented ACL was one user for every host that could XTRIM/DEL/XACK every host's stream.
    Now each agent has its own user: it appends to its own stream and can do nothing else to any stream."""
    port = acl_server.port
    monkeypatch.setenv("RAVN_PW_H1", "pw-h1")
    monkeypatch.setenv("RAVN_PW_H2", "pw-h2")
    monkeypatch.setenv("RAVN_PW_W", "pw-worker")
    a1 = make_transport(port=port, host="h1", username="ravn-agent-h1", password={"$env": "RAVN_PW_H1"})
    a2 = make_transport(port=port, host="h2", username="ravn-agent-h2", password={"$env": "RAVN_PW_H2"})
    w = make_transport(port=port, host="w", username="ravn-worker", password={"$env": "RAVN_PW_W"})
    for b in batches("h1", 0, 5, 10):
        a1.publish("h1", b)
    for b in batches("h2", 1000, 5, 10):
        a2.publish("h2", b)
    admin = redis.Redis(port=port, username="admin", password="admin-pw")
    admin.xadd("ravn:events:{h1}", {b"junk": b"x"})  # a bad entry: the worker dead-letters it
    for a in (a1, a2):
        a.flush(5)
        assert a.health().state == "ok" and a.health().counters["send_errors"] == 0, a.health().detail
    got = drain([w], 100)
    assert all_seqs(got) == list(range(50)) + list(range(1000, 1050))
    assert wait_for(lambda: w.health().counters["dead_lettered"] == 1, 3)
    assert w.health().state == "ok", w.health().detail
    assert w.consumer.backlog() == 0 and admin.xlen("ravn:deadletter") == 1
    for key in ("ravn:events:{h1}", "ravn:events:{h2}"):
        assert admin.xpending(key, "ravn-analyzers")["pending"] == 0  # the worker's XACKs went through

    r1 = redis.Redis(port=port, username="ravn-agent-h1", password="pw-h1")
    own, other = "ravn:events:{h1}", "ravn:events:{h2}"
    assert r1.xadd(own, {b"x": b"1"})  # its own stream: yes
    denied = [
        lambda: r1.xadd(other, {b"x": b"1"}),
        lambda: r1.xadd("ravn:events:{h1x}", {b"x": b"1"}),
        lambda: r1.xtrim(other, maxlen=0), lambda: r1.xtrim(own, maxlen=0),
        lambda: r1.delete(other), lambda: r1.delete(own), lambda: r1.unlink(other),
        lambda: r1.xack(other, "ravn-analyzers", "0-1"), lambda: r1.xack(own, "ravn-analyzers", "0-1"),
        lambda: r1.xread({other: "0"}), lambda: r1.xrange(other), lambda: r1.xrevrange(other),
        lambda: r1.xreadgroup("ravn-analyzers", "evil", {other: ">"}),
        lambda: r1.xreadgroup("ravn-analyzers", "evil", {own: ">"}),
        lambda: r1.xgroup_destroy(own, "ravn-analyzers"), lambda: r1.xgroup_setid(other, "ravn-analyzers", "$"),
        lambda: r1.xdel(own, "0-1"), lambda: r1.xclaim(other, "ravn-analyzers", "evil", 0, ["0-1"]),
        lambda: r1.srem("ravn:streams", other), lambda: r1.delete("ravn:streams"),
        lambda: r1.xadd("ravn:streams", {b"x": b"1"}), lambda: r1.smembers("ravn:streams"),
        lambda: r1.xadd("ravn:deadletter", {b"x": b"1"}), lambda: r1.set("ravn:threat_level", "LOW"),
        lambda: r1.keys("*"), lambda: r1.flushall(), lambda: r1.eval("return 1", 0),
    ]
    for i, attempt in enumerate(denied):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
            pytest.fail(f"denied[{i}] was allowed")
    rw = redis.Redis(port=port, username="ravn-worker", password="pw-worker")
    for attempt in (lambda: rw.xadd(own, {b"x": b"1"}), lambda: rw.delete(own), lambda: rw.xtrim(own, maxlen=0),
                    lambda: rw.sadd("ravn:streams", "ravn:events:{evil}")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()  # a worker reads and acks; it cannot forge, trim or register streams


# ------------------------------------------------------------------------------------------- bounded host state
def test_allow_hosts_keeps_100k_forged_hosts_out(redis_server: RedisServer, make_transport: Made) -> None:
    """Before: every registered stream (and every forged ``h``) became a host with its own process tree and
    scorer in the worker (100k fake hosts: +156 MB). With ``allow_hosts`` the worker reads only the streams of
    those hosts: 100k forged ones never reach the runtime, and it creates no group on them."""
    r = redis.Redis(port=redis_server.port)
    pipe = r.pipeline(transaction=False)
    for i in range(100_000):
        key = f"ravn:events:{{fake-{i}}}"
        pipe.xadd(key, codec.stream_fields(f"fake-{i}", f"fake-{i}:x:1", [event(i, f"fake-{i}")], 0))
        pipe.sadd("ravn:streams", key)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    agent = make_transport(redis_server, host="web-1")
    for b in batches("web-1", 0, 3, 5):
        agent.publish("web-1", b)
    agent.flush(5)
    worker = make_transport(redis_server, host="w", allow_hosts=["web-*", "db-?"])
    got = _deliveries(worker, timeout_s=10, until=3)
    assert {d.host for d in got} == {"web-1"} and sum(len(d.batch) for d in got) == 15
    assert _deliveries(worker, timeout_s=0.5) == []
    assert worker.consumer.streams == ["ravn:events:{web-1}"]  # type: ignore[attr-defined]
    assert worker.health().counters["ignored_streams"] == 100_000
    assert r.xinfo_groups("ravn:events:{fake-7}") == []  # nothing was created on the forged streams


def test_allow_hosts_in_list_mode_dead_letters_other_hosts(redis_server: RedisServer, make_transport: Made) -> None:
    """List mode has one shared list and the host comes from the element: other hosts' batches are
    dead-lettered instead of creating host state."""
    r = redis.Redis(port=redis_server.port)
    for i in range(300):
        r.lpush("ravn:events:raw", codec.list_element(f"fake-{i}", f"fake-{i}:x:1", [event(i)], 0))
    agent = make_transport(redis_server, host="web-1", mode="list")
    agent.publish("web-1", [event(7, "web-1")])
    agent.flush(5)
    worker = make_transport(redis_server, host="w", mode="list", allow_hosts=["web-*"])
    got = _deliveries(worker, timeout_s=10, until=1)
    assert [d.host for d in got] == ["web-1"]
    assert wait_for(lambda: worker.health().counters["dead_lettered"] == 300, 10)
    assert b"is not in allow_hosts" in r.xrange("ravn:deadletter", count=1)[0][1][b"reason"]


# ------------------------------------------------------------------------------------------- AUTH / TLS warnings
def test_warns_at_start_without_auth_or_tls(make_transport: Made, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer("--requirepass", "s3cret").start()
    try:
        with caplog.at_level(logging.WARNING):
            t = make_transport(port=server.port)  # reached without AUTH
            t.publish("h1", [event(1)])
            assert wait_for(lambda: t.health().state == "degraded", 3)  # and refused: NOAUTH
        assert any("no password (AUTH) configured" in m for m in caplog.messages)
        caplog.clear()
        monkeypatch.setenv("RAVN_TEST_PW", "s3cret")
        with caplog.at_level(logging.WARNING):
            ok = make_transport(port=server.port, password={"$env": "RAVN_TEST_PW"})
            ok.publish("h1", [event(1)])
            ok.flush(5)
            assert ok.health().state == "ok"
        assert not any("AUTH" in m or "TLS" in m for m in caplog.messages), caplog.messages
    finally:
        server.stop()
    pw = {"password": {"$env": "RAVN_TEST_PW"}}
    for kw, warned in (({"url": "redis://192.0.2.10:6379/0"}, True), ({"url": "redis://redis.example:6379/0"}, True),
                       ({"url": "redis://192.0.2.10:6379/0", "tls": {"enabled": True}}, False),
                       ({"url": "rediss://redis.example:6379/0"}, False), ({"url": "unix:///run/redis.sock"}, False),
                       ({"url": "redis://localhost:6379/0"}, False), ({"url": "redis://[::1]:6379/0"}, False),
                       ({"url": "redis://127.0.0.2:6379/0"}, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            make_transport(**kw, **pw)  # connects lazily: nothing is dialled here
        assert any("not loopback and no TLS" in m for m in caplog.messages) == warned, kw


# ------------------------------------------------------------------------------------------- hostile events
def _bad_events() -> list[tuple[dict[str, Any], str]]:
    e = event(0)
    return [
        ({**e, "proc.pid": [1]}, "proc.pid: a list, want int"),
        ({**e, "proc.uid": "0"}, "proc.uid: a str, want int"),
        ({**e, "proc.comm": 7}, "proc.comm: an int, want str"),
        ({**e, "file.write": 1}, "file.write: an int, want bool"),
        ({**e, "evt.type": "exec", "exec.argv": [1]}, "exec.argv: item 0 is an int, want str"),
        ({**e, "evt.type": "cred", "cred.args": ["0"]}, "cred.args: item 0 is a str, want int"),
        ({**e, "evt.type": "syscall_summary", "syscall.counts": {"read": "2"}},
         "syscall.counts: item 'read' is a str, want int"),
        ({**e, "evt.type": "no_such_type"}, "evt.type: unknown event type 'no_such_type'"),
        ({**e, "file.path": "/" * (MAX_STR + 1)}, f"file.path: a str of {MAX_STR + 1} characters"),
        ({**e, "x.nested": [[[[1]]]]}, "x.nested: a list in a field outside the schema"),
    ]


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_bad_events_are_dead_lettered_and_the_rest_of_the_batch_is_analyzed(
        redis_server: RedisServer, make_transport: Made, mode: str) -> None:
    """Before: nothing checked field types, and one ``proc.pid: [1]`` killed the analysis thread with its
    batch. Now each bad event is dead-lettered with its reason and the others of its batch are delivered."""
    agent = make_transport(redis_server, mode=mode)
    worker = make_transport(redis_server, host="w", mode=mode)
    bad = _bad_events()
    batch: list[dict[str, Any]] = []
    for i, (ev, _why) in enumerate(bad):
        batch += [event(2 * i), ev, event(2 * i + 1)]
    agent.publish("h1", batch)
    agent.publish("h1", [ev for ev, _ in bad])  # a batch of bad events only
    agent.publish("h1", [event(1000)])
    agent.flush(5)
    got = _deliveries(worker, until=2)
    assert [[e["test.seq"] for e in d.batch] for d in got] == [list(range(2 * len(bad))), [1000]]
    r = redis.Redis(port=redis_server.port)
    dl = [f for _id, f in r.xrange("ravn:deadletter")]
    assert len(dl) == 2 and worker.health().counters["invalid_events"] == 2 * len(bad)
    partial, whole = dl
    assert partial[b"invalid"] == b"%d" % len(bad) and partial[b"events"] == b"%d" % (3 * len(bad))
    for j, (_ev, why) in enumerate(bad):
        shown = partial[b"event.%d" % (3 * j + 1)].decode()
        assert shown.startswith(why) and len(shown) < 4000, shown[:200]
    assert whole[b"reason"].startswith(b"%d of %d events do not fit the event schema" % (len(bad), len(bad)))
    if mode == "stream":
        assert r.xpending("ravn:events:{h1}", "ravn-analyzers")["pending"] == 0
    else:
        assert r.llen(f"ravn:processing:{worker.consumer_name}") == 0


@pytest.mark.parametrize("mode", ["stream", "list"])
def test_deep_nesting_is_a_decode_error_not_a_crash(redis_server: RedisServer, make_transport: Made,
                                                    mode: str) -> None:
    """Before: a deeply nested list element made ``decode_list`` raise RecursionError."""
    r = redis.Redis(port=redis_server.port)
    worker = make_transport(redis_server, host="w", mode=mode)
    depth = 100_000
    if mode == "stream":
        r.sadd("ravn:streams", "ravn:events:{h1}")
        good = codec.stream_fields("h1", "h1:x:1", [event(1)], 0)
        r.xadd("ravn:events:{h1}", {**good, b"d": b"\x91" * depth + b"\xc0"})
        nested = msgpack.packb([{**event(2), "x": 0}])
        r.xadd("ravn:events:{h1}", {**good, b"b": b"h1:x:2", b"d": nested.replace(b"\x00", b"\x91" * 500 + b"\xc0")})
        r.xadd("ravn:events:{h1}", codec.stream_fields("h1", "h1:x:3", [event(3)], 0))
    else:
        deep = "[" * depth + "]" * depth
        r.lpush("ravn:events:raw", b'{"v": 1, "schema": 1, "host": "h1", "id": "h1:x:1", "n": 1, "ts": 0, '
                                   b'"events": [{"evt.type": "open", "x": ' + deep.encode() + b"}]}")
        r.lpush("ravn:events:raw", codec.list_element("h1", "h1:x:3", [event(3)], 0))
    got = _deliveries(worker, until=1)
    assert [[e["test.seq"] for e in d.batch] for d in got] == [[3]]
    assert r.xlen("ravn:deadletter") == (2 if mode == "stream" else 1)
    assert codec.decode_list(codec.list_element("h1", "b", [event(1)], 0)).events == [event(1)]


def test_decode_list_deep_nesting_raises_decode_error() -> None:
    from ravn_core.errors import DecodeError

    with pytest.raises(DecodeError, match="nested too deeply"):
        codec.decode_list(b"[" * 100_000 + b"]" * 100_000)


def test_codec_schema_check_agrees_with_validate_event() -> None:
    """The C fast path (msgspec) and ``validate_event`` say the same of every good and bad event."""
    from ravn_core.events import validate_event

    good = [event(1), {**event(2), "evt.type": "exec", "exec.argv": ["a"], "exec.memfd": True},
            {"evt.type": "syscall_summary", "syscall.counts": {"read": 1}, "syscall.seq": [0, 1], "x": None}]
    cases = [[g] for g in good] + [[ev] for ev, _ in _bad_events()] + [
        [{**event(1), "proc.exe": "/x"}], [{**event(1), "proc.pid": True}], [{**event(1), "proc.pid": 2**63}],
        [{**event(1), "proc.pid": 1.0}], [{"proc.pid": 1}], [{**event(1), "exec.argv": ["a"] * 5000}]]
    fast = 0
    for batch in cases:
        want = [(i, r) for i, e in enumerate(batch) if (r := validate_event(e)) is not None]
        assert codec.invalid_events(batch) == want
        # the fast path itself, on events of schema fields only (as probes make them; a field outside the schema,
        # like the tests' test.seq, always takes the slow path)
        pure = [{k: v for k, v in e.items() if not k.startswith("test.")} for e in batch]
        if all(set(e) <= set(FIELD_TYPES) for e in pure):
            fast += 1
            assert codec._all_valid(pure) == all(validate_event(e) is None for e in pure), pure
    assert fast >= 14


# ------------------------------------------------------------------------------------------- file modes
def test_spool_file_is_0600_whatever_the_umask(make_transport: Made, tmp_path: Path) -> None:
    """Before: the spool (this host's events while Redis is away) was created 0644."""
    old = os.umask(0o002)
    try:
        agent = make_transport(port=1, host="h1", spool_memory_mb=0, state_dir=str(tmp_path / "state"))
        agent.publish("h1", [event(1)])
        path = agent.publisher.spool.path
        assert wait_for(lambda: os.path.exists(path), 3)
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_spool_narrows_a_wide_file_and_refuses_a_symlink(tmp_path: Path) -> None:
    wide = tmp_path / "wide.bin"
    wide.write_bytes(b"")
    wide.chmod(0o644)
    s = Spool(0, 1 << 20, str(wide))
    assert s.put(Entry("k", "b", b"payload", 1))
    assert wide.stat().st_mode & 0o777 == 0o600
    s.close()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    with pytest.raises(OSError):
        Spool(0, 1 << 20, str(link)).put(Entry("k", "b", b"payload", 1))
    assert target.read_bytes() == b""
