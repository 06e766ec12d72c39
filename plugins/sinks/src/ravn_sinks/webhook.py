"""``webhook``: alerts and threat updates as JSON, POSTed in batches to an HTTP(S) receiver.

Body: ``{"source": "ravn", "host": "<host>", "records": [<alert or threat record>, ...]}``; an alert record is
``Alert.to_dict()`` plus ``"kind": "alert"`` (its ``incident`` field is the incident id), a threat record
``ThreatUpdate.to_dict()`` (``"kind": "threat"``; ``incidents`` lists the incidents that set the level).
Retries (connection errors, 5xx, 408, 429) with exponential backoff; TLS with a CA file or the system store;
secret headers from ``{$env: X}`` / ``{$file: p}`` references.
"""

from __future__ import annotations

import json
from typing import Any

from ravn_core.components import RuntimeContext
from ravn_sinks.base import HttpOptions, QueueingSink, http_post, ssl_context


class WebhookConfig(HttpOptions):
    """Config of the ``webhook`` sink (see HttpOptions and QueueOptions for every key)."""


class WebhookSink(QueueingSink):
    """Batched JSON POST of alerts to an HTTP(S) endpoint, with retries and backoff."""

    config: WebhookConfig

    def __init__(self, name: str, config: WebhookConfig, context: RuntimeContext) -> None:
        self._ssl = ssl_context(config)
        self._headers = {"Content-Type": "application/json", "User-Agent": "ravn",
                         **config.headers, **{k: v.get() for k, v in config.secret_headers.items()}}
        super().__init__(name, config, context)

    def send(self, records: list[dict[str, Any]]) -> None:
        body = json.dumps({"source": "ravn", "host": self.context.host, "records": records},
                          default=str, separators=(",", ":")).encode()
        http_post(self.config.url, body, self._headers, self.config.timeout_s, self._ssl)
