"""Public test helpers for RAVN and its plugin authors, loaded as the pytest plugin ``ravn`` (pytest11).

- ``require_root()``, ``require_kernel()``, ``require_redis_server()``: skip outside CI, **fail** under CI=true,
  because CI runs as root on a kernel with BTF, tracepoints and ring buffers and installs redis-server.
- ``make_context(name)``: a RuntimeContext for building a component by hand.
- ``RedisServer``: a real redis-server on a free loopback port in a temp dir (``redis_server`` fixture).
- ``ravn_host``: a fresh, loaded PluginHost per test.
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

from ravn_core.components import RuntimeContext

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: .ci/run must provide it (make setup)", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        _missing("this test needs root")


def require_kernel() -> None:
    """Root, tracefs and BCC importable: what every real-probe test needs."""
    require_root()
    if not os.path.isdir("/sys/kernel/tracing/events"):
        _missing("tracefs is not mounted at /sys/kernel/tracing")
    try:
        import bcc  # noqa: F401
    except ImportError:
        _missing("the bcc Python package is not importable (python3-bpfcc and the .venv .pth link)")


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
