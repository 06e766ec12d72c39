"""Hookimpls only: registers the ``webhook``, ``syslog`` and ``falco`` sinks."""

from __future__ import annotations

from ravn_core import hookimpl
from ravn_core.registry import SinkRegistry
from ravn_sinks.falco import FalcoConfig, FalcoSink
from ravn_sinks.syslog import SyslogConfig, SyslogSink
from ravn_sinks.webhook import WebhookConfig, WebhookSink


@hookimpl
def ravn_register_sinks(registry: SinkRegistry) -> None:
    registry.add("webhook", WebhookSink, WebhookConfig)
    registry.add("syslog", SyslogSink, SyslogConfig)
    registry.add("falco", FalcoSink, FalcoConfig)
