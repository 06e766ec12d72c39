"""A receiver that redirects (a compromised or misconfigured endpoint, or a proxy in the path) must not get RAVN's
secret headers sent elsewhere, nor a POST turned GET counted as delivered; secrets never go over plain http to
another host (docs/SECURITY.md). Real HTTP servers on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError
from ravn_sinks.falco import FalcoConfig
from ravn_sinks.webhook import WebhookConfig, WebhookSink

from ravn_core.components import Alert
from ravn_core.testing import make_context


class Server:
    """Records every request (method, path, headers); answers ``status`` with ``location``."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length", 0) or 0)
                self.rfile.read(n)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_counts_as_failed(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAVN_TEST_TOKEN", "s3cret")
    elsewhere = Server(200)
    redirector = Server(code, location=elsewhere.url + "?stolen")
    sink = WebhookSink("hook", WebhookConfig.model_validate({
        "url": redirector.url, "retries": 0, "flush_interval_s": 0.05,
        "secret_headers": {"Authorization": {"$env": "RAVN_TEST_TOKEN"}}}), make_context("sink"))
    try:
        sink.emit_alerts([Alert("rules", "r", 90, "x", pid=1, comm="c", level="HIGH")])
        assert sink.wait_idle(10)
        assert [r[0] for r in redirector.requests] == ["POST"]
        assert redirector.requests[0][2]["Authorization"] == "s3cret"  # the configured receiver gets it
        assert elsewhere.requests == []  # nobody else does, by any method
        assert sink.counters["sent"] == 0 and sink.counters["failed"] == 1
        assert "redirect" in sink.last_error and "not followed" in sink.last_error
        assert sink.health().state == "degraded"
    finally:
        sink.close()
        redirector.close()
        elsewhere.close()


@pytest.mark.parametrize("model", [WebhookConfig, FalcoConfig])
def test_secret_headers_over_plain_http_to_another_host_are_refused(model: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAVN_TEST_TOKEN", "s3cret")
    secret = {"Authorization": {"$env": "RAVN_TEST_TOKEN"}}
    for url in ("http://10.0.0.5/hook", "http://hooks.example.com/x", "http://127.0.0.1.example.com/"):
        with pytest.raises(ValidationError, match="clear text"):
            model.model_validate({"url": url, "secret_headers": secret})
    for url in ("https://hooks.example.com/x", "http://127.0.0.1:8080/", "http://localhost/", "http://[::1]:9/"):
        model.model_validate({"url": url, "secret_headers": secret})
    model.model_validate({"url": "http://10.0.0.5/hook"})  # no secrets: plain http is the operator's choice
