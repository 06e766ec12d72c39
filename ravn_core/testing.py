"""Public test helpers for RAVN and its plugin authors, loaded as the pytest plugin ``ravn`` (pytest11).

- ``require_root()``, ``require_kernel()``, ``require_redis_server()``: skip outside CI, **fail** under CI=true,
  because CI runs as root on a kernel with BTF, tracepoints and ring buffers and installs redis-server.
- ``make_context(name)``: a RuntimeContext for building a component by hand.
- ``RedisServer``: a real redis-server on a free loopback port in a temp dir (``redis_server`` fixture).
- ``ravn_host``: a fresh, loaded PluginHost per test.
- ``as_nobody(fn, *args)``: run ``fn`` in a forked child as the unprivileged user ``nobody`` (uid/gid 65534) and
  return what it returned (or raise what it raised): attacks by a local user, reproduced for real.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ravn_core import hookimpl
from ravn_core.components import Alert, Analyzer, BatchContext, RuntimeContext, Sink, Source, ThreatUpdate
from ravn_core.components import PluginConfig as PluginConfigBase

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: .ci/run must provide it (make setup)", pytrace=False)
    pytest.skip(reason)


def require(condition: bool, reason: str) -> None:
    """Skip outside CI, fail under CI=true, unless ``condition`` holds (``reason`` says what is missing)."""
    if not condition:
        _missing(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        _missing("this test needs root")


def require_kernel() -> None:
    """What every real-probe test needs: root and what the daemon checks before loading probes (capabilities,
    tracefs, kernel headers, bcc: ``ravn_core.bpf.env.check_environment``)."""
    from ravn_core.bpf.env import check_environment
    from ravn_core.errors import UnusableEnvironment

    require_root()
    try:
        check_environment()
    except UnusableEnvironment as exc:
        _missing(str(exc))


NOBODY = 65534


def as_nobody(fn: Any, *args: Any, timeout_s: float = 60.0) -> Any:
    """Call ``fn(*args)`` in a forked child that dropped to uid/gid 65534 (no supplementary groups, no
    capabilities); return its result, or re-raise its exception here. ``fn``'s result must pickle. Needs root."""
    import pickle
    import select

    require_root()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:  # reported to the parent
                out = ("raised", exc)
            try:
                data = pickle.dumps(out)
            except Exception as exc:
                data = pickle.dumps(("raised", RuntimeError(f"unpicklable result: {exc!r}")))
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"as_nobody({getattr(fn, '__name__', fn)}) took over {timeout_s}s")
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("the child running as nobody died without an answer")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "raised":
        raise value
    return value


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        _missing("redis-server is not installed")
        raise AssertionError("unreachable")
    return path


def make_context(name: str = "test", state_dir: str | None = None, **kw: Any) -> RuntimeContext:
    return RuntimeContext(
        host=kw.pop("host", "testhost"),
        ravn_pid=kw.pop("ravn_pid", os.getpid()),
        state_dir=state_dir or tempfile.mkdtemp(prefix="ravn-test-"),
        logger=logging.getLogger(f"ravn.test.{name}"),
        **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server process on 127.0.0.1:<free port>, its data in a temp dir. Restartable."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="ravn-redis-")
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--daemonize", "no", *self.extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {' '.join(args)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port} within {timeout_s}s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ravn_host() -> Iterator[Any]:
    from ravn_core.plugins import PluginHost

    host = PluginHost()
    host.load()
    host.register_components()
    yield host


def wait_for(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll ``predicate()`` until truthy or timeout; returns its last truthiness."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- throwaway plugins
class ListSourceConfig(PluginConfigBase):
    batches: int = 1
    events_per_batch: int = 10
    event_type: str = "exec"
    fail_after: int = -1  # poll raises after this many polls (-1 never)
    fail_times: int = 0  # how many polls raise before it recovers (0 = forever once failing)


class ListSource(Source):
    """Emits ``batches`` batches of synthetic events, then nothing. Optionally raises in poll()."""

    instances: list[ListSource] = []

    def __init__(self, name: str, config: ListSourceConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.sent = 0
        self.polls = 0
        self.failures = 0
        self.starts = 0
        self.stops = 0
        ListSource.instances.append(self)

    def start(self) -> None:
        self.starts += 1

    def poll(self, timeout_ms: int) -> list[dict[str, Any]]:
        self.polls += 1
        cfg = self.config
        failing = cfg.fail_after >= 0 and self.polls > cfg.fail_after
        if failing and (cfg.fail_times == 0 or self.failures < cfg.fail_times):
            self.failures += 1
            raise RuntimeError(f"{self.name} poll failure {self.failures}")
        if self.sent >= cfg.batches:
            time.sleep(timeout_ms / 1000 / 5)
            return []
        base = self.sent * cfg.events_per_batch
        self.sent += 1
        return [synthetic_event(cfg.event_type, seq=base + i, source=self.name) for i in range(cfg.events_per_batch)]

    def stop(self) -> None:
        self.stops += 1


#: the first of the 50 pids synthetic events come from: the kernel's PID_MAX_LIMIT on 64-bit (4 Mi), a pid no
#: live process can have. A low pid (the tests used 1000..1049) can be a real process once the host's pids wrap,
#: and the runtime seeds its process tree from /proc: the synthetic process then got that process's ancestry.
SYNTHETIC_PID = 4 * 1024 * 1024


def synthetic_event(event_type: str = "exec", seq: int = 0, source: str = "test", **fields: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"evt.type": event_type, "evt.source": source, "evt.ts": time.time_ns(), "evt.seq": seq,
                          "proc.pid": SYNTHETIC_PID + seq % 50, "proc.tid": SYNTHETIC_PID + seq % 50, "proc.ppid": 1,
                          "proc.uid": 0, "proc.gid": 0, "proc.comm": "synthetic", "proc.cgroup": 1}
    if event_type == "exec":
        ev.update({"exec.filename": "/usr/bin/true", "exec.exe": "/usr/bin/true", "exec.argv": ["true"],
                   "exec.ret": 0, "exec.memfd": False, "exec.argv_truncated": False})
    ev.update(fields)
    return ev


class CountAnalyzerConfig(PluginConfigBase):
    alert_every: int = 0  # one alert every N events (0 = never)
    score: int = 60
    fail_on_batch: int = -1  # raise on this batch number (and after, fail_times times)
    fail_times: int = 1
    sleep_s: float = 0.0  # per batch, to make backpressure


class CountAnalyzer(Analyzer):
    """Counts events (by evt.seq) and raises alerts on demand; can be told to fail."""

    def __init__(self, name: str, config: CountAnalyzerConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.seen: list[int] = []
        self.batches = 0
        self.failures = 0

    def analyze(self, batch: list[dict[str, Any]], ctx: BatchContext) -> list[Alert]:
        self.batches += 1
        cfg = self.config
        if 0 <= cfg.fail_on_batch <= self.batches and self.failures < cfg.fail_times:
            self.failures += 1
            raise ValueError(f"{self.name} analyze failure {self.failures}")
        if cfg.sleep_s:
            time.sleep(cfg.sleep_s)
        alerts = []
        for ev in batch:
            self.seen.append(ev.get("evt.seq", -1))
            if cfg.alert_every and len(self.seen) % cfg.alert_every == 0:
                alerts.append(Alert(self.name, "count", cfg.score, f"event {ev.get('evt.seq')}",
                                    pid=ev.get("proc.pid", 0), comm=ev.get("proc.comm", "")))
        return alerts


class CollectSinkConfig(PluginConfigBase):
    fail_times: int = 0


class CollectSink(Sink):
    """Keeps every alert, threat update and incident list it is given."""

    instances: list[CollectSink] = []

    def __init__(self, name: str, config: CollectSinkConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.alerts: list[Alert] = []
        self.updates: list[ThreatUpdate] = []
        self.incidents: dict[str, list[dict[str, Any]]] = {}  # host -> the latest open incidents
        self.failures = 0
        CollectSink.instances.append(self)

    def emit_alerts(self, alerts: list[Alert]) -> None:
        if self.failures < self.config.fail_times:
            self.failures += 1
            raise OSError("sink failure")
        self.alerts.extend(alerts)

    def emit_threat(self, update: ThreatUpdate) -> None:
        self.updates.append(update)

    def emit_incidents(self, host: str, incidents: list[dict[str, Any]]) -> None:
        self.incidents[host] = incidents


class ThrowawayPlugin:
    """A throwaway plugin registering the components above under test names (``test_source``, ...)."""

    @hookimpl
    def ravn_register_sources(self, registry: Any) -> None:
        registry.add("test_source", ListSource, ListSourceConfig)

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        registry.add("test_analyzer", CountAnalyzer, CountAnalyzerConfig)

    @hookimpl
    def ravn_register_sinks(self, registry: Any) -> None:
        registry.add("test_sink", CollectSink, CollectSinkConfig)


def make_host(*plugins: tuple[Any, str]) -> Any:
    """A loaded PluginHost with the ThrowawayPlugin (and any ``(plugin, name)`` given) registered."""
    from ravn_core.plugins import PluginHost

    host = PluginHost()
    host.register(ThrowawayPlugin(), "ravn-test-plugin", "ravn-core-testing")
    for plugin, name in plugins:
        host.register(plugin, name, f"{name}-dist", "0")
    host.load(autoload=False)
    host.register_components()
    return host


def run_pipeline(config: dict[str, Any], duration: float | None = None, host: Any = None,
                 until: Any = None, timeout_s: float = 20.0) -> tuple[Any, dict[str, Any]]:
    """Build and run a Runtime from a config dict on a test host; stop after ``duration`` or when ``until(rt)``.

    Returns ``(runtime, stats)``.
    """
    from ravn_core.config import validate
    from ravn_core.runtime import Runtime

    host = host or make_host()
    config = dict(config)
    config.setdefault("ravn", {})
    config["ravn"] = {"state_dir": tempfile.mkdtemp(prefix="ravn-state-"), "health_interval_s": 0.2, **config["ravn"]}
    cfg = validate(config, host.registries())
    rt = Runtime(cfg, host)
    rt.start()
    deadline = time.monotonic() + (duration if duration is not None else timeout_s)
    while time.monotonic() < deadline:
        if until is not None and until(rt):
            break
        time.sleep(0.02)
    return rt, rt.stop("test")
