"""A worker process for the kill test: prints the sequence numbers it acked, then holds a batch forever.

usage: python redis_worker_proc.py <port> <state_dir> <batches to finish before holding>
"""

from __future__ import annotations

import sys
import time

from ravn_transport_redis.config import RedisTransportConfig
from ravn_transport_redis.transport import RedisTransport

from ravn_core.testing import make_context


def main() -> None:
    port, state_dir, finish = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cfg = RedisTransportConfig(port=port, block_ms=100, read_count=4, discover_interval_s=0.2)
    t = RedisTransport("redis", cfg, make_context("victim", state_dir=state_dir, host="victim"))
    done = 0
    while True:
        d = t.consume(1.0)
        if d is None:
            continue
        if done == finish:
            print("HOLD", flush=True)  # mid-batch: analyzers running, never acked
            time.sleep(3600)
        t.ack(d)
        t.flush(0)  # the XACK is on the server before we say so
        print("ACKED", " ".join(str(e["test.seq"]) for e in d.batch), flush=True)
        done += 1


if __name__ == "__main__":
    main()
