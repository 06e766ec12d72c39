"""The ``redis`` sink: threat state and alerts where dashboards and other services read them.

Keys (``prefix`` defaults to ``ravn:``):

- ``<prefix>threat_level``: LOW|MEDIUM|HIGH of the latest update (one key for the whole deployment; on a
  fleet, the host that changed last). Per host: ``<prefix>threat:{<host>}`` hash {level, score, previous_level, ts} and
  ``<prefix>threat_scores`` sorted set host -> score (the fleet at a glance: ZREVRANGE ... WITHSCORES).
- ``<prefix>incidents:{<host>}`` hash: incident id -> JSON summary (root {pid, comm, exe}, rules in order,
  score, level, first_ts, last_ts, age_s, ...) of each open incident of the host; replaced whole (RENAME of a
  scratch key) when the incidents change, deleted when none is open.
- ``PUBLISH <prefix>threat_updates`` JSON {level, score, host, previous_level, ts, top_alerts: [...],
  incidents: [...]} (incidents: the open incidents at the new level, worst first).
- ``XADD <prefix>alerts MAXLEN ~ alerts_maxlen``: one entry per alert, fields host/level/rule/score/json.

While Redis is away alerts wait in a bounded buffer (``buffer_alerts``; the oldest are dropped and counted)
and go out with the next emit or ``flush``; the latest threat update is kept and re-sent.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from typing import Any

from ravn_core.backoff import Backoff
from ravn_core.components import Alert, Health, RuntimeContext, Sink, ThreatUpdate
from ravn_transport_redis.common import name_part as _name_part
from ravn_transport_redis.config import RedisSinkConfig
from ravn_transport_redis.connection import CONNECTION_ERRORS, describe, insecure, make_client


class RedisSink(Sink):
    """Threat level keys + ``threat_updates`` pub/sub + a bounded alerts stream."""

    def __init__(self, name: str, config: RedisSinkConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.cfg = config
        p = config.prefix
        self.k_level = f"{p}threat_level"
        self.k_scores = f"{p}threat_scores"
        self.k_channel = f"{p}threat_updates"
        self.k_alerts = f"{p}alerts"
        self.client = make_client(config, config.client_name or f"ravn-sink-{_name_part(context.host)}-{os.getpid()}")
        self.where = describe(config)
        for warning in insecure(config):  # the same warnings as the transport: alerts are forged or read there too
            self.log.warning("%s", warning)
        self._alerts: deque[Alert] = deque()
        self._threat: ThreatUpdate | None = None
        self._incidents: dict[str, list[dict[str, Any]]] = {}  # host -> latest open incidents not yet written
        self._lock = threading.Lock()
        self._backoff = Backoff(config.backoff_s, config.backoff_max_s, jitter=True)
        self._error = ""
        self.counters: dict[str, float] = dict.fromkeys(("alerts", "threat_updates", "dropped", "errors"), 0)

    def host_key(self, host: str) -> str:
        return f"{self.cfg.prefix}threat:{{{_name_part(host)}}}"

    def incidents_key(self, host: str) -> str:
        return f"{self.cfg.prefix}incidents:{{{_name_part(host)}}}"

    def emit_alerts(self, alerts: list[Alert]) -> None:
        with self._lock:
            self._alerts.extend(alerts)
            over = len(self._alerts) - self.cfg.buffer_alerts
            for _ in range(max(0, over)):
                self._alerts.popleft()
                self.counters["dropped"] += 1
        self._send()

    def emit_threat(self, update: ThreatUpdate) -> None:
        with self._lock:
            self._threat = update
        self._send()

    def emit_incidents(self, host: str, incidents: list[dict[str, Any]]) -> None:
        with self._lock:
            self._incidents[host] = incidents
        self._send()

    def flush(self) -> None:
        self._backoff.succeeded()
        self._send()

    def _send(self) -> None:
        if not self._backoff.ready():
            return
        with self._lock:
            alerts = list(self._alerts)
            threat = self._threat
            incidents = dict(self._incidents)
        if not alerts and threat is None and not incidents:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for a in alerts:
                pipe.xadd(self.k_alerts, self._alert_fields(a), maxlen=self.cfg.alerts_maxlen, approximate=True)
            if threat is not None:
                host = threat.host or self.context.host
                pipe.set(self.k_level, threat.level)
                pipe.hset(self.host_key(host), mapping={
                    "level": threat.level, "score": f"{threat.score:.2f}", "previous_level": threat.previous_level,
                    "ts": f"{threat.ts:.3f}"})
                pipe.zadd(self.k_scores, {host: threat.score})
                pipe.publish(self.k_channel, json.dumps(self._threat_message(threat, host), default=str))
            for host, open_now in incidents.items():
                key = self.incidents_key(host)
                if open_now:
                    scratch = f"{key}:next"
                    pipe.delete(scratch)
                    pipe.hset(scratch, mapping={str(i["id"]): json.dumps(i, default=str) for i in open_now})
                    pipe.rename(scratch, key)
                else:
                    pipe.delete(key)
            pipe.execute()
        except CONNECTION_ERRORS as exc:
            self._backoff.failed()
            self.counters["errors"] += 1
            if not self._error:
                self.log.warning("redis sink %s: %s; buffering alerts", self.where, exc)
            self._error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            for _ in range(min(len(alerts), len(self._alerts))):
                self._alerts.popleft()
            if self._threat is threat:
                self._threat = None
            for host, open_now in incidents.items():
                if self._incidents.get(host) is open_now:
                    del self._incidents[host]
        self.counters["alerts"] += len(alerts)
        self.counters["threat_updates"] += threat is not None
        self._backoff.succeeded()
        self._error = ""

    @staticmethod
    def _alert_fields(a: Alert) -> dict[str, Any]:
        return {"host": a.host, "level": a.level, "rule": a.rule, "score": a.score,
                "json": json.dumps(a.to_dict(), default=str)}

    def _threat_message(self, t: ThreatUpdate, host: str) -> dict[str, Any]:
        return {"kind": "threat", "host": host, "level": t.level, "score": t.score,
                "previous_level": t.previous_level, "ts": t.ts,
                "top_alerts": [a.to_dict() for a in t.top_alerts[: self.cfg.top_alerts]],
                "incidents": t.incidents}

    def health(self) -> Health:
        c = dict(self.counters)
        c["buffered"] = len(self._alerts)
        if self._error:
            return Health("degraded", f"redis {self.where} unreachable: {self._error}", c)
        return Health("ok", f"redis {self.where}", c)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.client.close()
