"""Helpers of the Redis transport tests: config/transport builders and a collector that drains workers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from ravn_transport_redis.config import RedisTransportConfig
from ravn_transport_redis.transport import RedisTransport

from ravn_core.components import Delivery
from ravn_core.testing import RedisServer, make_context

FAST = {"block_ms": 100, "claim_idle_ms": 400, "discover_interval_s": 0.2, "backoff_s": 0.02,
        "backoff_max_s": 0.3}


def event(seq: int, host: str = "h1", source: str = "ebpf_file") -> dict[str, Any]:
    """A realistic event: 13 fields, as ebpf_file would produce, carrying a test sequence number."""
    return {"evt.type": "open", "evt.source": source, "evt.ts": 1_732_600_000_000_000_000 + seq,
            "proc.pid": 1000 + seq % 50, "proc.tid": 1000 + seq % 50, "proc.ppid": 1, "proc.uid": 0,
            "proc.gid": 0, "proc.comm": "bash", "proc.cgroup": 4242, "file.path": f"/tmp/f{seq}",
            "file.flags": 0, "test.seq": seq, "test.host": host}


def batches(host: str, start: int, n_batches: int, size: int) -> Iterator[list[dict[str, Any]]]:
    for b in range(n_batches):
        yield [event(start + b * size + i, host) for i in range(size)]


class Made:
    """Transports built by a test; closed at teardown."""

    def __init__(self, tmp: str) -> None:
        self.items: list[RedisTransport] = []
        self.tmp = tmp

    def __call__(self, server: RedisServer | None = None, host: str = "h1", **kw: Any) -> RedisTransport:
        opts = dict(FAST)
        if server is not None:
            opts["port"] = server.port
        opts.update(kw)
        state_dir = opts.pop("state_dir", None) or f"{self.tmp}/{host}-{len(self.items)}"
        t = RedisTransport("redis", RedisTransportConfig(**opts), make_context(host, state_dir=state_dir, host=host))
        self.items.append(t)
        return t


@pytest.fixture
def make_transport(tmp_path: Any) -> Iterator[Made]:
    made = Made(str(tmp_path))
    yield made
    for t in made.items:
        t.close()


def drain(workers: Iterable[RedisTransport], want: int, timeout_s: float = 10.0,
          key: str = "test.seq") -> dict[int, list[int]]:
    """Consume and ack from the workers in turn until ``want`` events arrived; {worker index: [seq, ...]}."""
    workers = list(workers)
    got: dict[int, list[int]] = {i: [] for i in range(len(workers))}
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in got.values()) < want and time.monotonic() < deadline:
        for i, w in enumerate(workers):
            d: Delivery | None = w.consume(0.05)
            if d is not None:
                got[i].extend(e[key] for e in d.batch)
                w.ack(d)
    for w in workers:
        w.flush(0)  # queued acks out, as the runtime's shutdown does
    return got


def all_seqs(got: dict[int, list[int]]) -> list[int]:
    return sorted(s for v in got.values() for s in v)
