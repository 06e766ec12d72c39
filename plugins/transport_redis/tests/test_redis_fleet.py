"""Fleet roles through the CLI: ``ravn analyze`` workers sharing a stream, ``ravn agent`` publishing real
kernel events. Each starts real ``ravn`` processes against a real redis-server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_helpers import Made, event

from ravn_core.testing import RedisServer, require_kernel, wait_for

pytestmark = pytest.mark.redis

RAVN = shutil.which("ravn", path=os.path.dirname(sys.executable)) or "ravn"
RULE = """
- rule: fleet_test_marker
  description: "marker {exec.cmdline}"
  score: 90
  tags: [T1059]
  events: [exec]
  condition: exec.cmdline contains (ravn-fleet-marker)
"""


def _yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def _transport(port: int) -> dict[str, Any]:
    return {"plugin": "redis", "port": port, "block_ms": 100, "claim_idle_ms": 3000, "discover_interval_s": 0.2,
            "backoff_max_s": 0.5}


def _marker_batch(n: int) -> list[dict[str, Any]]:
    """20 events; one exec whose command line carries the batch number (one alert per batch)."""
    batch = [event(n * 100 + i) for i in range(19)]
    batch.append({"evt.type": "exec", "evt.source": "ebpf_security", "evt.ts": time.time_ns(),
                  "proc.pid": 50_000 + n, "proc.tid": 50_000 + n, "proc.ppid": 1, "proc.uid": 0, "proc.gid": 0,
                  "proc.comm": "echo", "proc.cgroup": 1, "exec.filename": "/bin/echo",
                  "exec.argv": ["/bin/echo", "ravn-fleet-marker", f"batch-{n}"], "exec.ret": 0,
                  "exec.memfd": False})
    return batch



def written_alerts(path: Path) -> list[dict[str, Any]]:
    """The alerts a worker has written so far: complete lines only (a running or killed worker may be mid-line)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]

def test_two_ravn_analyze_workers_share_the_fleet(redis_server: RedisServer, make_transport: Made,
                                                  tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE)
    procs = []
    for w in range(2):
        cfg = _yaml(tmp_path / f"w{w}.yaml", {
            "ravn": {"host": f"worker{w}", "state_dir": str(tmp_path / f"w{w}"), "http_listen": ""},
            "transport": {**_transport(redis_server.port), "read_count": 1},
            "analyzers": [{"plugin": "analyzer_rules", "rule_files": [str(rules)]}],
            "sinks": [{"plugin": "jsonl", "path": str(tmp_path / f"w{w}.jsonl")},
                      {"plugin": "redis", "port": redis_server.port}],
        })
        procs.append(subprocess.Popen([RAVN, "analyze", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"w{w}.log", "w")))
    try:
        r = redis.Redis(port=redis_server.port)

        def workers_up() -> bool:
            names = {c["name"] for c in r.client_list()}
            return all(any(n.startswith(f"ravn-worker{w}-") for n in names) for w in range(2))

        assert wait_for(workers_up, 20), (tmp_path / "w0.log").read_text()[-2000:]
        agents = [make_transport(redis_server, host=f"agent{a}") for a in range(3)]
        for a, agent in enumerate(agents):  # streams exist and both workers read them before the real load
            agent.publish(f"agent{a}", [event(10_000 + a)])
            agent.flush(5)

        time.sleep(1.0)  # both workers found the streams (discover_interval_s 0.2) and block in XREADGROUP
        for n in range(60):
            agents[n % 3].publish(f"agent{n % 3}", _marker_batch(n))
        for a in agents:
            a.flush(5)

        def alerts() -> list[dict[str, Any]]:
            out = []
            for w in range(2):
                out += written_alerts(tmp_path / f"w{w}.jsonl")
            return [a for a in out if a.get("rule") == "fleet_test_marker"]

        assert wait_for(lambda: len(alerts()) >= 60, 20), (tmp_path / "w0.log").read_text()[-2000:]
        time.sleep(0.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
    got = alerts()
    numbers = sorted(int(a["description"].rsplit("batch-", 1)[1]) for a in got)
    assert numbers == list(range(60))  # every batch analyzed exactly once across the two workers
    per_worker = [sum(1 for line in (tmp_path / f"w{w}.jsonl").read_text().splitlines()
                      if json.loads(line).get("rule") == "fleet_test_marker") for w in range(2)]
    assert all(per_worker), per_worker  # both took a share
    assert {a["host"] for a in got} == {"agent0", "agent1", "agent2"}  # alerts name the host of the events
    assert r.xlen("ravn:alerts") == 60  # the redis sink of both workers
    assert r.get("ravn:threat_level") in (b"MEDIUM", b"HIGH")
    for a in range(3):
        assert r.xpending(f"ravn:events:{{agent{a}}}", "ravn-analyzers")["pending"] == 0
    assert all(p.returncode == 0 for p in procs)


def test_ravn_analyze_worker_sigkilled_the_other_takes_over(redis_server: RedisServer, make_transport: Made,
                                                            tmp_path: Path) -> None:
    """At-least-once through the CLI: worker 0 is SIGKILLed while it works; worker 1 reclaims what it held.
    Every batch raises its alert at least once; only batches worker 0 held when it died may repeat."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE)

    def start(w: int) -> subprocess.Popen[bytes]:
        cfg = _yaml(tmp_path / f"w{w}.yaml", {
            "ravn": {"host": f"worker{w}", "state_dir": str(tmp_path / f"w{w}"), "http_listen": ""},
            "transport": {**_transport(redis_server.port), "claim_idle_ms": 1000, "read_count": 4},
            "analyzers": [{"plugin": "analyzer_rules", "rule_files": [str(rules)]}],
            "sinks": [{"plugin": "jsonl", "path": str(tmp_path / f"w{w}.jsonl")}],
        })
        return subprocess.Popen([RAVN, "analyze", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"w{w}.log", "w"))

    def numbers(w: int) -> list[int]:
        return [int(a["description"].rsplit("batch-", 1)[1]) for a in written_alerts(tmp_path / f"w{w}.jsonl")
                if a.get("rule") == "fleet_test_marker"]

    victim = start(0)
    survivor = None
    try:
        agent = make_transport(redis_server, host="agent0")
        for n in range(300):
            agent.publish("agent0", _marker_batch(n))
        agent.flush(10)
        assert wait_for(lambda: len(numbers(0)) >= 20, 20), (tmp_path / "w0.log").read_text()[-2000:]
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        r = redis.Redis(port=redis_server.port)
        held = r.xpending("ravn:events:{agent0}", "ravn-analyzers")["pending"]
        survivor = start(1)
        assert wait_for(lambda: set(numbers(0)) | set(numbers(1)) == set(range(300)), 30), (
            sorted(set(range(300)) - set(numbers(0)) - set(numbers(1)))[:20])
    finally:
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
    assert held >= 1  # it died holding work
    repeated = len(numbers(0)) + len(numbers(1)) - 300
    assert 0 <= repeated <= held  # nothing lost; at most what it held is analyzed twice
    assert r.xpending("ravn:events:{agent0}", "ravn-analyzers")["pending"] == 0


@pytest.mark.kernel
def test_ravn_agent_publishes_real_kernel_events(redis_server: RedisServer, make_transport: Made,
                                                 tmp_path: Path) -> None:
    require_kernel()
    cfg = _yaml(tmp_path / "agent.yaml", {
        "ravn": {"host": "agent-k", "state_dir": str(tmp_path / "agent"), "http_listen": ""},
        "sources": [{"plugin": "ebpf_network"}],
        "transport": _transport(redis_server.port),
    })
    proc = subprocess.Popen([RAVN, "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "agent.log", "w"))
    worker = make_transport(redis_server, host="w")
    try:
        # a quiet host may have no network event before ours: wait for the agent itself, not for its first batch
        assert wait_for(lambda: "RAVN running" in (tmp_path / "agent.log").read_text() or proc.poll() is not None, 60)
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            child = subprocess.run([sys.executable, "-c", f"import socket,os; s=socket.create_connection("
                                    f"('127.0.0.1', {port})); print(os.getpid())"], capture_output=True, text=True)
            pid = int(child.stdout)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while not found and time.monotonic() < deadline:
            d = worker.consume(0.2)
            if d is not None:
                assert d.host == "agent-k"
                found += [e for e in d.batch if e.get("evt.type") == "connect" and e.get("proc.pid") == pid]
                worker.ack(d)
        assert found, (tmp_path / "agent.log").read_text()[-3000:]
        assert found[0]["net.dport"] == port and found[0]["net.daddr"] == "127.0.0.1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
