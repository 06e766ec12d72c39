"""``falco``: alerts in Falco's JSON output format, POSTed one per request like Falco's ``http_output``, so
falcosidekick (its ``/`` endpoint) and other tools built for Falco receive RAVN alerts unchanged.

Each alert becomes::

    {"output": "10:35:03.123456789: Critical <description> (proc.pid=.. proc.name=.. ravn.score=.. ravn.incident=..)",
     "priority": "Critical", "rule": "<rule>", "time": "2026-11-26T10:35:03.123456789Z",
     "output_fields": {"evt.time": <ns>, "proc.pid": .., "proc.name": .., "ravn.score": .., "ravn.incident": ..},
     "source": "syscall", "tags": ["T1059.004", ...], "hostname": "<host>"}

``priority`` comes from the alert's level through ``priorities`` (default HIGH -> Critical, MEDIUM -> Warning,
LOW -> Notice); ``output_fields`` carries the process, RAVN's score/analyzer/count and the scalar evidence
fields (dotted names, as Falco's). Threat updates are not sent (Falco has no such record) unless
``threat_updates: true``, as rule ``RAVN threat level``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import Field, field_validator

from ravn_core.components import Alert, RuntimeContext, ThreatUpdate
from ravn_sinks.base import HttpOptions, QueueingSink, falco_time, http_post, ssl_context

FALCO_PRIORITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")


class FalcoConfig(HttpOptions):
    """Config of the ``falco`` sink."""

    url: str = Field("http://127.0.0.1:2801/", pattern=r"^https?://",
                     description="receiver URL; falcosidekick listens on port 2801 by default")
    batch_size: int = Field(1, ge=1, le=1, description="Falco's HTTP output sends one alert per request")
    threat_updates: bool = Field(False, description="also send threat level changes (rule 'RAVN threat level')")
    source: str = Field("syscall", description="the Falco event source named in each alert")
    priorities: dict[str, str] = Field(
        default_factory=lambda: {"HIGH": "Critical", "MEDIUM": "Warning", "LOW": "Notice"},
        description="RAVN level -> Falco priority")

    @field_validator("priorities")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        for level, prio in v.items():
            if level not in ("LOW", "MEDIUM", "HIGH"):
                raise ValueError(f"unknown RAVN level {level!r} (LOW, MEDIUM, HIGH)")
            if prio not in FALCO_PRIORITIES:
                raise ValueError(f"unknown Falco priority {prio!r} ({', '.join(FALCO_PRIORITIES)})")
        return v


def _scalars(prefix: str, value: Any, out: dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, str | int | float | bool) or value is None:
        out[prefix] = value
    elif isinstance(value, dict) and depth < 2:
        for k, v in value.items():
            _scalars(f"{prefix}.{k}" if prefix else str(k), v, out, depth + 1)


def falco_record(alert: Alert, host: str, source: str, priority: str) -> dict[str, Any]:
    """One alert in Falco's json_output format."""
    fields: dict[str, Any] = {}
    evidence = alert.evidence or {}
    event = evidence.get("event") if isinstance(evidence.get("event"), dict) else None
    if event:
        _scalars("", event, fields)
    for key, value in evidence.items():
        if key != "event" and not isinstance(value, list):
            _scalars(key if "." in key else f"ravn.evidence.{key}", value, fields)
    fields.update({
        "evt.time": int(alert.ts * 1e9), "proc.pid": alert.pid, "proc.name": alert.comm,
        "ravn.score": alert.score, "ravn.level": alert.level, "ravn.analyzer": alert.analyzer,
        "ravn.count": alert.count, "ravn.incident": alert.incident,
    })
    clock = time.strftime("%H:%M:%S", time.localtime(alert.ts)) + f".{int(alert.ts * 1e9) % 1_000_000_000:09d}"
    return {
        "output": f"{clock}: {priority} {alert.description} (proc.pid={alert.pid} proc.name={alert.comm} "
                  f"ravn.score={alert.score} ravn.incident={alert.incident or '-'})",
        "priority": priority,
        "rule": alert.rule,
        "time": falco_time(alert.ts),
        "output_fields": fields,
        "source": source,
        "tags": list(alert.tags),
        "hostname": alert.host or host,
    }


class FalcoSink(QueueingSink):
    """Falco-compatible JSON alerts for falcosidekick and Falco HTTP-output receivers."""

    config: FalcoConfig

    def __init__(self, name: str, config: FalcoConfig, context: RuntimeContext) -> None:
        self._ssl = ssl_context(config)
        self._headers = {"Content-Type": "application/json", "User-Agent": "ravn",
                         **config.headers, **{k: v.get() for k, v in config.secret_headers.items()}}
        super().__init__(name, config, context)

    def alert_record(self, alert: Alert) -> dict[str, Any] | None:
        prio = self.config.priorities.get(alert.level, "Warning")
        return falco_record(alert, self.context.host, self.config.source, prio)

    def threat_record(self, update: ThreatUpdate) -> dict[str, Any] | None:
        alert = Alert("ravn", "RAVN threat level", int(update.score), update.describe(), tags=["ravn.threat"],
                      ts=update.ts, host=update.host, level=update.level,
                      incident=str(update.incidents[0].get("id", "")) if update.incidents else "")
        return self.alert_record(alert)

    def send(self, records: list[dict[str, Any]]) -> None:
        for record in records:  # batch_size is 1: one alert per request, as Falco's http_output
            body = json.dumps(record, default=str, separators=(",", ":")).encode()
            http_post(self.config.url, body, self._headers, self.config.timeout_s, self._ssl)
