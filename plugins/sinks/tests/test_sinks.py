"""The operator sinks against real receivers on loopback: HTTP(S) servers, a UDP and a TCP syslog receiver."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ravn_sinks.falco import FalcoConfig, FalcoSink
from ravn_sinks.syslog import SyslogConfig, SyslogSink
from ravn_sinks.webhook import WebhookConfig, WebhookSink

from ravn_core.components import Alert, ThreatUpdate
from ravn_core.config import validate
from ravn_core.errors import ConfigError
from ravn_core.testing import make_context, make_host, run_pipeline


# ---------------------------------------------------------------------------------------------- receivers
class Receiver:
    """A real HTTP server on 127.0.0.1 that records POST bodies; can fail the first N requests."""

    def __init__(self, fail_first: int = 0, status: int = 503, tls: tuple[str, str] | None = None) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(n)
                outer.attempts += 1
                if outer.attempts <= fail_first:
                    self.send_response(status)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                outer.headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alert(i: int = 0, level: str = "HIGH", **kw: Any) -> Alert:
    return Alert("rules", kw.pop("rule", "Shell spawned by web server"), 90, f"sh started by nginx #{i}", pid=4321 + i,
                 comm="sh", tags=["T1059.004", "shell"], evidence={"event": {"proc.pid": 4321 + i, "exec.filename":
                                                                  "/bin/sh", "evt.type": "exec"}},
                 ts=1795689439.123456789, host="web1", level=level, **kw)  # type: ignore[arg-type]


def build(cls: Any, model: Any, **options: Any) -> Any:
    return cls("test", model.model_validate(options), make_context("sink"))


# ---------------------------------------------------------------------------------------------- webhook
def test_webhook_batches_alerts_with_secret_header(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAVN_TEST_TOKEN", "s3cret")
    sink = build(WebhookSink, WebhookConfig, url=receiver.url, batch_size=10, flush_interval_s=0.2,
                 headers={"X-Source": "ravn-test"}, secret_headers={"Authorization": {"$env": "RAVN_TEST_TOKEN"}})
    try:
        sink.emit_alerts([alert(i) for i in range(25)])
        sink.emit_threat(ThreatUpdate("web1", "HIGH", 91.0, "LOW", []))
        assert sink.wait_idle(10)
        records = [r for body in receiver.bodies for r in body["records"]]
        assert len(records) == 26
        assert len(receiver.bodies) == 3  # 10 + 10 + 6: batched
        assert receiver.bodies[0]["host"] == "testhost" and receiver.bodies[0]["source"] == "ravn"
        assert [r["kind"] for r in records].count("alert") == 25 and records[-1]["kind"] == "threat"
        assert records[0]["rule"] == "Shell spawned by web server" and records[0]["pid"] == 4321
        assert receiver.headers[0]["Authorization"] == "s3cret" and receiver.headers[0]["X-Source"] == "ravn-test"
        assert sink.counters["sent"] == 26 and sink.health().state == "ok"
    finally:
        sink.close()


def test_webhook_retries_with_backoff_then_delivers() -> None:
    r = Receiver(fail_first=3, status=503)
    sink = build(WebhookSink, WebhookConfig, url=r.url, backoff_s=0.05, retries=5, flush_interval_s=0.05)
    try:
        sink.emit_alerts([alert(1)])
        assert sink.wait_idle(10)
        assert r.attempts == 4 and len(r.bodies) == 1
        assert sink.counters["retries"] == 3 and sink.counters["sent"] == 1 and sink.counters["failed"] == 0
    finally:
        sink.close()
        r.close()


def test_webhook_gives_up_after_retries_and_on_client_errors() -> None:
    down = Receiver()
    url = down.url
    down.close()  # nothing listens there any more
    sink = build(WebhookSink, WebhookConfig, url=url, backoff_s=0.02, retries=2, flush_interval_s=0.05)
    bad = Receiver(fail_first=100, status=400)
    sink400 = build(WebhookSink, WebhookConfig, url=bad.url, backoff_s=0.02, retries=5, flush_interval_s=0.05)
    try:
        sink.emit_alerts([alert(1), alert(2)])
        sink400.emit_alerts([alert(3)])
        assert sink.wait_idle(10) and sink400.wait_idle(10)
        assert sink.counters["requests"] == 3 and sink.counters["failed"] == 2
        h = sink.health()
        assert h.state == "degraded" and "Connection refused" in h.detail
        assert bad.attempts == 1 and sink400.counters["failed"] == 1  # 400 is not retried
    finally:
        sink.close()
        sink400.close()
        bad.close()


def test_webhook_queue_bound_drops_and_counts() -> None:
    r = Receiver(fail_first=1000)
    sink = build(WebhookSink, WebhookConfig, url=r.url, max_queue=5, backoff_s=5, retries=1, close_timeout_s=0)
    try:
        sink.emit_alerts([alert(i) for i in range(20)])
        assert sink.counters["dropped"] >= 14  # the worker holds at most one batch besides the 5 queued
    finally:
        sink.close()
        r.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(crt), str(key)


def test_webhook_tls_with_ca_file_and_verification(cert: tuple[str, str]) -> None:
    r = Receiver(tls=cert)
    good = build(WebhookSink, WebhookConfig, url=r.url, ca_file=cert[0], flush_interval_s=0.05)
    untrusted = build(WebhookSink, WebhookConfig, url=r.url, retries=0, flush_interval_s=0.05)
    insecure = build(WebhookSink, WebhookConfig, url=r.url, verify=False, flush_interval_s=0.05)
    try:
        for s in (good, untrusted, insecure):
            s.emit_alerts([alert(7)])
        assert good.wait_idle(10) and untrusted.wait_idle(10) and insecure.wait_idle(10)
        assert good.counters["sent"] == 1 and insecure.counters["sent"] == 1
        assert untrusted.counters["failed"] == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.last_error
        assert len(r.bodies) == 2
    finally:
        for s in (good, untrusted, insecure):
            s.close()
        r.close()


def test_secret_headers_must_be_references() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="secrets are references"):
        WebhookConfig.model_validate({"url": "http://127.0.0.1:1/", "secret_headers": {"Authorization": "literal"}})
    with pytest.raises(ValidationError, match="https"):
        WebhookConfig.model_validate({"url": "ftp://x/"})


# ---------------------------------------------------------------------------------------------- falco
FALCO_FIELDS = {"output", "priority", "rule", "time", "output_fields", "source", "tags", "hostname"}


def test_falco_sink_posts_falco_json_output(receiver: Receiver) -> None:
    sink = build(FalcoSink, FalcoConfig, url=receiver.url, flush_interval_s=0.05)
    try:
        sink.emit_alerts([alert(1, "HIGH", incident="ab12-3"), alert(2, "MEDIUM"), alert(3, "LOW")])
        assert sink.wait_idle(10)
    finally:
        sink.close()
    assert len(receiver.bodies) == 3  # one alert per request, as Falco's http_output
    first = receiver.bodies[0]
    assert set(first) == FALCO_FIELDS
    assert [b["priority"] for b in receiver.bodies] == ["Critical", "Warning", "Notice"]
    assert first["rule"] == "Shell spawned by web server"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", first["time"]), first["time"]
    assert first["time"].startswith("2026-11-26T") and first["time"].endswith("Z")
    assert first["source"] == "syscall" and first["hostname"] == "web1"
    assert first["tags"] == ["T1059.004", "shell"]
    f = first["output_fields"]
    assert f["proc.pid"] == 4322 and f["proc.name"] == "sh" and f["exec.filename"] == "/bin/sh"
    assert isinstance(f["evt.time"], int) and f["ravn.score"] == 90 and f["ravn.incident"] == "ab12-3"
    assert "Critical sh started by nginx #1" in first["output"] and "ravn.incident=ab12-3" in first["output"]
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_falco_config_rejects_unknown_priority() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown Falco priority"):
        FalcoConfig.model_validate({"url": "http://127.0.0.1:1/", "priorities": {"HIGH": "Severe"}})


# ---------------------------------------------------------------------------------------------- syslog
RFC5424 = re.compile(rb'^<(\d+)>1 (\S+) (\S+) (\S+) (\d+) (\S+) (\[ravn@32473(?: [a-z]+="(?:[^"\\\]]|\\.)*")*\]) (.*)$',
                     re.S)


def test_syslog_udp_rfc5424() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    sink = build(SyslogSink, SyslogConfig, address=f"udp://127.0.0.1:{rx.getsockname()[1]}", facility="local3",
                 flush_interval_s=0.05)
    try:
        sink.emit_alerts([alert(1, "HIGH", rule='odd "rule"] name', incident="ab12-3"), alert(2, "LOW")])
        msgs = [rx.recv(65535), rx.recv(65535)]
    finally:
        sink.close()
        rx.close()
    m = RFC5424.match(msgs[0])
    assert m, msgs[0]
    pri, stamp, host, app, _procid, msgid, sd, text = m.groups()
    assert int(pri) == 19 * 8 + 2  # local3, crit
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert host == b"web1" and app == b"ravn" and msgid == b'odd_"rule"]_name'[:32]
    assert b'rule="odd \\"rule\\"\\] name"' in sd and b'level="HIGH"' in sd and b'score="90"' in sd
    assert b'incident="ab12-3"' in sd
    assert text == b"sh started by nginx #1"
    assert int(RFC5424.match(msgs[1]).group(1)) == 19 * 8 + 5  # type: ignore[union-attr]  # LOW -> notice


def test_syslog_tcp_octet_counting_and_reconnect() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(5)
    port = srv.getsockname()[1]
    sink = build(SyslogSink, SyslogConfig, address=f"tcp://127.0.0.1:{port}", flush_interval_s=0.05,
                 backoff_s=0.05)
    try:
        sink.emit_alerts([alert(1)])
        conn, _ = srv.accept()
        conn.settimeout(5)
        data = b""
        while b" " not in data or len(data) < int(data.split(b" ", 1)[0]) + len(data.split(b" ", 1)[0]) + 1:
            data += conn.recv(65535)
        length, rest = data.split(b" ", 1)
        assert int(length) == len(rest) and RFC5424.match(rest)
        conn.close()  # the receiver goes away; the sink notices and reconnects before its next message
        sink.emit_alerts([alert(2)])
        conn2, _ = srv.accept()
        conn2.settimeout(5)
        got = b""
        while b"#2" not in got:
            chunk = conn2.recv(65535)
            if not chunk:
                break
            got += chunk
        assert b"sh started by nginx #2" in got
        assert sink.wait_idle(10) and sink.counters["failed"] == 0 and sink.counters["sent"] == 2
        conn2.close()
    finally:
        sink.close()
        srv.close()


def test_syslog_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    sink = build(SyslogSink, SyslogConfig, address=path, flush_interval_s=0.05)
    try:
        sink.emit_alerts([alert(5)])
        assert RFC5424.match(rx.recv(65535))
    finally:
        sink.close()
        rx.close()


def test_syslog_config_errors_name_the_key() -> None:
    host = make_host((__import__("ravn_sinks.plugin", fromlist=["x"]), "sinks"))
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.address \(syslog\)"):
        validate({"sinks": [{"plugin": "syslog", "address": "localhost:514"}]}, host.registries())
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.facility \(syslog\)"):
        validate({"sinks": [{"plugin": "syslog", "facility": "nope"}]}, host.registries())


# ---------------------------------------------------------------------------------------------- through the runtime
def test_sinks_through_the_runtime(receiver: Receiver) -> None:
    """Alerts from a running pipeline reach the webhook and the falco sink (registered via the plugin)."""
    import ravn_sinks.plugin

    host = make_host((ravn_sinks.plugin, "sinks"))
    _rt, stats = run_pipeline({
        "sources": [{"plugin": "test_source", "batches": 4, "events_per_batch": 25}],
        "analyzers": [{"plugin": "test_analyzer", "alert_every": 10, "score": 85}],
        "sinks": [{"plugin": "webhook", "url": receiver.url, "flush_interval_s": 0.05},
                  {"plugin": "falco", "url": receiver.url, "flush_interval_s": 0.05}],
    }, host=host, until=lambda rt: rt.counters["analyzed"] >= 100)
    assert stats["alerts_emitted"] >= 1
    webhook = [b for b in receiver.bodies if "records" in b]
    falco = [b for b in receiver.bodies if "output_fields" in b]
    assert sum(len([r for r in b["records"] if r["kind"] == "alert"]) for b in webhook) == stats["alerts_emitted"]
    assert len(falco) == stats["alerts_emitted"] and all(set(b) == FALCO_FIELDS for b in falco)
