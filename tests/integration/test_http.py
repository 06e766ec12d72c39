"""The builtin HTTP endpoints against a real running runtime: /healthz and /metrics on TCP (no alert text),
/status on the root-only unix socket in the state dir (what `ravn status` and `ravn top` read); bounds on
connections and time; a port someone else holds is a startup error. Attacks run as the user nobody."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ravn_core.builtin.http import endpoint_for, healthz, parse_listen
from ravn_core.config import validate
from ravn_core.runtime import Runtime
from ravn_core.status import unix_get
from ravn_core.testing import make_host, wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST = {"restart_backoff_s": 0.02, "restart_backoff_max_s": 0.05, "error_budget": 2, "error_window_s": 60,
        "health_interval_s": 0.1}


def start(config: dict[str, Any], tmp_path: Path) -> Runtime:
    host = make_host()
    config = dict(config)
    config["ravn"] = {"state_dir": str(tmp_path / "state"), "http_listen": "127.0.0.1:0", **FAST,
                      **config.get("ravn", {})}
    rt = Runtime(validate(config, host.registries()), host)
    rt.start()
    return rt


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def metrics(url: str) -> dict[str, Any]:
    status, body, ctype = get(f"{url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name} {labels} not exported")


def test_healthz_metrics_and_status(tmp_path: Path) -> None:
    rt = start({"ravn": {"reorder_ms": 0},  # one delivery, one analyze call (one latency sample): no hold
                "sources": [{"plugin": "test_source", "batches": 30, "events_per_batch": 40}],
                "analyzers": [{"plugin": "test_analyzer", "alert_every": 100, "score": 90}],
                "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None and ep.address[0] == "127.0.0.1"
        assert wait_for(lambda: rt.counters["analyzed"] == 1200 and rt.counters["alerts_emitted"] >= 1, 10)
        code, body, ctype = get(f"{ep.url}/healthz")
        h = json.loads(body)
        assert code == 200 and ctype == "application/json" and h["status"] == "ok"
        assert set(h["components"]) == {"source:test_source", "transport:embedded", "analyzer:test_analyzer",
                                        "sink:test_sink"}
        assert all(c["state"] == "ok" and c["heartbeat"] > rt.started_at - 1 for c in h["components"].values())

        m = metrics(ep.url)
        assert sample(m, "ravn_source_events_total", source="test_source") == 1200
        assert sample(m, "ravn_source_dropped_total", source="test_source") == 0
        assert sample(m, "ravn_source_kernel_drops_total", source="test_source") == 0
        assert sample(m, "ravn_stage_events_total", stage="analyzed") == 1200
        assert sample(m, "ravn_analyzer_events_total", analyzer="test_analyzer") == 1200
        assert sample(m, "ravn_queue_depth", queue="ingress") == 0
        assert sample(m, "ravn_analysis_latency_seconds_count") == 30
        assert sample(m, "ravn_analysis_latency_seconds_bucket", le="+Inf") == 30
        assert 0 < sample(m, "ravn_analysis_latency_seconds_sum") < 30
        assert sample(m, "ravn_alerts_total", level="HIGH", rule="count") == rt.counters["alerts_emitted"]
        assert sample(m, "ravn_component_restarts_total", component="source:test_source") == 0
        assert sample(m, "ravn_threat_level", host=rt.hostname) == 2
        high = sample(m, "ravn_incidents_open", host=rt.hostname, level="HIGH")
        assert high >= 1 and sample(m, "ravn_incidents_opened_total", host=rt.hostname) >= high
        assert sample(m, "ravn_incidents_evicted_total", host=rt.hostname) == 0
        assert sample(m, "process_resident_memory_bytes") > 10e6
        assert sample(m, "process_cpu_seconds_total") > 0
        assert sample(m, "ravn_healthy") == 1

        code, body, _ = get(f"{ep.url}/status")
        assert code == 404 and b"ravn.sock" in body  # alerts with evidence: never on TCP
        assert "detail" not in h["components"]["sink:test_sink"]
        code, body = unix_get(str(tmp_path / "state" / "ravn.sock"), "/status")
        st = json.loads(body)
        assert code == 200 and st["stats"]["analyzed"] == 1200
        assert st["incidents"] and {i["level"] for i in st["incidents"]} == {"HIGH"}
        assert {a["incident"] for a in st["recent_alerts"]} <= {i["id"] for i in st["incidents"]}
        assert json.loads(body)["recent_alerts"][-1]["rule"] == "count"
        code, body = unix_get(str(tmp_path / "state" / "ravn.sock"), "/healthz")
        assert code == 200 and "detail" in json.loads(body)["components"]["sink:test_sink"]
        assert get(f"{ep.url}/nope")[0] == 404
    finally:
        rt.stop()
    assert endpoint_for(rt) is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ep.url}/healthz", timeout=2)


def test_healthz_503_when_a_component_is_quarantined(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source", "name": "bad", "fail_after": 0},
                            {"plugin": "test_source", "name": "good", "batches": 5}],
                "analyzers": [{"plugin": "test_analyzer"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None
        assert wait_for(lambda: rt.sources[0].quarantined, 10)
        code, body, _ = get(f"{ep.url}/healthz")
        h = json.loads(body)
        assert code == 503 and h["status"] == "degraded" and h["degraded"] == ["source:bad"]
        assert h["components"]["source:bad"]["quarantined"] and h["components"]["source:good"]["state"] == "ok"
        m = metrics(ep.url)
        assert sample(m, "ravn_healthy") == 0
        assert sample(m, "ravn_component_quarantined", component="source:bad") == 1
        assert sample(m, "ravn_component_restarts_total", component="source:bad") == 3
        assert sample(m, "ravn_component_up", component="source:good") == 1
    finally:
        rt.stop()


def squat_as_nobody() -> tuple[int, int]:
    """A child process of the user nobody holding a loopback port: (its pid, the port)."""
    import os
    import socket
    import time

    from ravn_core.testing import NOBODY, require_root

    require_root()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            os.write(wfd, str(s.getsockname()[1]).encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(wfd)
    port = int(os.read(rfd, 16))
    os.close(rfd)
    return pid, port


def test_a_port_held_by_another_user_is_a_startup_error(tmp_path: Path) -> None:
    """A user who binds the port first must not answer /healthz in RAVN's name while RAVN runs on blind."""
    import os
    import signal

    from ravn_core.errors import StartupError

    pid, port = squat_as_nobody()
    try:
        cfg = {"ravn": {"http_listen": f"127.0.0.1:{port}"}, "sources": [{"plugin": "test_source", "batches": 2}],
               "analyzers": [{"plugin": "test_analyzer"}]}
        with pytest.raises(StartupError, match=f"127.0.0.1:{port}: cannot listen.*http_optional"):
            start(cfg, tmp_path)
        assert not (tmp_path / "state" / "ravn.sock").exists()  # everything it started was closed again
        # the operator's explicit choice: run without the endpoint
        cfg["ravn"]["http_optional"] = True
        rt = start(cfg, tmp_path)
        try:
            ep = endpoint_for(rt)
            assert ep is not None and ep.server is None and ep.unix is not None
            assert wait_for(lambda: rt.counters["analyzed"] == 20, 5)
        finally:
            rt.stop()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    """docs/OPERATIONS.md names every metric family /metrics exports (and no stale ones)."""
    rt = start({"sources": [{"plugin": "test_source", "batches": 2}], "analyzers": [{"plugin": "test_analyzer",
                "alert_every": 5}], "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None and wait_for(lambda: rt.counters["alerts_emitted"] >= 1, 5)
        _, body, _ = get(f"{ep.url}/metrics")
    finally:
        rt.stop()
    exported = set(re.findall(r"^# TYPE (ravn_\w+) ", body.decode(), re.M))
    exported = {n[:-6] if n.endswith("_total") else n for n in exported}
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    documented = {n[:-6] if n.endswith("_total") else n for n in re.findall(r"`(ravn_\w+)`", doc)}
    assert exported - documented == set(), "metrics missing from docs/OPERATIONS.md"
    assert "ravn_bpf_prog_run_time_seconds" in documented


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen(":9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9") == ("::1", 9)


def test_ravn_top_and_status_once_over_the_socket_and_from_the_status_file(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source", "name": "probe_a", "batches": 10, "events_per_batch": 30}],
                "analyzers": [{"plugin": "test_analyzer", "alert_every": 50, "score": 90}],
                "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    copy = tmp_path / "copy"
    try:
        ep = endpoint_for(rt)
        assert ep is not None and wait_for(lambda: rt.counters["alerts_emitted"] >= 1, 5)
        rt.write_status()
        copy.mkdir(mode=0o700)  # a state dir with only the file: the last status of a daemon gone
        (copy / "status.json").write_bytes((tmp_path / "state" / "status.json").read_bytes())
        for state_dir, via in ((tmp_path / "state", "ravn.sock"), (copy, "status.json")):
            out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "top", "--once", "--interval", "0.2",
                                  "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=60,
                                 env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
            assert out.returncode == 0, out.stderr
            text = out.stdout
            assert "threat HIGH" in text and "probe_a" in text and "300" in text, text
            assert "latest alerts" in text and "count" in text and "analyzer:test_analyzer" in text
            assert via in text, text
            out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "status", "--json", "--state-dir",
                                  str(state_dir)], capture_output=True, text=True, timeout=60)
            st = json.loads(out.stdout)
            assert st["via"].endswith(via) and st["stats"]["analyzed"] == 300
            assert out.returncode == 0 and st["running"], out.stderr  # the file is fresh and its pid alive
            assert "open incidents" in text and rt.status()["incidents"][0]["id"] in text
    finally:
        rt.stop()


def test_ravn_top_without_a_daemon_fails_clearly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "top", "--once", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no running RAVN" in out.stderr


def test_healthz_function_matches_status(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source"}], "analyzers": [{"plugin": "test_analyzer"}]}, tmp_path)
    try:
        code, body = healthz(rt.snapshot())
        assert code == 200 and body["pid"] == rt.status()["pid"]
    finally:
        rt.stop()


# ---------------------------------------------------------------------------------------------- attacks
MARK = "zq-secret-marker"


class MarkedAnalyzer:
    """A throwaway plugin whose analyzer alerts with a marker in every alert text field and whose sink fails with
    it (so a component detail carries it too)."""

    @staticmethod
    def _classes() -> tuple[Any, Any]:
        from ravn_core.components import Alert, Analyzer, PluginConfig, Sink

        class Cfg(PluginConfig):
            pass

        class A(Analyzer):
            def analyze(self, batch: list[dict[str, Any]], ctx: Any) -> list[Alert]:
                return [Alert(self.name, "marked_rule", 90, f"read /etc/{MARK}", pid=1, comm=f"[/{MARK}]",
                              evidence={"file.path": f"/etc/{MARK}"})]

        class S(Sink):
            def emit_alerts(self, alerts: list[Alert]) -> None:
                raise OSError(f"cannot deliver {alerts[0].description}")

            def emit_threat(self, update: Any) -> None:
                pass

        return (A, Cfg), (S, Cfg)

    from ravn_core import hookimpl

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        (a, cfg), _ = self._classes()
        registry.add("marked", a, cfg)

    @hookimpl
    def ravn_register_sinks(self, registry: Any) -> None:
        _, (s, cfg) = self._classes()
        registry.add("failing_sink", s, cfg)


def test_tcp_endpoint_carries_no_alert_text_and_status_is_root_only(tmp_path: Path) -> None:
    """As nobody: /healthz and /metrics on TCP (allowed) show no description, path or comm of an alert nor an error
    detail quoting one; the status socket (alerts with evidence) cannot be reached, not even if its directory
    and socket were left open (SO_PEERCRED)."""
    import os

    from ravn_core.testing import as_nobody

    host = make_host((MarkedAnalyzer(), "marked-plugin"))
    cfg = {"ravn": {"state_dir": str(tmp_path / "state"), "http_listen": "127.0.0.1:0", **FAST},
           "sources": [{"plugin": "test_source", "batches": 3}], "analyzers": [{"plugin": "marked"}],
           "sinks": [{"plugin": "failing_sink"}, {"plugin": "test_sink"}]}
    rt = Runtime(validate(cfg, host.registries()), host)
    rt.start()
    sock = str(tmp_path / "state" / "ravn.sock")
    try:
        ep = endpoint_for(rt)
        assert ep is not None
        assert wait_for(lambda: rt.counters["alerts_emitted"] >= 1 and MARK in json.dumps(rt.status()), 10)
        assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == "0o700"
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"

        def scrape(url: str) -> list[tuple[int, str]]:
            out = []
            for path in ("/healthz", "/metrics", "/status"):
                code, body, _ = get(url + path)
                out.append((code, body.decode()))
            return out

        answers = as_nobody(scrape, ep.url)
        assert [c for c, _ in answers] == [503, 200, 404]  # degraded: the failing sink
        assert 'rule="marked_rule"' in answers[1][1]  # rule names and levels are labels, by design
        for _, body in answers:
            assert MARK not in body, body[:2000]

        def read_status(path: str) -> str:
            code, body = unix_get(path, "/status")
            return f"{code} {body[:50]!r}"

        with pytest.raises(PermissionError):
            as_nobody(read_status, sock)
        # the directory and socket opened up by mistake: the peer's uid is still checked
        os.chmod(tmp_path, 0o755)
        os.chmod(tmp_path / "state", 0o755)
        os.chmod(sock, 0o666)
        try:
            answer = as_nobody(read_status, sock)
        except OSError as exc:  # refused and closed before the request was read
            answer = repr(exc)
        assert MARK not in answer and not answer.startswith("200"), answer
        assert json.loads(unix_get(sock, "/status")[1])["recent_alerts"]  # root still reads it
    finally:
        rt.stop()
    assert not os.path.exists(sock)


def test_300_half_sent_requests_do_not_make_300_threads(tmp_path: Path) -> None:
    """A slowloris: connections that send half a request hold at most http_max_connections threads, are closed
    after http_timeout_s, and /healthz answers again after that."""
    import socket
    import threading
    import time

    rt = start({"ravn": {"http_max_connections": 8, "http_timeout_s": 1.0},
                "sources": [{"plugin": "test_source"}], "analyzers": [{"plugin": "test_analyzer"}]}, tmp_path)
    socks: list[socket.socket] = []
    try:
        ep = endpoint_for(rt)
        assert ep is not None and ep.server is not None
        host, port = ep.address[0], ep.address[1]
        def request_threads() -> int:
            # the endpoints' request threads only (socketserver names them after process_request_thread): the
            # runtime's own threads may start or restart meanwhile on a loaded machine and are not the subject
            return sum("process_request_thread" in t.name for t in threading.enumerate())

        before = request_threads()
        for _ in range(300):
            c = socket.create_connection((host, port), timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(c)
        # every connection is closed by the server within the timeout (held ones) or at once (over the cap),
        # and the endpoint never runs more than its cap of request threads meanwhile
        peak = before
        deadline = time.monotonic() + 10
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            peak = max(peak, request_threads())
            still = []
            for c in open_:
                c.settimeout(0.001)
                try:
                    data = c.recv(4096)
                except TimeoutError:
                    still.append(c)
                    continue
                assert data == b"" or data.startswith((b"HTTP/1.0 503", b"HTTP/1.0 408")), data[:80]
            open_ = still
            time.sleep(0.02)
        assert not open_, f"{len(open_)} of 300 connections still open after 10 s"
        assert peak - before <= 8, (before, peak)
        assert ep.server.rejected + ep.server.reaped >= 292, (ep.server.rejected, ep.server.reaped)
        assert wait_for(lambda: request_threads() <= before, 5)
        m = metrics(ep.url)
        assert sample(m, "ravn_http_refused_total", endpoint="tcp") == ep.server.rejected
        assert sample(m, "ravn_http_timed_out_total", endpoint="tcp") == ep.server.reaped >= 1
        assert get(f"{ep.url}/healthz")[0] == 200
    finally:
        for c in socks:
            c.close()
        rt.stop()
