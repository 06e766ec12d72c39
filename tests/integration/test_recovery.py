"""The error-recovery table of docs/OPERATIONS.md, each fault made to happen for real through the real runtime.

| fault                         | test                                                                       |
|-------------------------------|----------------------------------------------------------------------------|
| thread crash                  | a source whose poll raises is restarted; a thread that really dies (a      |
|                               | BaseException escapes its loop) is restarted by the health thread           |
| (error budget)                | a component over its budget is quarantined, the others run on               |
| memory issues                 | RSS over ravn.memory_limit_mb -> one self-alert through the sinks, trees   |
|                               | trimmed                                                                     |
| (drops)                       | drop ratio over the threshold -> ONE rate-limited self-alert               |
| eBPF program failure          | a real probe's tracepoint detached for real -> health thread reattaches    |
| Redis disconnection           | real redis-server killed and restarted -> reconnect with backoff, nothing  |
|                               | lost                                                                        |
| AI model error                | analyzer_onnx failing -> quarantined, analyzer_rules goes on (rules only)  |
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ravn_core import hookimpl
from ravn_core.bpf.testing import bystander
from ravn_core.components import Alert, Analyzer, BatchContext, PluginConfig, RuntimeContext, Source
from ravn_core.config import validate
from ravn_core.runtime import Runtime, runtime_context
from ravn_core.testing import (
    CollectSink,
    RedisServer,
    make_host,
    require_kernel,
    require_redis_server,
    run_pipeline,
    synthetic_event,
    wait_for,
)

FAST = {"restart_backoff_s": 0.02, "restart_backoff_max_s": 0.05, "error_budget": 3, "error_window_s": 60,
        "health_interval_s": 0.1}


# ---------------------------------------------------------------------------------------------- throwaway plugins
class Escape(BaseException):
    """Not an Exception: the runtime's per-call ``except Exception`` does not catch it, so the thread dies."""


class PacedConfig(PluginConfig):
    batches_per_s: float = 50.0
    events_per_batch: int = 10
    max_batches: int = 1_000_000
    escape_at_poll: int = -1  # raise Escape (kills the thread) on this poll number, once


class PacedSource(Source):
    """Emits ``events_per_batch`` synthetic exec events ``batches_per_s`` times a second."""

    def __init__(self, name: str, config: PacedConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.sent = 0
        self.polls = 0
        self.escaped = False
        self._next = time.monotonic()

    def start(self) -> None:
        self._next = time.monotonic()

    def poll(self, timeout_ms: int) -> list[dict[str, Any]]:
        self.polls += 1
        if self.polls == self.config.escape_at_poll and not self.escaped:
            self.escaped = True
            raise Escape("escaped the source loop")
        if self.sent >= self.config.max_batches:
            time.sleep(timeout_ms / 1000)
            return []
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout_ms / 1000))
            if self._next > time.monotonic():
                return []
        self._next += 1.0 / self.config.batches_per_s
        n = self.config.events_per_batch
        base = self.sent * n
        self.sent += 1
        return [synthetic_event("exec", seq=base + i, source=self.name) for i in range(n)]

    def stop(self) -> None:
        pass


class SlowConfig(PluginConfig):
    sleep_s: float = 0.05


class SlowAnalyzer(Analyzer):
    def analyze(self, batch: list[dict[str, Any]], ctx: BatchContext) -> list[Alert]:
        time.sleep(self.config.sleep_s)
        return []


class RecoveryPlugin:
    @hookimpl
    def ravn_register_sources(self, registry: Any) -> None:
        registry.add("paced_source", PacedSource, PacedConfig)

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        registry.add("slow_analyzer", SlowAnalyzer, SlowConfig)


def host() -> Any:
    return make_host((RecoveryPlugin(), "recovery"))


def sink_of(rt: Runtime) -> CollectSink:
    comp = rt.sinks[0].component if rt.sinks else None
    if comp is None:  # run_pipeline's stop() clears rt.sinks; the instance is the last one made
        return CollectSink.instances[-1]
    assert isinstance(comp, CollectSink)
    return comp


# ---------------------------------------------------------------------------------------------- thread crash
def test_source_whose_poll_raises_is_restarted_and_recovers() -> None:
    config = {"ravn": FAST, "sources": [{"plugin": "test_source", "batches": 5, "fail_after": 2, "fail_times": 2}],
              "analyzers": [{"plugin": "test_analyzer"}]}
    rt, stats = run_pipeline(config, until=lambda rt: rt.counters["analyzed"] == 50)
    slot = rt.sources[0]
    assert slot.restarts == 2 and not slot.quarantined
    assert slot.component.starts == 3  # started once, restarted after each failure
    assert stats["analyzed"] == 50 and stats["dropped"] == 0


def test_thread_that_really_dies_is_restarted_by_the_health_thread() -> None:
    config = {"ravn": FAST, "sources": [{"plugin": "paced_source", "batches_per_s": 100, "escape_at_poll": 5}],
              "analyzers": [{"plugin": "test_analyzer"}]}
    seen: dict[str, Any] = {}

    def until(rt: Runtime) -> bool:
        t = rt.supervisor.threads.get("source:paced_source")
        if t is not None and not t.is_alive():
            seen["dead"] = True
        if seen.get("dead"):
            seen["names"] = {Path(d, "comm").read_text().strip() for d in Path("/proc/self/task").iterdir()}
        return bool(rt.counters.get("thread_restarts")) and rt.sources[0].component.sent >= 30

    rt, stats = run_pipeline(config, host=host(), until=until, timeout_s=10)
    assert rt.sources[0].component.escaped
    assert stats["thread_restarts"] == 1
    # the kernel knows each thread by its name (top -H, ps -L), the restarted one too; cut to 15 bytes
    assert seen["names"] >= {"source:paced_so", "analysis:0", "health"}
    assert rt.sources[0].component.sent >= 30  # events flow again after the restart
    assert stats["analyzed"] == stats["accepted"] > 0


# ---------------------------------------------------------------------------------------------- quarantine
def test_component_over_its_error_budget_is_quarantined_while_the_rest_runs_on() -> None:
    config = {
        "ravn": FAST,
        "sources": [{"plugin": "test_source", "name": "bad", "fail_after": 0, "fail_times": 0},
                    {"plugin": "paced_source", "name": "good", "batches_per_s": 200, "max_batches": 100}],
        "analyzers": [{"plugin": "test_analyzer", "name": "flaky", "fail_on_batch": 3, "fail_times": 1000},
                      {"plugin": "test_analyzer", "name": "steady"}],
        "sinks": [{"plugin": "test_sink"}],
    }
    rt, stats = run_pipeline(config, host=host(), until=lambda rt: rt.counters["analyzed"] == 1000, timeout_s=20)
    bad, good = rt.sources
    flaky, steady = rt.analyzers[0]
    assert bad.quarantined and bad.restarts == 4 and flaky.quarantined and flaky.restarts == 4
    assert not good.quarantined and not steady.quarantined
    assert stats["analyzed"] == 1000 and steady.processed == 1000
    h = rt.status()
    assert set(h["degraded"]) == {"source:bad", "analyzer:flaky"}


# ---------------------------------------------------------------------------------------------- memory
def test_memory_over_the_limit_alerts_through_the_sinks_and_trims_caches(tmp_path: Path) -> None:
    from ravn_core.builtin.health import anon_rss_bytes

    limit_mb = max(1.0, anon_rss_bytes() / 1048576 / 2)  # well below the private memory this process already uses
    config = {"ravn": {**FAST, "memory_limit_mb": limit_mb},
              "sources": [{"plugin": "paced_source", "batches_per_s": 20}],
              "analyzers": [{"plugin": "test_analyzer"}], "sinks": [{"plugin": "test_sink"}]}
    h = host()
    rt = Runtime(validate({**config, "ravn": {"state_dir": str(tmp_path), **config["ravn"]}}, h.registries()), h)
    rt.start()
    try:
        tree = rt.trees[rt.hostname]
        seeded = len(tree)
        assert seeded > 20  # seeded from /proc
        sink = sink_of(rt)
        assert wait_for(lambda: any(a.rule == "ravn_memory_limit" for a in sink.alerts), 5)
        alert = next(a for a in sink.alerts if a.rule == "ravn_memory_limit")
        assert alert.analyzer == "ravn" and "ravn.self" in alert.tags
        assert alert.evidence["rss_bytes"] > alert.evidence["limit_bytes"]
        assert wait_for(lambda: len(tree) < seeded / 2, 5)  # trimmed
        time.sleep(0.5)  # several more health rounds: the alert is rate-limited (one per 5 minutes)
        assert sum(a.rule == "ravn_memory_limit" for a in sink.alerts) == 1
        assert rt.counters["self_alerts"] == 1
    finally:
        rt.stop()


def test_heap_freed_after_a_burst_is_handed_back(tmp_path: Path) -> None:
    """A burst (here: 100 MB of 1 KB blocks, every 64th kept, as a fork storm's events and process entries leave
    it) frees memory that glibc keeps; the health thread trims it once private memory is 32 MB over its lowest."""
    from ravn_core.builtin.health import anon_rss_bytes

    config = {"ravn": {**FAST, "state_dir": str(tmp_path), "heap_trim_interval_s": 0.3},
              "sources": [{"plugin": "paced_source", "batches_per_s": 20}],
              "analyzers": [{"plugin": "test_analyzer"}], "sinks": [{"plugin": "test_sink"}]}
    h = host()
    rt = Runtime(validate(config, h.registries()), h)
    rt.start()
    try:
        time.sleep(0.5)  # the health thread has seen the settled memory
        trims = rt.counters["heap_trims"]
        blocks = [bytes(1000) for _ in range(100_000)]  # > 512 bytes: glibc malloc, not pymalloc
        kept = blocks[::64]  # pins pages in the middle of the heap: free() alone cannot give them back
        peak = anon_rss_bytes()  # read before the free: the health thread may trim at any moment after it
        del blocks
        assert wait_for(lambda: anon_rss_bytes() < peak - 48 * 1048576, 5), (peak, anon_rss_bytes())
        # the health thread counts the trim after it returns: the memory can show it a moment before the counter
        assert wait_for(lambda: rt.counters["heap_trims"] > trims, 2), (trims, rt.counters["heap_trims"])
        assert len(kept) == 1563
    finally:
        rt.stop()


# ---------------------------------------------------------------------------------------------- drops
def test_drop_rate_over_the_threshold_raises_one_rate_limited_alert() -> None:
    config = {"ravn": {**FAST, "queue_batches": 1, "drop_alert_ratio": 0.05},
              "transport": {"plugin": "embedded", "capacity_batches": 1},
              "sources": [{"plugin": "paced_source", "batches_per_s": 400, "events_per_batch": 20}],
              "analyzers": [{"plugin": "slow_analyzer", "sleep_s": 0.6}], "sinks": [{"plugin": "test_sink"}]}
    _rt, stats = run_pipeline(config, host=host(), duration=2.5)
    assert stats["dropped"] > 0.05 * stats["accepted"], stats  # the fault happened, over many health rounds
    sink = CollectSink.instances[-1]
    drop_alerts = [a for a in sink.alerts if a.rule == "ravn_event_drops"]
    assert len(drop_alerts) == 1 and stats["self_alerts"] == 1
    assert drop_alerts[0].evidence["dropped"] > 0 and "dropped" in drop_alerts[0].description
    # accounting stays exact while dropping: everything accepted was analyzed or counted dropped
    assert stats["analyzed"] + stats["dropped"] == stats["accepted"]


# ---------------------------------------------------------------------------------------------- probe programs gone
@pytest.mark.kernel
def test_detached_probe_program_is_reattached_by_the_health_thread(tmp_path: Path) -> None:
    require_kernel()
    import ravn_ebpf_network.plugin

    h = make_host((ravn_ebpf_network.plugin, "ebpf_network"))
    cfg = validate({"ravn": {"state_dir": str(tmp_path), "health_interval_s": 0.2},
                    "sources": [{"plugin": "ebpf_network", "udp": False}],
                    "analyzers": []}, h.registries())
    # RAVN never watches itself or its children: let a bystander stand in as RAVN so this test's children show up
    with bystander() as fake_ravn:
        rt = Runtime(cfg, h, context=dataclasses.replace(runtime_context(cfg), ravn_pid=fake_ravn))
        _reattach_and_see_a_connect(rt)


def _reattach_and_see_a_connect(rt: Runtime) -> None:
    rt.start()
    try:
        slot = rt.sources[0]
        probe = slot.component
        old = probe.bpf
        assert old is not None and probe.attached() == len(probe._expected)
        victim = next(tp for _fn, tp in probe._expected if "connect" in tp)
        old.detach(victim)  # the program is really detached from the kernel tracepoint
        assert probe.health().state == "failed"
        assert wait_for(lambda: probe.bpf is not None and probe.bpf is not old
                        and probe.attached() == len(probe._expected), 60)
        assert rt.status()["components"]["source:ebpf_network"]["state"] == "ok"
        # and it reports again: a connect (refused: nothing listens, still a connect event) shows up
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, not listening
        port = closed.getsockname()[1]
        before = slot.accepted

        def connect_seen() -> bool:
            subprocess.run(["python3", "-c", f"import socket; socket.socket().connect_ex(('127.0.0.1', {port}))"],
                           check=False, timeout=10)
            return slot.accepted > before

        assert wait_for(connect_seen, 20, 0.5)
        closed.close()
    finally:
        rt.stop()


# ---------------------------------------------------------------------------------------------- redis gone
@pytest.mark.redis
def test_redis_killed_and_restarted_reconnects_with_backoff_and_loses_nothing(tmp_path: Path) -> None:
    require_redis_server()
    import ravn_transport_redis.plugin

    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        h = make_host((RecoveryPlugin(), "recovery"), (ravn_transport_redis.plugin, "transport_redis"))
        cfg = validate({"ravn": {"state_dir": str(tmp_path), **FAST},
                        "sources": [{"plugin": "paced_source", "batches_per_s": 50, "max_batches": 200}],
                        "transport": {"plugin": "redis", "port": server.port, "backoff_s": 0.05,
                                      "backoff_max_s": 0.5, "block_ms": 100, "socket_timeout_s": 2,
                                      # entries delivered in the reply the kill cut off stay pending for this
                                      # consumer; they are reclaimed after claim_idle_ms (30 s by default)
                                      "claim_idle_ms": 1000},
                        "analyzers": [{"plugin": "test_analyzer"}]}, h.registries())
        rt = Runtime(cfg, h)
        rt.start()
        try:
            transport = rt.transport_slot.component  # type: ignore[union-attr]
            assert wait_for(lambda: rt.counters["analyzed"] >= 200, 10)
            server.kill()  # SIGKILL: Redis is gone
            assert wait_for(lambda: transport.health().state == "degraded", 10)
            analyzed_while_down = rt.counters["analyzed"]
            time.sleep(1.0)  # the source keeps producing; the transport spools
            assert rt.sources[0].component.sent > analyzed_while_down // 10
            server.start()  # same port, same data dir (append-only file)
            assert wait_for(lambda: transport.health().state == "ok", 15)
            assert wait_for(lambda: rt.counters["analyzed"] == 2000, 20), repr(
                ({k: v for k, v in rt.stats().items() if isinstance(v, int)}, transport.health()))
        finally:
            stats = rt.stop()
        assert stats["accepted"] == stats["analyzed"] == 2000 and stats["dropped"] == 0
        seen = rt.analyzers[0][0].component.seen
        assert sorted(seen) == list(range(2000))  # exactly once (reclaimed entries may come late)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- model error
def test_model_error_falls_back_to_rules_only(tmp_path: Path) -> None:
    """A broken ONNX model: analyzer_onnx steps aside (degraded, named in /healthz), analyzer_rules keeps alerting."""
    import ravn_analyzers.onnx.plugin
    import ravn_analyzers.rules.plugin

    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: synthetic_exec\n  description: \"{proc.comm} ran {exec.filename}\"\n  score: 90\n"
                     "  events: [exec]\n  condition: proc.comm = synthetic\n")
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(4096))  # not a model: onnxruntime cannot load it
    h = make_host((RecoveryPlugin(), "recovery"), (ravn_analyzers.rules.plugin, "analyzer_rules"),
                  (ravn_analyzers.onnx.plugin, "analyzer_onnx"))
    cfg = validate({"ravn": {"state_dir": str(tmp_path / "state"), **FAST},
                    "sources": [{"plugin": "paced_source", "batches_per_s": 50, "max_batches": 50}],
                    "analyzers": [{"plugin": "analyzer_rules", "rule_files": [str(rules)]},
                                  {"plugin": "analyzer_onnx", "model_path": str(model)}],
                    "sinks": [{"plugin": "test_sink"}]}, h.registries())
    rt = Runtime(cfg, h)
    rt.start()
    try:
        assert wait_for(lambda: rt.counters["analyzed"] == 500, 15)
        onnx = next(s for s in rt.analyzers[0] if s.spec.plugin == "analyzer_onnx")
        rules_slot = next(s for s in rt.analyzers[0] if s.spec.plugin == "analyzer_rules")
        health = onnx.health()
        assert health.state == "degraded" and "model" in health.detail, health
        assert rules_slot.processed == 500 and not rules_slot.quarantined
        assert wait_for(lambda: any(a.rule == "synthetic_exec" for a in sink_of(rt).alerts), 5)
        status = rt.status()
        assert status["degraded"] == ["analyzer:analyzer_onnx"]
    finally:
        rt.stop()


def test_threads_of_a_stopped_runtime_are_gone() -> None:
    before = {t.name for t in threading.enumerate()}
    _rt, _ = run_pipeline({"sources": [{"plugin": "test_source"}], "analyzers": [{"plugin": "test_analyzer"}]},
                         duration=0.3)
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not {n for n in left if n.startswith("ravn-") and n != "ravn-http"}, left
