"""What the network sinks share: a bounded queue and a worker thread that sends batches with retries.

``emit_alerts`` only converts and enqueues (microseconds), so a slow or absent receiver never stalls RAVN's sink
thread or the other sinks. The worker takes up to ``batch_size`` records (or what arrived within
``flush_interval_s``), calls ``send(records)`` and retries a failure ``retries`` times with exponential backoff
(``backoff_s``, doubling, capped at ``backoff_max_s``). A batch that still fails is counted ``failed`` and logged
(once per minute at most). A full queue drops the newest records and counts them ``dropped``. ``close()`` sends
what is queued within ``close_timeout_s``.

Health counters: ``queued``, ``sent`` (records), ``requests``, ``retries``, ``failed`` (records given up),
``dropped`` (queue full), ``filtered`` (below ``min_level``); state ``degraded`` while the last attempt failed.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import urllib.request
from typing import Any

from pydantic import Field, model_validator

from ravn_core.backoff import backoff_delay
from ravn_core.components import Alert, Health, PluginConfig, RuntimeContext, Sink, ThreatUpdate
from ravn_core.config import SecretRef

LEVELS = ("LOW", "MEDIUM", "HIGH")


class PermanentError(Exception):
    """A send error that retrying cannot fix (e.g. HTTP 400): the batch is given up at once."""


class QueueOptions(PluginConfig):
    min_level: str = Field("LOW", pattern="^(LOW|MEDIUM|HIGH)$", description="alerts below this level are not sent")
    threat_updates: bool = Field(True, description="also send threat level changes")
    batch_size: int = Field(100, ge=1, le=10_000, description="records per request at most")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="send a partial batch after this long")
    max_queue: int = Field(10_000, ge=1, description="records held while the receiver is slow or away; "
                                                     "more are dropped and counted")
    retries: int = Field(5, ge=0, le=100, description="retries of a failed batch before it is given up")
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles per retry")
    backoff_max_s: float = Field(30.0, gt=0, description="cap of the retry delay")
    close_timeout_s: float = Field(5.0, ge=0, description="at shutdown, time allowed to send what is queued")


class HttpOptions(QueueOptions):
    url: str = Field("http://127.0.0.1:8080/", pattern=r"^https?://", description="receiver URL (http:// or https://); "
                     "redirects are not followed (a 3xx is an error naming its Location)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (not secrets)")
    secret_headers: dict[str, SecretRef] = Field(
        default_factory=dict, description="headers whose values are secrets: {Authorization: {$env: RAVN_HOOK}} "
                                          "or {$file: /run/secrets/x}; only over https:// (or http:// to loopback)")
    ca_file: str | None = Field(None, description="PEM CA bundle that signs the receiver's certificate "
                                                  "(default: the system store)")
    verify: bool = Field(True, description="verify the receiver's TLS certificate and host name")
    timeout_s: float = Field(5.0, gt=0, le=300, description="per-request timeout")

    @model_validator(mode="after")
    def _secrets_need_tls(self) -> HttpOptions:
        if self.secret_headers and not self.url.startswith("https://") and not is_loopback_url(self.url):
            raise ValueError(f"secret_headers ({', '.join(sorted(self.secret_headers))}) would cross the network in "
                             f"clear text to {self.url}: use an https:// url (plain http:// only to loopback)")
        return self


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is a loopback address or ``localhost`` (no DNS lookup)."""
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ssl_context(options: HttpOptions) -> ssl.SSLContext | None:
    if not options.url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=options.ca_file)
    if not options.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is not followed: urllib would resend the secret headers to the new host and turn the POST into a GET
    (whose 200 would count the alerts as sent). The 3xx surfaces as an HTTPError instead."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float,
              context: ssl.SSLContext | None) -> int:
    """POST ``body``; return the (2xx) status. Raise OSError on a transport error or a retryable status
    (5xx, 429, 408), PermanentError on a redirect or another 4xx."""
    import urllib.error

    opener = urllib.request.build_opener(_NoRedirects, urllib.request.HTTPSHandler(context=context))
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?") if exc.headers else "?"
            raise PermanentError(f"HTTP {exc.code} redirect to {where} not followed (secret headers stay with "
                                 f"the configured url): point url at the receiver itself") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        raise PermanentError(f"HTTP {exc.code} {exc.reason}") from None


class QueueingSink(Sink):
    """Base of the network sinks. Subclasses implement :meth:`send` and, optionally, the converters."""

    config: QueueOptions

    def __init__(self, name: str, config: QueueOptions, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._min = LEVELS.index(config.min_level)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=config.max_queue)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.counters: dict[str, int] = {"sent": 0, "requests": 0, "retries": 0, "failed": 0, "dropped": 0,
                                         "filtered": 0}
        self.last_error = ""
        self._failing = False
        self._last_log = 0.0
        self._thread = threading.Thread(target=self._run, name=f"ravn-sink-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what subclasses provide
    def send(self, records: list[dict[str, Any]]) -> None:
        """Deliver one batch; raise OSError (retried) or PermanentError (given up)."""
        raise NotImplementedError

    def alert_record(self, alert: Alert) -> dict[str, Any] | None:
        record = alert.to_dict()
        record["kind"] = "alert"
        return record

    def threat_record(self, update: ThreatUpdate) -> dict[str, Any] | None:
        return update.to_dict()

    # ------------------------------------------------------------------ sink API (sink thread)
    def emit_alerts(self, alerts: list[Alert]) -> None:
        for a in alerts:
            if LEVELS.index(a.level) < self._min:
                self.counters["filtered"] += 1
                continue
            record = self.alert_record(a)
            if record is not None:
                self._put(record)

    def emit_threat(self, update: ThreatUpdate) -> None:
        if self.config.threat_updates:
            record = self.threat_record(update)
            if record is not None:
                self._put(record)

    def _put(self, record: dict[str, Any]) -> None:
        try:
            self._idle.clear()
            self._queue.put_nowait(record)
        except queue.Full:
            self.counters["dropped"] += 1

    def flush(self) -> None:
        """Does not wait: the worker sends on its own; ``close`` waits (bounded)."""

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until everything queued was sent or given up (tests, close)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.empty() and self._idle.is_set():
                return True
            time.sleep(0.01)
        return self._queue.empty() and self._idle.is_set()

    def close(self) -> None:
        self.wait_idle(self.config.close_timeout_s)
        self._stop.set()
        self._thread.join(self.config.close_timeout_s + 1)
        left = self._queue.qsize()
        if left:
            self.counters["failed"] += left
            self.log.warning("%s: %d records not sent at shutdown (%s)", self.name, left,
                             self.last_error or "receiver too slow")

    def health(self) -> Health:
        counters = {k: float(v) for k, v in self.counters.items()}
        counters["queued"] = float(self._queue.qsize())
        if self._failing:
            return Health("degraded", f"receiver failing: {self.last_error}", counters)
        return Health("ok", "", counters)

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._idle.set()
                continue
            self._idle.clear()
            batch = [first]
            deadline = time.monotonic() + cfg.flush_interval_s
            while len(batch) < cfg.batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._deliver(batch)
            if self._queue.empty():
                self._idle.set()

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.counters["retries"] += 1
                if self._stop.wait(backoff_delay(attempt, cfg.backoff_s, cfg.backoff_max_s)):
                    break
            self.counters["requests"] += 1
            try:
                self.send(batch)
            except PermanentError as exc:
                self._gave_up(batch, str(exc))
                return
            except (OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._failing = True
                continue
            self.counters["sent"] += len(batch)
            self._failing = False
            return
        self._gave_up(batch, self.last_error)

    def _gave_up(self, batch: list[dict[str, Any]], why: str) -> None:
        self.counters["failed"] += len(batch)
        self.last_error = why
        self._failing = True
        now = time.monotonic()
        if now - self._last_log > 60:
            self._last_log = now
            self.log.error("%s: gave up on %d records: %s", self.name, len(batch), why)


def falco_time(ts: float) -> str:
    """RFC 3339 UTC with nanoseconds, as Falco writes ``time``: ``2026-11-26T10:35:03.123456789Z``."""
    ns = round(ts * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


log = logging.getLogger("ravn.sinks")
