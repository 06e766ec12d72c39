"""Builtin HTTP endpoints: ``/healthz`` (JSON, 200 ok / 503 degraded) and ``/metrics`` (Prometheus text) on TCP,
and the same plus ``/status`` (the full status JSON, alerts with evidence) on the root-only unix socket
``<ravn.state_dir>/ravn.sock`` that ``ravn status`` and ``ravn top`` read; plus the ``ravn top`` subcommand.

Started by ``ravn_runtime_started`` (TCP when ``ravn.http_listen`` is set, config/ravn.yaml: ``127.0.0.1:9477``;
the socket always, when the state dir is usable), stopped by ``ravn_runtime_stopped``. Everything is read through
the ``snapshot`` callable the hook hands over (``Runtime.snapshot``). Each server runs on its own daemon thread,
serves at most ``ravn.http_max_connections`` requests at once (one thread each; more get 503) and closes every
connection ``ravn.http_timeout_s`` after accepting it. TCP has no authentication and carries no alert text: no
description, path, comm or error detail, and metric labels are names (component, rule, program, host) and levels.
The socket is 0600 in the 0700 state dir and serves only peers with RAVN's uid or root (SO_PEERCRED).

Cost: nothing per event. Every figure is read on scrape from counters the runtime keeps anyway (the latency
histogram filled once per batch, the alert counts filled once per alert). With ``ravn.bpf_stats: true`` the
kernel's BPF run-time statistics are switched on through ``BPF_ENABLE_STATS`` for as long as the daemon runs (the
kernel then times every program run: roughly 20-30 ns per run, i.e. a few percent on a hot tracepoint), and
``/metrics`` reports run time and run count of each of RAVN's programs, read with ``BPF_OBJ_GET_INFO_BY_FD`` on
the programs' fds.

Errors: a TCP address that cannot be bound is a StartupError (exit 2: whoever holds the port would answer
``/healthz`` in RAVN's name) unless ``ravn.http_optional`` is true, when it is logged and RAVN runs without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ravn_core import __version__, hookimpl
from ravn_core.errors import StartupError
from ravn_core.status import ensure_state_dir, socket_path

if TYPE_CHECKING:
    import argparse

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from ravn_core.components import Component, RuntimeSnapshot
    from ravn_core.config import CoreConfig
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
    """A prometheus_client collector that takes a ``RuntimeSnapshot`` on each scrape.

    :param snapshot: ``Runtime.snapshot`` (given to ``ravn_runtime_started``).
    :param sources: the runtime's source components, whose BPF programs' run statistics are exported.
    """

    def __init__(self, snapshot: Callable[[], RuntimeSnapshot], sources: list[Component] | None = None,
                 stats_on: Callable[[], bool] = bpf_stats_enabled) -> None:
        self.snapshot = snapshot
        self.sources = list(sources or [])
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

        snap = self.snapshot()
        status = snap.status
        stats = status["stats"]
        comps = status["components"]

        info = InfoMetricFamily("ravn", "RAVN build and role")
        info.add_metric([], {"version": __version__, "host": status["host"], "role": status["role"]})
        yield info
        up = GaugeMetricFamily("ravn_healthy", "1 when every component is ok, 0 when degraded")
        up.add_metric([], 1.0 if status["health"] == "ok" else 0.0)
        yield up
        yield GaugeMetricFamily("ravn_start_time_seconds", "when the runtime started (unix time)",
                                value=float(status["started_at"]))

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
        cap.add_metric(["ingress"], float(snap.queue_capacity))
        cap.add_metric(["sink"], float(snap.queue_capacity))
        yield cap
        an = CounterMetricFamily("ravn_analyzer_events", "events each analyzer processed", labels=["analyzer"])
        ask = CounterMetricFamily("ravn_analyzer_skipped", "events an analyzer did not see (restart delay, "
                                  "quarantine, a batch it failed on)", labels=["analyzer"])
        for name, a in stats["analyzers"].items():
            an.add_metric([name], float(a["processed"]))
            ask.add_metric([name], float(a.get("skipped", 0)))
        yield from (an, ask)
        yield CounterMetricFamily("ravn_dead_letters", "bad events set aside alone (the process tree or an analyzer "
                                  "raised on them); the rest of their batch was analyzed",
                                  value=float(stats.get("dead_letters", 0)))
        yield CounterMetricFamily("ravn_hosts_evicted", "hosts whose process tree and threat score were forgotten "
                                  "(over ravn.max_hosts)", value=float(stats.get("hosts_evicted", 0)))
        sa = CounterMetricFamily("ravn_sink_alerts", "alerts each sink took", labels=["sink"])
        sd = CounterMetricFamily("ravn_sink_dropped", "alerts a sink missed (failing or quarantined)",
                                 labels=["sink"])
        for name, s in stats["sinks"].items():
            sa.add_metric([name], float(s["alerts"]))
            sd.add_metric([name], float(s["dropped"]))
        yield from (sa, sd)

        # ---- latency
        buckets, acc = [], 0
        for bound, n in zip((*snap.latency_bounds, float("inf")), snap.latency_counts, strict=True):
            acc += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        yield HistogramMetricFamily("ravn_analysis_latency_seconds",
                                    "from the first event of a batch (kernel time) to the end of its analysis",
                                    buckets=buckets, sum_value=float(snap.latency_sum))

        # ---- alerts and threat
        al = CounterMetricFamily("ravn_alerts", "alerts sent to the sinks, by level and rule", labels=["level", "rule"])
        for (level, rule), n in sorted(snap.alert_counts.items()):
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
        inc = GaugeMetricFamily("ravn_incidents_open", "open incidents of a host, by level (held corroboration "
                                "not counted)", labels=["host", "level"])
        ic = {name: CounterMetricFamily(f"ravn_incidents_{name}", text, labels=["host"]) for name, text in (
            ("opened", "incidents opened"), ("closed", "incidents closed after ravn.threat.incident_window_s quiet"),
            ("evicted", "incidents evicted over ravn.threat.max_incidents"))}
        held = CounterMetricFamily("ravn_corroboration_held", "corroborating alerts kept in an incident of their own "
                                   "kind only, not sent to the sinks", labels=["host"])
        for host, t in status["hosts"].items():
            for level, n in (t.get("open_by_level") or {}).items():
                inc.add_metric([host, level], float(n))
            counters = t.get("counters") or {}
            for name, fam in ic.items():
                fam.add_metric([host], float(counters.get(f"incidents_{name}", 0)))
            held.add_metric([host], float(counters.get("corroboration_held", 0)))
        yield from (inc, *ic.values(), held)

        # ---- process tree (bounded by ravn.proctree_max)
        pt = GaugeMetricFamily("ravn_proctree_processes", "processes held in the process tree", labels=["host"])
        pe = CounterMetricFamily("ravn_proctree_evictions",
                                 "processes evicted from the tree by its bound (exited ones first, then LRU)",
                                 labels=["host"])
        for host, (size, evictions) in snap.proctrees.items():
            pt.add_metric([host], float(size))
            pe.add_metric([host], float(evictions))
        yield from (pt, pe)
        yield GaugeMetricFamily("ravn_proctree_max", "bound of each process tree (ravn.proctree_max)",
                                value=float(snap.proctree_max))

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
                                value=float(snap.memory_limit_bytes))

        # ---- BPF programs
        enabled = self.stats_on()
        yield GaugeMetricFamily("ravn_bpf_stats_enabled", "1 while kernel BPF statistics are on (ravn.bpf_stats or "
                                "the sysctl kernel.bpf_stats_enabled)",
                                value=1.0 if enabled else 0.0)
        rc = CounterMetricFamily("ravn_bpf_prog_run_count", "runs of each of RAVN's BPF programs "
                                 "(counted only while bpf stats are enabled)", labels=["source", "program", "id"])
        rtm = CounterMetricFamily("ravn_bpf_prog_run_time_seconds", "time spent in each of RAVN's BPF programs "
                                  "(only while bpf stats are enabled)", labels=["source", "program", "id"])
        for source in self.sources:
            for prog, fd in source_programs(source):
                try:
                    pi = prog_info(fd)
                except OSError:
                    continue  # the source is restarting: its fds are closing
                labels = [source.name, prog, str(pi["id"])]
                rc.add_metric(labels, float(pi["run_cnt"]))
                rtm.add_metric(labels, pi["run_time_ns"] / 1e9)
        yield from (rc, rtm)


def metrics_registry(snapshot: Callable[[], RuntimeSnapshot], sources: list[Component] | None = None,
                     stats_on: Callable[[], bool] = bpf_stats_enabled) -> Any:
    """A fresh CollectorRegistry with RAVN's collector and prometheus_client's process collector
    (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``, ...)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = RavnCollector(snapshot, sources, stats_on)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


# ---------------------------------------------------------------------------------------------- server
def healthz(snapshot: RuntimeSnapshot, detail: bool = False) -> tuple[int, dict[str, Any]]:
    """The /healthz answer: 200 ok / 503 degraded. Without ``detail`` (TCP) no component detail text goes out:
    a detail may quote an error about an event (a path, a comm); the root-only socket adds it."""
    status = snapshot.status
    fields = ("state", "heartbeat", "restarts", "quarantined", *(("detail",) if detail else ()))
    body = {
        "status": status["health"], "host": status["host"], "pid": status["pid"], "role": status["role"],
        "level": status["level"], "score": status["score"], "degraded": status["degraded"],
        "components": {n: {k: c[k] for k in fields} for n, c in status["components"].items()},
        "threads": status["threads"], "time": time.time(),
    }
    return (200 if status["health"] == "ok" else 503), body


class _Handler(BaseHTTPRequestHandler):
    server: _TcpServer | _UnixServer
    server_version = f"ravn/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection: a slot is never held by an idle keep-alive

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        private = self.server.private
        try:
            code, ctype, body = self._answer(path, private)
        except Exception as exc:  # a scrape must never take the endpoint down
            log.exception("HTTP %s failed", path)
            code, ctype, body = 500, "text/plain", f"{type(exc).__name__}\n".encode()
        try:
            self._send(code, ctype, body)
        except OSError as exc:  # the client went away, or its connection outlived http_timeout_s
            log.debug("HTTP %s: answer not sent: %s", path, exc)

    def _answer(self, path: str, private: bool) -> tuple[int, str, bytes]:
        if path == "/healthz":
            code, body = healthz(self.server.snapshot(), detail=private)
            return code, "application/json", json.dumps(body, default=str).encode()
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
        if path == "/status" and private:
            return 200, "application/json", json.dumps(self.server.snapshot().status, default=str).encode()
        if path == "/status":
            return 404, "text/plain", (b"/status (alerts with evidence) is served only on the root-only unix socket "
                                       b"<ravn.state_dir>/ravn.sock: run `sudo ravn status` or `sudo ravn top`\n")
        return 404, "text/plain", b"not found: try /healthz or /metrics\n"

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Bounded:
    """What both servers share: at most ``max_connections`` requests at once (one thread each; more are answered
    503 and closed at once), and each connection closed ``timeout_s`` after it was accepted, whatever its state
    (a request sent a byte at a time cannot hold a thread longer). The deadline is enforced by the serving
    thread between accepts (``service_actions``, every poll interval)."""

    snapshot: Callable[[], RuntimeSnapshot]
    registry: Any
    private: bool

    def _setup_bounds(self, max_connections: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.slots = threading.BoundedSemaphore(max_connections)
        self.rejected = 0
        self.reaped = 0
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(request):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        if not self.slots.acquire(blocking=False):
            self.rejected += 1
            self._refuse(request, b"503 Service Unavailable")
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        request.settimeout(self.timeout_s)
        with self._open_lock:
            self._open[request] = time.monotonic() + self.timeout_s
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._open_lock:  # request threads end concurrently: the count is updated under the lock
            deadline = self._open.pop(request, None)
            if deadline is None:
                return
            if time.monotonic() >= deadline - 0.05:  # ended by its socket timeout or by the reaper below
                self.reaped += 1
        self.slots.release()

    def _admit(self, request: socket.socket) -> bool:
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP connection from %s ended with an error", client_address or "unix", exc_info=True)

    @staticmethod
    def _refuse(request: socket.socket, status: bytes) -> None:
        try:
            request.setblocking(False)
            request.send(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._open_lock:
            late = [s for s, deadline in self._open.items() if deadline < now]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its thread's read or write fails now, and the thread ends
            except OSError:
                pass


class _TcpServer(_Bounded, ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst is accepted and answered (503) at once rather than left in the backlog


class _UnixServer(_Bounded, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The root-only endpoint: a 0600 socket in the 0700 state dir, and only peers with RAVN's uid (or root)
    are served (SO_PEERCRED)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def _admit(self, request: socket.socket) -> bool:
        creds = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return True
        log.warning("status socket: refused a connection from uid %d", uid)
        self._refuse(request, b"403 Forbidden")
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` / ``"[::1]:9477"`` / ``":9477"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def bind_unix(server: socketserver.UnixStreamServer, path: str) -> None:
    """Bind ``server`` to ``path`` (0600), replacing a stale socket; a path too long for sun_path is bound
    through /proc/self/fd of its directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket; remove it")
        os.unlink(path)
    dfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        name = path if len(os.fsencode(path)) < 104 else f"/proc/self/fd/{dfd}/{os.path.basename(path)}"
        server.socket.bind(name)
        os.chmod(path, 0o600)
    finally:
        os.close(dfd)
    server.server_address = path
    server.server_activate()


class _EndpointCollector:
    """The endpoints' own bounds at work: connections refused over the cap, connections closed at the deadline."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        refused = CounterMetricFamily("ravn_http_refused", "connections answered 503 and closed: the endpoint "
                                      "already served ravn.http_max_connections", labels=["endpoint"])
        late = CounterMetricFamily("ravn_http_timed_out", "connections closed ravn.http_timeout_s after they were "
                                   "accepted", labels=["endpoint"])
        for server in self.endpoint.servers:
            label = "unix" if server.private else "tcp"
            refused.add_metric([label], float(server.rejected))
            late.add_metric([label], float(server.reaped))
        yield from (refused, late)


class HttpEndpoint:
    """The endpoints of one runtime: the TCP server (/healthz, /metrics), the root-only unix socket server
    (/status too), their threads and (optionally) the BPF stats fd."""

    def __init__(self, snapshot: Callable[[], RuntimeSnapshot], core: CoreConfig, state_dir: str,
                 sources: list[Component]) -> None:
        self.snapshot = snapshot
        self.core = core
        self.stats_fd = -1
        self.registry = metrics_registry(snapshot, sources, self.bpf_stats_on)
        self.registry.register(_EndpointCollector(self))
        self.servers: list[_TcpServer | _UnixServer] = []
        self.threads: list[threading.Thread] = []
        self.server: _TcpServer | None = None
        self.unix: _UnixServer | None = None
        self.address: tuple[Any, ...] = ()
        try:
            if core.http_listen:
                self.server = self._tcp(core.http_listen)
            if state_dir:
                self.unix = self._unix(socket_path(state_dir))
        except BaseException:
            self._close()
            raise

    def _tcp(self, listen: str) -> _TcpServer | None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = _TcpServer.__new__(_TcpServer)
        server.address_family = family
        try:
            _TcpServer.__init__(server, (host, port), _Handler)
        except OSError as exc:
            if not self.core.http_optional:
                raise StartupError(f"ravn.http_listen {listen}: cannot listen ({exc.strerror}); another process "
                                   f"may hold the port and would answer /healthz in RAVN's name (set "
                                   f"ravn.http_optional: true to run without the endpoint)") from None
            log.error("HTTP endpoint %s cannot listen: %s; running without /healthz and /metrics "
                      "(ravn.http_optional)", listen, exc)
            return None
        self._prepare(server, private=False)
        self.address = server.server_address
        return server

    def _unix(self, path: str) -> _UnixServer:
        server = _UnixServer(path, _Handler, bind_and_activate=False)
        self._prepare(server, private=True)  # before binding: closed with the others if the bind fails
        bind_unix(server, path)
        return server

    def _prepare(self, server: _TcpServer | _UnixServer, private: bool) -> None:
        server._setup_bounds(self.core.http_max_connections, self.core.http_timeout_s)
        server.snapshot = self.snapshot
        server.registry = self.registry
        server.private = private
        self.servers.append(server)

    def bpf_stats_on(self) -> bool:
        return self.stats_fd >= 0 or bpf_stats_enabled()

    @property
    def url(self) -> str:
        host, port = str(self.address[0]), int(self.address[1])
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        if self.core.bpf_stats:
            try:
                self.stats_fd = enable_bpf_stats()
                log.info("kernel BPF run-time statistics enabled while RAVN runs (ravn.bpf_stats)")
            except OSError as exc:
                log.warning("cannot enable BPF statistics (ravn.bpf_stats): %s", exc)
        for server in self.servers:
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="ravn-http-unix" if server.private else "ravn-http", daemon=True)
            t.start()
            self.threads.append(t)
        if self.server is not None:
            log.info("HTTP endpoint on %s (/healthz, /metrics)", self.url)
        if self.unix is not None:
            log.info("status on the root-only socket %s (/status, /healthz, /metrics)", self.unix.server_address)

    def stop(self) -> None:
        for server in self.servers:
            if any(t.is_alive() for t in self.threads):
                server.shutdown()
        self._close()
        for t in self.threads:
            t.join(5)
        if self.stats_fd >= 0:
            os.close(self.stats_fd)
            self.stats_fd = -1

    def _close(self) -> None:
        for server in self.servers:
            server.server_close()
        if self.unix is not None:
            try:
                os.unlink(str(self.unix.server_address))
            except OSError:
                pass


_endpoints: dict[Any, HttpEndpoint] = {}  # keyed by the runtime's snapshot callable (bound methods compare equal)
_lock = threading.Lock()


def endpoint_for(runtime: Runtime) -> HttpEndpoint | None:
    """The endpoint serving ``runtime`` (tests use it to find the bound port)."""
    return _endpoints.get(runtime.snapshot)


@hookimpl
def ravn_runtime_started(runtime: Runtime, components: list[Component],
                         snapshot: Callable[[], RuntimeSnapshot]) -> None:
    core = runtime.config.core
    try:
        ensure_state_dir(runtime.context.state_dir)
        state_dir = runtime.context.state_dir
    except (OSError, StartupError) as exc:  # `ravn replay` as a user (Runtime.start refused it for other roles)
        log.warning("no status socket: cannot use state dir %s: %s", runtime.context.state_dir, exc)
        state_dir = ""
    if not core.http_listen and not state_dir:
        return
    ep = HttpEndpoint(snapshot, core, state_dir, [c for c in components if c.kind == "source"])
    ep.start()
    with _lock:
        _endpoints[snapshot] = ep


@hookimpl
def ravn_runtime_stopped(stats: dict[str, Any], snapshot: Callable[[], RuntimeSnapshot]) -> None:
    with _lock:
        ep = _endpoints.pop(snapshot, None)
    if ep is not None:
        ep.stop()


@hookimpl
def ravn_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ravn_core.top import add_top_command

    if subparsers is not None:  # the hook-order test fires the hook without a parser
        add_top_command(subparsers)
