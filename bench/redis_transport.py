"""Redis transport throughput and latency: agent process -> one redis-server -> 1 or 2 worker processes.

Measured in one run, on the same machine, so the ratios mean something:
  - ``redis-benchmark -P 32 -n 200000 XADD s '*' f v`` against the same server (Redis's own XADD rate);
  - end to end events/s with one and with two worker processes (and with one in wire format 1, what agents wrote
    before format 2, for a before/after in the same run): a separate agent process publishes pre-built
    batches of realistic events (13-15 fields; open/connect/exec mixed) through ``RedisTransport.publish`` as fast
    as it can; workers ``consume`` (decode) and ``ack``, reading ``evt.type`` of every event; the clock runs from
    the first publish to the last event consumed;
  - latency publish -> consume (p50/p99) at a paced rate below saturation, and at saturation (includes backlog);
  - the embedded transport in one process (publisher thread -> consumer thread reading ``evt.type``): an upper
    bound that passes references, which nothing that serializes can approach;
  - the real runtime end to end, the comparison an operator makes: the same synthetic source (shallow copies of
    the same realistic events, as a decoder would hand out fresh dicts) and the default ``analyzer_rules`` (plus
    a clock analyzer that timestamps each batch) with a JSONL sink, (a) as one ``ravn`` process on the embedded
    transport, (b) as a ``ravn agent`` process plus 1 and 2 ``ravn analyze`` processes through Redis. Each child
    builds a ``Runtime`` exactly as the CLI does, with the bench source and clock registered as a throwaway
    plugin; the figure is events analyzed per second, from the source's first poll to the last batch analyzed.

    .venv/bin/python bench/redis_transport.py [--events 2000000] [--batch 1000] [--runtime-events 1000000]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import redis

from ravn_core import hookimpl
from ravn_core.components import Alert, Analyzer, BatchContext, PluginConfig, RuntimeContext, Source
from ravn_core.testing import RedisServer, make_context

HERE = os.path.abspath(__file__)


def make_events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    comms = ["bash", "python3", "curl", "sshd", "nginx", "postgres", "systemd", "cron"]
    out: list[dict[str, Any]] = []
    for i in range(n):
        pid = rnd.randrange(300, 60000)
        uid = rnd.choice([0, 1000])
        base = {"evt.source": "", "evt.ts": 1_764_100_000_000_000_000 + i * 1000, "proc.pid": pid,
                "proc.tid": pid + rnd.randrange(3), "proc.ppid": rnd.randrange(1, 3000), "proc.uid": uid,
                "proc.gid": uid, "proc.comm": rnd.choice(comms), "proc.cgroup": rnd.randrange(1, 9000)}
        kind = rnd.random()
        if kind < 0.6:
            base.update({"evt.type": "open", "evt.source": "ebpf_file",
                         "file.path": f"/var/lib/app/{rnd.randrange(10**6)}.db", "file.flags": rnd.choice([0, 1, 577]),
                         "file.ret": rnd.randrange(3, 200), "file.write": rnd.random() < 0.3})
        elif kind < 0.9:
            base.update({"evt.type": "connect", "evt.source": "ebpf_network", "net.family": "ipv4",
                         "net.proto": "tcp", "net.saddr": "10.0.0.5", "net.sport": rnd.randrange(32768, 60999),
                         "net.daddr": f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}", "net.dport": 443,
                         "net.fd": rnd.randrange(3, 100), "net.ret": 0})
        else:
            base.update({"evt.type": "exec", "evt.source": "ebpf_security", "exec.filename": "/usr/bin/curl",
                         "exec.argv": ["curl", "-s", f"https://example.com/{rnd.randrange(1000)}"], "exec.ret": 0,
                         "exec.memfd": False})
        out.append(base)
    return out


def transport(port: int, host: str, **kw: Any) -> Any:
    from ravn_transport_redis.config import RedisTransportConfig
    from ravn_transport_redis.transport import RedisTransport

    cfg = RedisTransportConfig(port=port, block_ms=50, discover_interval_s=0.2, **kw)
    return RedisTransport("redis", cfg, make_context(host, state_dir=tempfile.mkdtemp(prefix="ravn-bench-"), host=host))


# ------------------------------------------------------------------------------------------------ child roles
def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def role_agent(port: int, events: int, batch: int, rate: float, stream_format: int) -> None:
    import functools

    from ravn_transport_redis import codec
    from ravn_transport_redis import publisher as publisher_module

    # format 1 is what agents wrote before format 2: the before/after comparison in the same run
    publisher_module.stream_fields = functools.partial(codec.stream_fields, fmt=stream_format)
    pool = [make_events(batch, seed=s) for s in range(8)]
    t = transport(port, "bench-agent", pipeline_batches=32)
    cpu0 = cpu_s()
    n_batches = events // batch
    start = time.time()
    for i in range(n_batches):
        if rate:
            due = start + i * batch / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
        t.publish("bench-agent", list(pool[i % len(pool)]))
    t.flush(120)
    end = time.time()
    h = t.health().counters
    t.close()
    print(json.dumps({"start": start, "end": end, "published": h["published_events"], "cpu": cpu_s() - cpu0}),
          flush=True)


def role_worker(port: int, total: int) -> None:
    t = transport(port, "bench-worker", read_count=8)
    r = redis.Redis(port=port)
    n = 0
    lat: list[float] = []
    first = last = 0.0
    cpu0 = 0.0
    while True:
        d = t.consume(0.1)
        if d is None:
            if int(r.get("bench:consumed") or 0) >= total:
                break
            continue
        now = time.time()
        if not first:
            first, cpu0 = now, cpu_s()
        last = now
        for e in d.batch:  # the least an analyzer does
            _ = e["evt.type"]
        lat.append(now - d.token.published_ns / 1e9)
        t.ack(d)
        n += len(d.batch)
        r.incrby("bench:consumed", len(d.batch))
    cpu = cpu_s() - cpu0
    t.close()
    print(json.dumps({"events": n, "first": first, "last": last, "lat": lat, "cpu": cpu}), flush=True)


# ------------------------------------------------------------------------------------------------ runtime roles
class BenchSourceConfig(PluginConfig):
    events: int = 1_000_000
    batch: int = 1000


FIRST_CPU = [0.0]  # process CPU time at the first batch polled or analyzed (startup is not counted)


class BenchSource(Source):
    """``events`` events in batches: fresh dicts (shallow copies of a pool of realistic events), then nothing."""

    first_poll = 0.0

    def __init__(self, name: str, config: BenchSourceConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.pool = [make_events(config.batch, seed=s) for s in range(8)]
        self.sent = 0

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> list[dict[str, Any]]:
        if self.sent >= self.config.events:
            time.sleep(timeout_ms / 1000)
            return []
        if not BenchSource.first_poll:
            BenchSource.first_poll = time.time()
            FIRST_CPU[0] = FIRST_CPU[0] or cpu_s()
        batch = list(map(dict.copy, self.pool[(self.sent // self.config.batch) % len(self.pool)]))
        self.sent += len(batch)
        return batch

    def stop(self) -> None:
        pass


class BenchClock(Analyzer):
    """Runs after the real analyzers: counts events and timestamps the last batch (no per-event work)."""

    events = 0
    last = 0.0

    def analyze(self, batch: list[dict[str, Any]], ctx: BatchContext) -> list[Alert]:
        FIRST_CPU[0] = FIRST_CPU[0] or cpu_s()
        BenchClock.events += len(batch)
        BenchClock.last = time.time()
        return []


class BenchRuntimePlugin:
    @hookimpl
    def ravn_register_sources(self, registry: Any) -> None:
        registry.add("bench_source", BenchSource, BenchSourceConfig)

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        registry.add("bench_clock", BenchClock, PluginConfig)


def role_runtime(layout: str, port: int, events: int, batch: int) -> None:
    """One ravn process: ``embedded`` (role all), ``agent`` or ``analyze``; built like the CLI builds it."""
    from ravn_core.config import validate
    from ravn_core.plugins import PluginHost
    from ravn_core.runtime import Runtime

    state = tempfile.mkdtemp(prefix="ravn-bench-")
    host = PluginHost()
    host.register(BenchRuntimePlugin(), "bench")
    host.load(autoload=True)
    host.register_components()
    redis_transport = {"plugin": "redis", "port": port, "block_ms": 50, "discover_interval_s": 0.2}
    cfg = validate({
        # the source is unpaced, so the default queues fill (2 x 262144 events, ~0.5 GB): no memory alarm for that
        "ravn": {"state_dir": state, "log_level": "warning", "memory_limit_mb": 4096},
        "sources": [{"plugin": "bench_source", "events": events, "batch": batch}],
        "transport": {"plugin": "embedded"} if layout == "embedded" else redis_transport,
        "analyzers": [{"plugin": "analyzer_rules"}, {"plugin": "bench_clock"}],
        "sinks": [{"plugin": "jsonl", "path": f"{state}/alerts.jsonl"}],
    }, host.registries())
    logging.basicConfig(level=logging.WARNING)
    rt = Runtime(cfg, host, role={"embedded": "all", "agent": "agent", "analyze": "analyze"}[layout])
    rt.start()
    r = redis.Redis(port=port) if layout == "analyze" else None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if layout == "agent":
            assert rt.transport_slot is not None
            if rt.transport_slot.component.health().counters["published_events"] >= events:
                break
        elif layout == "embedded":
            if BenchClock.events >= events:
                break
        else:
            assert r is not None
            r.set(f"bench:analyzed:{os.getpid()}", BenchClock.events)
            keys = r.keys("bench:analyzed:*")
            if sum(int(v or 0) for v in r.mget(keys)) >= events:
                break
    cpu = cpu_s() - FIRST_CPU[0]
    stats = rt.stop("bench")
    print(json.dumps({"layout": layout, "first_poll": BenchSource.first_poll, "last": BenchClock.last,
                      "analyzed": BenchClock.events, "accepted": stats["accepted"], "dropped": stats["dropped"],
                      "alerts": stats["alerts"], "cpu": cpu}), flush=True)


def run_runtime(server: RedisServer, workers: int, events: int, batch: int) -> dict[str, Any]:
    """workers == 0: one ravn process on the embedded transport; else an agent and ``workers`` analyze processes."""
    if workers == 0:
        p = spawn("--role", "runtime", "--layout", "embedded", "--port", server.port, "--events", events,
                  "--batch", batch)
        procs = [p]
        res = [result(p)]
        start, end = res[0]["first_poll"], res[0]["last"]
    else:
        r = redis.Redis(port=server.port)
        r.flushall()
        ws = [spawn("--role", "runtime", "--layout", "analyze", "--port", server.port, "--events", events)
              for _ in range(workers)]
        time.sleep(2.0)  # workers built, connected and waiting
        agent = spawn("--role", "runtime", "--layout", "agent", "--port", server.port, "--events", events,
                      "--batch", batch)
        procs = [agent, *ws]
        a = result(agent)
        rs = [result(w) for w in ws]
        res = [a, *rs]
        start, end = a["first_poll"], max(x["last"] for x in rs)
    analyzed = sum(x["analyzed"] for x in res)
    del procs
    return {"workers": workers, "events_per_s": round(analyzed / (end - start)), "analyzed": analyzed,
            "expected": events, "seconds": round(end - start, 3), "per_process_analyzed": [x["analyzed"] for x in res],
            # each process's CPU (from its first batch) over the events it handled (agent: published)
            "cpu_us_per_event": [round(1e6 * x["cpu"] / max(1, x["analyzed"] or x["accepted"]), 2) for x in res],
            "dropped": sum(x["dropped"] for x in res),
            "alerts": sum(x["alerts"] for x in res)}


# ------------------------------------------------------------------------------------------------ parent
def spawn(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, HERE, *map(str, args)], stdout=subprocess.PIPE, text=True)


def result(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = p.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def run_e2e(server: RedisServer, workers: int, events: int, batch: int, rate: float = 0,
            stream_format: int = 2) -> dict[str, Any]:
    r = redis.Redis(port=server.port)
    r.flushall()
    redis_cpu0 = _redis_cpu(r)
    ws = [spawn("--role", "worker", "--port", server.port, "--events", events) for _ in range(workers)]
    time.sleep(0.5)  # workers connected and blocked in XREADGROUP
    agent = spawn("--role", "agent", "--port", server.port, "--events", events, "--batch", batch, "--rate", rate,
                  "--stream-format", stream_format)
    a = result(agent)
    rs = [result(w) for w in ws]
    got = sum(x["events"] for x in rs)
    end = max(x["last"] for x in rs)
    lat = sorted(v for x in rs for v in x["lat"])
    secs = end - a["start"]
    redis_cpu = _redis_cpu(r) - redis_cpu0
    return {"cpu_us_per_event_agent": round(1e6 * a["cpu"] / got, 3),
            "cpu_us_per_event_workers": round(1e6 * sum(x["cpu"] for x in rs) / got, 3),
            "cpu_us_per_event_redis": round(1e6 * redis_cpu / got, 3),
            "workers": workers, "events": got, "expected": (events // batch) * batch, "seconds": round(secs, 3),
            "events_per_s": round(got / secs), "agent_publish_s": round(a["end"] - a["start"], 3),
            "per_worker": [x["events"] for x in rs],
            "latency_ms_p50": round(1000 * statistics.median(lat), 2),
            "latency_ms_p99": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)}


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_benchmark_xadd(port: int) -> float:
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-P", "32", "-n", "200000", "-q",
                          "XADD", "s", "*", "f", "v"], capture_output=True, text=True, timeout=120).stdout
    m = re.findall(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    return float(m[-1]) if m else 0.0


def embedded(events: int, batch: int) -> tuple[float, float]:
    from ravn_core.builtin.transport_embedded import EmbeddedConfig, EmbeddedTransport

    pool = [make_events(batch, seed=s) for s in range(8)]
    t = EmbeddedTransport("embedded", EmbeddedConfig(), make_context("embedded"))
    n_batches = events // batch

    def pub() -> None:
        for i in range(n_batches):
            t.publish("h", list(pool[i % len(pool)]))

    start = time.perf_counter()
    cpu0 = cpu_s()
    th = threading.Thread(target=pub)
    th.start()
    n = 0
    while n < n_batches * batch:
        d = t.consume(1)
        if d is None:
            break
        for e in d.batch:
            _ = e["evt.type"]
        t.ack(d)
        n += len(d.batch)
    th.join()
    return n / (time.perf_counter() - start), 1e6 * (cpu_s() - cpu0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="parent")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--paced-rate", type=float, default=100_000, help="events/s of the latency run")
    ap.add_argument("--runtime-events", type=int, default=1_000_000, help="events of each runtime run (0: skip)")
    ap.add_argument("--layout", default="", help=argparse.SUPPRESS)
    ap.add_argument("--stream-format", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "agent":
        return role_agent(args.port, args.events, args.batch, args.rate, args.stream_format)
    if args.role == "worker":
        return role_worker(args.port, args.events)
    if args.role == "runtime":
        return role_runtime(args.layout, args.port, args.events, args.batch)

    load_before = os.getloadavg()[0]
    server = RedisServer().start()
    try:
        xadd = redis_benchmark_xadd(server.port)
        print(f"redis-benchmark -P 32 -n 200000 XADD s '*' f v: {xadd:,.0f} XADD/s")
        one = run_e2e(server, 1, args.events, args.batch)
        print(f"end to end, 1 worker:  {one['events_per_s']:,} events/s ({one['events']:,} events in "
              f"{one['seconds']} s; agent published in {one['agent_publish_s']} s); latency at saturation "
              f"p50 {one['latency_ms_p50']} ms p99 {one['latency_ms_p99']} ms")
        v1 = run_e2e(server, 1, args.events, args.batch, stream_format=1)
        print(f"end to end, 1 worker, wire format 1 (before): {v1['events_per_s']:,} events/s; CPU us/event "
              f"agent {v1['cpu_us_per_event_agent']} worker {v1['cpu_us_per_event_workers']} redis "
              f"{v1['cpu_us_per_event_redis']}")
        two = run_e2e(server, 2, args.events, args.batch)
        print(f"end to end, 2 workers: {two['events_per_s']:,} events/s ({two['events']:,} events in {two['seconds']} "
              f"s, split {two['per_worker']}); latency at saturation p50 {two['latency_ms_p50']} ms p99 "
              f"{two['latency_ms_p99']} ms; CPU us/event agent {two['cpu_us_per_event_agent']} workers "
              f"{two['cpu_us_per_event_workers']} redis {two['cpu_us_per_event_redis']}")
        paced_events = int(args.paced_rate * 5)
        paced = run_e2e(server, 1, paced_events, args.batch, rate=args.paced_rate)
        print(f"paced at {args.paced_rate:,.0f} events/s, 1 worker: latency publish->consume p50 "
              f"{paced['latency_ms_p50']} ms p99 {paced['latency_ms_p99']} ms")
        info = redis.Redis(port=server.port).info("memory")
        rt: dict[int, dict[str, Any]] = {}
        if args.runtime_events:
            for workers in (0, 1, 2):
                rt[workers] = run_runtime(server, workers, args.runtime_events, args.batch)
                x = rt[workers]
                what = "1 ravn process, embedded transport" if not workers else \
                    f"ravn agent + {workers} ravn analyze through redis"
                print(f"runtime, analyzer_rules, {what}: {x['events_per_s']:,} events analyzed/s "
                      f"({x['analyzed']:,} of {x['expected']:,} in {x['seconds']} s; per process "
                      f"{x['per_process_analyzed']}; CPU us/event per process {x['cpu_us_per_event']}; dropped "
                      f"{x['dropped']}; alerts {x['alerts']})")
    finally:
        server.stop()
    emb, emb_cpu = embedded(args.events, args.batch)
    print(f"embedded transport (1 process, publisher thread -> consumer thread): {emb:,.0f} events/s, "
          f"{emb_cpu:.3f} CPU us/event")
    cpu_total = one["cpu_us_per_event_agent"] + one["cpu_us_per_event_workers"] + one["cpu_us_per_event_redis"]
    print(f"CPU per event (1 worker run): agent {one['cpu_us_per_event_agent']} us, worker "
          f"{one['cpu_us_per_event_workers']} us, redis-server {one['cpu_us_per_event_redis']} us; "
          f"total {cpu_total:.2f} us = {1e6 / cpu_total:,.0f} events/s per core of CPU, "
          f"one worker core alone: {1e6 / one['cpu_us_per_event_workers']:,.0f} events/s")
    best = max(one["events_per_s"], two["events_per_s"])
    print(json.dumps({
        "bench": "redis_transport", "batch": args.batch, "events": args.events,
        "redis_benchmark_xadd_per_s": round(xadd), "e2e_1_worker_events_per_s": one["events_per_s"],
        "e2e_2_workers_events_per_s": two["events_per_s"],
        "e2e_1_worker_format1_events_per_s": v1["events_per_s"],
        "cpu_us_per_event_format1_agent_worker_redis": [v1["cpu_us_per_event_agent"],
                                                        v1["cpu_us_per_event_workers"], v1["cpu_us_per_event_redis"]],
        "batches_per_s_1_worker": round(one["events_per_s"] / args.batch),
        "ratio_events_to_redis_benchmark_xadd": round(best / xadd, 2) if xadd else None,
        "ratio_batches_to_redis_benchmark_xadd": round(best / args.batch / xadd, 4) if xadd else None,
        "latency_saturated_ms_p50": one["latency_ms_p50"], "latency_saturated_ms_p99": one["latency_ms_p99"],
        "paced_rate": args.paced_rate, "latency_paced_ms_p50": paced["latency_ms_p50"],
        "latency_paced_ms_p99": paced["latency_ms_p99"], "embedded_events_per_s": round(emb),
        "ratio_to_embedded": round(best / emb, 3),
        "cpu_us_per_event_agent": one["cpu_us_per_event_agent"],
        "cpu_us_per_event_worker": one["cpu_us_per_event_workers"],
        "cpu_us_per_event_redis": one["cpu_us_per_event_redis"],
        "cpu_us_per_event_embedded": round(emb_cpu, 3),
        "worker_core_capacity_events_per_s": round(1e6 / one["cpu_us_per_event_workers"]),
        "lost_per_run": [x["expected"] - x["events"] for x in (one, v1, two)],
        "cpu_us_per_event_2_workers_agent_workers_redis": [two["cpu_us_per_event_agent"],
                                                           two["cpu_us_per_event_workers"],
                                                           two["cpu_us_per_event_redis"]],
        "redis_used_memory_peak": info.get("used_memory_peak_human"),
        **({"runtime_events": args.runtime_events,
            "runtime_embedded_events_per_s": rt[0]["events_per_s"],
            "runtime_redis_1_worker_events_per_s": rt[1]["events_per_s"],
            "runtime_redis_2_workers_events_per_s": rt[2]["events_per_s"],
            "runtime_ratio_redis_to_embedded": round(max(rt[1]["events_per_s"], rt[2]["events_per_s"])
                                                     / rt[0]["events_per_s"], 3),
            "runtime_cpu_us_per_event_per_process": {k: x["cpu_us_per_event"] for k, x in rt.items()},
            "runtime_lost": sum(x["expected"] - x["analyzed"] for x in rt.values())} if rt else {}),
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
