"""Builtin HTTP endpoint: ``/healthz`` (JSON, 200 ok / 503 degraded), ``/metrics`` (Prometheus text) and
``/status`` (the full ``Runtime.status()`` JSON that ``ravn top`` reads); plus the ``ravn top`` subcommand.

Started by ``ravn_runtime_started`` when ``ravn.http_listen`` is set (config/ravn.yaml: ``127.0.0.1:9477``),
stopped by ``ravn_runtime_stopped``. Served by a stdlib ``ThreadingHTTPServer`` on its own daemon thread; it binds
loopback unless told otherwise and has no authentication, so keep it on loopback or behind a proxy.

Cost: nothing per event. Every figure is read on scrape from counters the runtime keeps anyway
(``Runtime.stats()``/``status()``, the latency histogram filled once per batch, the alert counts filled once
per alert). With ``ravn.bpf_stats: true`` the kernel's BPF run-time statistics are switched on through
``BPF_ENABLE_STATS`` for as long as the daemon runs (the kernel then times every program run: roughly 20-30 ns
per run, i.e. a few percent on a hot tracepoint), and ``/metrics`` reports run time and run count of each of
RAVN's programs, read with ``BPF_OBJ_GET_INFO_BY_FD`` on the programs' fds.

Errors: a port that cannot be bound is logged once; the daemon runs on without the endpoint.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ravn_core import __version__, hookimpl

if TYPE_CHECKING:
    import argparse

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from ravn_core.components import Component
    from ravn_core.runtime import Runtime

log = logging.getLogger("ravn.http")

LEVEL_VALUE = {"LOW": 0, "MEDIUM": 1, "HIGH": 2}


# ---------------------------------------------------------------------------------------------- BPF statistics
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYS_BPF = 321  # x86_64
#: offsets in struct bpf_prog_info (include/uapi/linux/bpf.h; stable ABI, appended to only)
PROG_INFO_SIZE = 232
OFF_ID, OFF_NAME, OFF_RUN_TIME_NS, OFF_RUN_CNT = 4, 64, 192, 200

_libc: Any = None


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def prog_info(fd: int) -> dict[str, Any]:
    """id, name, run_time_ns and run_cnt of the BPF program behind ``fd`` (BPF_OBJ_GET_INFO_BY_FD)."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(PROG_INFO_SIZE)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    raw = info.raw
    return {
        "id": int.from_bytes(raw[OFF_ID:OFF_ID + 4], "little"),
        "name": raw[OFF_NAME:OFF_NAME + 16].split(b"\0", 1)[0].decode(errors="replace"),
        "run_time_ns": int.from_bytes(raw[OFF_RUN_TIME_NS:OFF_RUN_TIME_NS + 8], "little"),
        "run_cnt": int.from_bytes(raw[OFF_RUN_CNT:OFF_RUN_CNT + 8], "little"),
    }


def enable_bpf_stats() -> int:
    """Turn on kernel BPF run-time statistics while the returned fd stays open (BPF_ENABLE_STATS).

    Unlike ``sysctl kernel.bpf_stats_enabled=1`` this cannot be left on by a crash: the kernel turns the
    statistics off when the last such fd closes.
    """
    attr = ctypes.create_string_buffer(8)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(BPF_STATS_RUN_TIME)), 4)
    return _bpf(BPF_ENABLE_STATS, attr)


def bpf_stats_enabled() -> bool:
    """The sysctl ``kernel.bpf_stats_enabled``. It does not show statistics enabled through a BPF_ENABLE_STATS fd
    (the kernel reports only the sysctl's own setting there)."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def source_programs(component: Any) -> Iterator[tuple[str, int]]:
    """(function name, program fd) of a BCC source's loaded programs (``BccProbe.bpf.programs``)."""
    bpf = getattr(component, "bpf", None)
    programs = getattr(bpf, "programs", None) if bpf is not None else None
    if not programs:
        return
    for name, fd in list(programs.items()):
        if isinstance(fd, int) and fd >= 0:
            yield str(name), fd


# ---------------------------------------------------------------------------------------------- metrics
class RavnCollector:
    """A prometheus_client collector that reads the runtime's counters on each scrape."""

    def __init__(self, runtime: Runtime, stats_on: Callable[[], bool] = bpf_stats_enabled) -> None:
        self.runtime = runtime
        self.stats_on = stats_on

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families are produced on scrape

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        from ravn_core.runtime import LATENCY_BUCKETS

        rt = self.runtime
        status = rt.status()
        stats = status["stats"]
        comps = status["components"]

        info = InfoMetricFamily("ravn", "RAVN build and role")
        info.add_metric([], {"version": __version__, "host": rt.hostname, "role": rt.role})
        yield info
        up = GaugeMetricFamily("ravn_healthy", "1 when every component is ok, 0 when degraded")
        up.add_metric([], 1.0 if status["health"] == "ok" else 0.0)
        yield up
        yield GaugeMetricFamily("ravn_start_time_seconds", "when the runtime started (unix time)",
                                value=float(rt.started_at))

        # ---- sources
        ev = CounterMetricFamily("ravn_source_events", "events a source returned (accepted by the runtime)",
                                 labels=["source"])
        qd = CounterMetricFamily("ravn_source_dropped",
                                 "events dropped at the stage queue (full past its short wait)", labels=["source"])
        kd = CounterMetricFamily("ravn_source_kernel_drops",
                                 "records the kernel could not put in the source's ring buffer", labels=["source"])
        de = CounterMetricFamily("ravn_source_decode_errors", "records the source could not decode",
                                 labels=["source"])
        for name, s in stats["sources"].items():
            ev.add_metric([name], s["accepted"])
            qd.add_metric([name], s["dropped"])
            kd.add_metric([name], s["kernel_drops"])
            counters = comps.get(f"source:{name}", {}).get("counters", {})
            de.add_metric([name], float(counters.get("decode_errors", 0)))
        yield from (ev, qd, kd, de)

        # ---- stages
        stage = CounterMetricFamily("ravn_stage_events", "events that passed each stage of the pipeline",
                                    labels=["stage"])
        for key, label in (("accepted", "accepted"), ("published", "published"), ("analyzed", "analyzed")):
            stage.add_metric([label], float(stats.get(key, 0)))
        yield stage
        lost = CounterMetricFamily("ravn_stage_lost", "events or items given up at a stage (shutdown bound, "
                                   "transport quarantined)", labels=["stage"])
        lost.add_metric(["publish"], float(stats.get("publish_lost", 0)))
        lost.add_metric(["sink_queue"], float(stats.get("sink_items_lost", 0)))
        yield lost
        yield CounterMetricFamily("ravn_analyzed_batches", "batches analyzed",
                                  value=float(stats.get("analyzed_batches", 0)))
        yield CounterMetricFamily("ravn_acked_batches", "batches acknowledged to the transport after the sinks",
                                  value=float(stats.get("acked", 0)))
        depth = GaugeMetricFamily("ravn_queue_depth", "batches waiting in a queue", labels=["queue"])
        depth.add_metric(["ingress"], float(stats["ingress_depth"]))
        depth.add_metric(["sink"], float(stats["sink_depth"]))
        depth.add_metric(["transport"], float(stats["transport_pending"]))
        yield depth
        cap = GaugeMetricFamily("ravn_queue_capacity", "capacity of a stage queue, in batches", labels=["queue"])
        cap.add_metric(["ingress"], float(rt.core.queue_batches))
        cap.add_metric(["sink"], float(rt.core.queue_batches))
        yield cap
        an = CounterMetricFamily("ravn_analyzer_events", "events each analyzer processed", labels=["analyzer"])
        for name, a in stats["analyzers"].items():
            an.add_metric([name], float(a["processed"]))
        yield an
        sa = CounterMetricFamily("ravn_sink_alerts", "alerts each sink took", labels=["sink"])
        sd = CounterMetricFamily("ravn_sink_dropped", "alerts a sink missed (failing or quarantined)",
                                 labels=["sink"])
        for name, s in stats["sinks"].items():
            sa.add_metric([name], float(s["alerts"]))
            sd.add_metric([name], float(s["dropped"]))
        yield from (sa, sd)

        # ---- latency
        buckets, acc = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), list(rt.latency_buckets), strict=True):
            acc += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        yield HistogramMetricFamily("ravn_analysis_latency_seconds",
                                    "from the first event of a batch (kernel time) to the end of its analysis",
                                    buckets=buckets, sum_value=float(rt.latency_sum))

        # ---- alerts and threat
        al = CounterMetricFamily("ravn_alerts", "alerts sent to the sinks, by level and rule", labels=["level", "rule"])
        for (level, rule), n in sorted(dict(rt.alert_counts).items()):
            al.add_metric([level, rule], float(n))
        yield al
        yield CounterMetricFamily("ravn_alerts_raised", "alerts the analyzers raised, before folding",
                                  value=float(stats.get("alerts", 0)))
        yield CounterMetricFamily("ravn_self_alerts", "alerts RAVN raised about itself (memory, drops)",
                                  value=float(stats.get("self_alerts", 0)))
        yield CounterMetricFamily("ravn_heap_trims", "times freed heap was handed back to the kernel after a burst "
                                  "(ravn.heap_trim_interval_s)", value=float(stats.get("heap_trims", 0)))
        yield CounterMetricFamily("ravn_threat_updates", "threat level changes", value=float(stats.get(
            "threat_updates", 0)))
        score = GaugeMetricFamily("ravn_threat_score", "host threat score 0-100", labels=["host"])
        lvl = GaugeMetricFamily("ravn_threat_level", "host threat level: 0 LOW, 1 MEDIUM, 2 HIGH", labels=["host"])
        for host, t in status["hosts"].items():
            score.add_metric([host], float(t["score"]))
            lvl.add_metric([host], float(LEVEL_VALUE.get(t["level"], 0)))
        yield from (score, lvl)

        # ---- process tree (bounded by ravn.proctree_max)
        pt = GaugeMetricFamily("ravn_proctree_processes", "processes held in the process tree", labels=["host"])
        pe = CounterMetricFamily("ravn_proctree_evictions", "processes evicted from the tree by its bound (LRU)",
                                 labels=["host"])
        for host, tree in list(rt.trees.items()):
            pt.add_metric([host], float(len(tree)))
            pe.add_metric([host], float(tree.evictions))
        yield from (pt, pe)
        yield GaugeMetricFamily("ravn_proctree_max", "bound of each process tree (ravn.proctree_max)",
                                value=float(rt.core.proctree_max))

        # ---- supervision
        cu = GaugeMetricFamily("ravn_component_up", "1 when the component reports ok", labels=["component"])
        cr = CounterMetricFamily("ravn_component_restarts", "restarts of a component after an error",
                                 labels=["component"])
        cq = GaugeMetricFamily("ravn_component_quarantined", "1 when the error budget is spent",
                               labels=["component"])
        hb = GaugeMetricFamily("ravn_component_heartbeat_seconds", "last heartbeat of the component's thread "
                               "(unix time)", labels=["component"])
        for name, c in comps.items():
            cu.add_metric([name], 1.0 if c["state"] == "ok" else 0.0)
            cr.add_metric([name], float(c["restarts"]))
            cq.add_metric([name], 1.0 if c["quarantined"] else 0.0)
            hb.add_metric([name], float(c["heartbeat"]))
        yield from (cu, cr, cq, hb)
        yield CounterMetricFamily("ravn_thread_restarts", "runtime threads found dead and restarted",
                                  value=float(stats.get("thread_restarts", 0)))
        yield GaugeMetricFamily("ravn_threads", "threads in the daemon", value=float(threading.active_count()))
        yield GaugeMetricFamily("ravn_private_memory_bytes", "private (anonymous) resident memory, the figure "
                                "ravn.memory_limit_mb applies to", value=float(status.get("anon_rss_bytes", 0)))
        yield GaugeMetricFamily("ravn_memory_limit_bytes", "ravn.memory_limit_mb in bytes",
                                value=float(rt.core.memory_limit_mb * 1048576))

        # ---- BPF programs
        enabled = self.stats_on()
        yield GaugeMetricFamily("ravn_bpf_stats_enabled", "1 while kernel BPF statistics are on (ravn.bpf_stats or "
                                "the sysctl kernel.bpf_stats_enabled)",
                                value=1.0 if enabled else 0.0)
        rc = CounterMetricFamily("ravn_bpf_prog_run_count", "runs of each of RAVN's BPF programs "
                                 "(counted only while bpf stats are enabled)", labels=["source", "program", "id"])
        rtm = CounterMetricFamily("ravn_bpf_prog_run_time_seconds", "time spent in each of RAVN's BPF programs "
                                  "(only while bpf stats are enabled)", labels=["source", "program", "id"])
        for slot in list(rt.sources):
            for prog, fd in source_programs(slot.component):
                try:
                    pi = prog_info(fd)
                except OSError:
                    continue  # the source is restarting: its fds are closing
                labels = [slot.name, prog, str(pi["id"])]
                rc.add_metric(labels, float(pi["run_cnt"]))
                rtm.add_metric(labels, pi["run_time_ns"] / 1e9)
        yield from (rc, rtm)


def metrics_registry(runtime: Runtime, stats_on: Callable[[], bool] = bpf_stats_enabled) -> Any:
    """A fresh CollectorRegistry with RAVN's collector and prometheus_client's process collector
    (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``, ...)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = RavnCollector(runtime, stats_on)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


# ---------------------------------------------------------------------------------------------- server
def healthz(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    status = runtime.status()
    body = {
        "status": status["health"], "host": status["host"], "pid": status["pid"], "role": status["role"],
        "level": status["level"], "score": status["score"], "degraded": status["degraded"],
        "components": {n: {"state": c["state"], "detail": c["detail"], "heartbeat": c["heartbeat"],
                           "restarts": c["restarts"], "quarantined": c["quarantined"]}
                       for n, c in status["components"].items()},
        "threads": status["threads"], "time": time.time(),
    }
    return (200 if status["health"] == "ok" else 503), body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"ravn/{__version__}"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                code, body = healthz(self.server.runtime)
                self._send(code, "application/json", json.dumps(body, default=str).encode())
            elif path == "/status":
                self._send(200, "application/json", json.dumps(self.server.runtime.status(), default=str).encode())
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
            else:
                self._send(404, "text/plain", b"not found: try /healthz, /metrics or /status\n")
        except Exception as exc:  # a scrape must never take the endpoint down
            log.exception("HTTP %s failed", path)
            self._send(500, "text/plain", f"{type(exc).__name__}: {exc}\n".encode())

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    runtime: Runtime
    registry: Any


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` / ``"[::1]:9477"`` / ``":9477"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class HttpEndpoint:
    """The endpoint of one runtime: its server, its thread and (optionally) the BPF stats fd."""

    def __init__(self, runtime: Runtime, listen: str) -> None:
        import socket

        self.runtime = runtime
        host, port = parse_listen(listen)
        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = _Server((host, port), _Handler)
        self.server.runtime = runtime
        self.stats_fd = -1
        self.server.registry = metrics_registry(runtime, self.bpf_stats_on)
        self.address = self.server.server_address
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="ravn-http", daemon=True)

    def bpf_stats_on(self) -> bool:
        return self.stats_fd >= 0 or bpf_stats_enabled()

    @property
    def url(self) -> str:
        host, port = str(self.address[0]), int(self.address[1])
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        if self.runtime.core.bpf_stats:
            try:
                self.stats_fd = enable_bpf_stats()
                log.info("kernel BPF run-time statistics enabled while RAVN runs (ravn.bpf_stats)")
            except OSError as exc:
                log.warning("cannot enable BPF statistics (ravn.bpf_stats): %s", exc)
        self.thread.start()
        log.info("HTTP endpoint on %s (/healthz, /metrics, /status)", self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        if self.stats_fd >= 0:
            os.close(self.stats_fd)
            self.stats_fd = -1


_endpoints: dict[int, HttpEndpoint] = {}
_lock = threading.Lock()


def endpoint_for(runtime: Runtime) -> HttpEndpoint | None:
    """The endpoint serving ``runtime`` (tests use it to find the bound port)."""
    return _endpoints.get(id(runtime))


@hookimpl
def ravn_runtime_started(runtime: Runtime, components: list[Component]) -> None:
    listen = runtime.core.http_listen
    if not listen:
        return
    try:
        ep = HttpEndpoint(runtime, listen)
    except OSError as exc:
        log.error("HTTP endpoint %s cannot listen: %s; running without /healthz and /metrics", listen, exc)
        return
    ep.start()
    with _lock:
        _endpoints[id(runtime)] = ep


@hookimpl
def ravn_runtime_stopped(stats: dict[str, Any]) -> None:
    # The hook does not name the runtime: stop the endpoints of every runtime that is stopping.
    with _lock:
        gone = [k for k, ep in _endpoints.items() if ep.runtime._stopping.is_set()]
        eps = [_endpoints.pop(k) for k in gone]
    for ep in eps:
        ep.stop()


@hookimpl
def ravn_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ravn_core.top import add_top_command

    if subparsers is not None:  # the hook-order test fires the hook without a parser
        add_top_command(subparsers)
