"""Builtin sinks: ``stdout`` (readable lines) and ``jsonl`` (one JSON object per line, one write per call)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from pydantic import Field

from ravn_core import hookimpl
from ravn_core.components import Alert, Health, PluginConfig, RuntimeContext, Sink, ThreatUpdate
from ravn_core.events import printable
from ravn_core.registry import SinkRegistry

LEVELS = ("LOW", "MEDIUM", "HIGH")


class StdoutConfig(PluginConfig):
    min_level: str = Field("LOW", pattern="^(LOW|MEDIUM|HIGH)$", description="alerts below this level are not printed")
    stream: str = Field("stdout", pattern="^(stdout|stderr)$", description="where the lines go")


class StdoutSink(Sink):
    """Readable lines, one per alert: time, level, score, rule, process, incident, tags, description.

    Control characters in event text are escaped; a threat change names the incident that set the level."""

    def __init__(self, name: str, config: StdoutConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._min = LEVELS.index(config.min_level)

    def _out(self) -> IO[str]:
        # Looked up at each write so tests that swap sys.stdout see the lines.
        return sys.stdout if self.config.stream == "stdout" else sys.stderr

    def emit_alerts(self, alerts: list[Alert]) -> None:
        out = self._out()
        for a in alerts:
            if LEVELS.index(a.level) < self._min:
                continue
            tags = ",".join(a.tags)
            count = f" x{a.count}" if a.count > 1 else ""
            # one alert, one line: a newline in a path or comm is printed escaped, never as a second line
            out.write(printable(f"{_ts(a.ts)} {a.level:<6} {a.score:>3} {a.rule}{count} pid={a.pid} comm={a.comm} "
                                f"incident={a.incident or '-'} [{tags}] {a.description}") + "\n")
        out.flush()

    def emit_threat(self, update: ThreatUpdate) -> None:
        out = self._out()
        out.write(printable(f"{_ts(update.ts)} THREAT host={update.host} {update.describe()}") + "\n")
        out.flush()


class JsonlConfig(PluginConfig):
    path: str = Field("/var/log/ravn/alerts.jsonl", description="file the JSON lines are appended to")
    fsync: bool = Field(False, description="fsync after each write (durable, slower)")


class JsonlSink(Sink):
    """Alerts and threat-level changes, one JSON object per line, one append per batch.

    Each call's lines go out in one write(2) on an O_APPEND descriptor, so a reader tailing the file (or one
    reading it after a SIGKILL) sees whole lines."""

    def __init__(self, name: str, config: JsonlConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        directory = os.path.dirname(os.path.abspath(config.path))
        os.makedirs(directory, exist_ok=True)
        self._fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.written = 0

    def _write(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records).encode()
        view = memoryview(data)
        while view:  # a regular file takes it whole; loop only for a short write
            view = view[os.write(self._fd, view):]
        self.written += len(records)
        if self.config.fsync:
            os.fsync(self._fd)

    def emit_alerts(self, alerts: list[Alert]) -> None:
        records = []
        for a in alerts:
            record = a.to_dict()
            record["kind"] = "alert"
            records.append(record)
        self._write(records)

    def emit_threat(self, update: ThreatUpdate) -> None:
        self._write([update.to_dict()])

    def emit_incidents(self, host: str, incidents: list[dict[str, Any]]) -> None:
        """A record {"kind": "incidents", "host", "ts", "incidents": [...]}: the open incidents, when they change."""
        self._write([{"kind": "incidents", "host": host, "ts": time.time(), "incidents": incidents}])

    def flush(self) -> None:
        if self.config.fsync:
            os.fsync(self._fd)

    def health(self) -> Health:
        return Health(counters={"written": self.written})

    def close(self) -> None:
        os.close(self._fd)


def _ts(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


@hookimpl
def ravn_register_sinks(registry: SinkRegistry) -> None:
    registry.add("stdout", StdoutSink, StdoutConfig)
    registry.add("jsonl", JsonlSink, JsonlConfig)
