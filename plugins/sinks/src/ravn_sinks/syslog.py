"""``syslog``: alerts as RFC 5424 messages to the local socket (/dev/log) or a UDP/TCP syslog receiver.

One message per alert::

    <PRI>1 2026-11-26T10:35:03.123456Z host ravn 1234 <rule> [ravn@32473 rule="..." level="HIGH" score="90"
    pid="4321" comm="sh" analyzer="rules" count="1" tags="T1059.004" incident="3f2a-7"] <description>

PRI = facility * 8 + severity, severity from the level (HIGH -> crit 2, MEDIUM -> warning 4, LOW -> notice 5).
MSGID is the rule name reduced to 32 printable ASCII characters. The structured-data id uses 32473, the
enterprise number RFC 5612 reserves for documentation; set ``sd_id`` to your own. TCP uses octet-counting framing
(RFC 6587); UDP and the local socket one message per datagram (longer messages are cut at ``max_message``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pydantic import Field, field_validator

from ravn_core.components import Alert, RuntimeContext, ThreatUpdate
from ravn_sinks.base import QueueingSink, QueueOptions

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}
SEVERITY = {"HIGH": 2, "MEDIUM": 4, "LOW": 5}


class SyslogConfig(QueueOptions):
    """Config of the ``syslog`` sink."""

    address: str = Field("/dev/log", description="/path/of/unix/socket, udp://HOST:PORT or tcp://HOST:PORT")
    facility: str = Field("authpriv", description="syslog facility name (auth, authpriv, daemon, local0-7, ...)")
    app_name: str = Field("ravn", pattern=r"^[!-~]{1,48}$", description="APP-NAME field")
    sd_id: str = Field("ravn@32473", pattern=r"^[!#-<>-\\^-~]{1,32}$",
                       description="structured-data id (name@enterprise-number)")
    max_message: int = Field(8192, ge=480, le=65000, description="longest datagram sent (UDP, unix socket)")
    batch_size: int = Field(100, ge=1, le=10_000, description="messages sent per wake-up of the worker")

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in FACILITIES:
            raise ValueError(f"unknown facility {v!r} ({', '.join(FACILITIES)})")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v.startswith(("udp://", "tcp://")):
            host, _, port = v[6:].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{v!r}: expected udp://HOST:PORT or tcp://HOST:PORT")
        elif not v.startswith("/"):
            raise ValueError(f"{v!r}: expected an absolute unix socket path, udp://HOST:PORT or tcp://HOST:PORT")
        return v


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(text: str, limit: int) -> str:
    out = "".join(c if "!" <= c <= "~" else "_" for c in text)[:limit]
    return out or "-"


def rfc5424(alert: Alert, facility: int, host: str, app: str, sd_id: str, procid: int) -> bytes:
    """One alert as an RFC 5424 message (no framing)."""
    pri = facility * 8 + SEVERITY.get(alert.level, 5)
    us = int(alert.ts * 1e6) % 1_000_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(alert.ts)) + f".{us:06d}Z"
    params = {"rule": alert.rule, "level": alert.level, "score": alert.score, "pid": alert.pid, "comm": alert.comm,
              "analyzer": alert.analyzer, "count": alert.count, "tags": ",".join(alert.tags),
              "incident": alert.incident}
    sd = "[" + sd_id + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = f"<{pri}>1 {stamp} {_token(alert.host or host, 255)} {_token(app, 48)} {procid} {_token(alert.rule, 32)}"
    return f"{header} {sd} {alert.description}".encode()


def _peer_open(sock: socket.socket) -> bool:
    """False when a TCP peer has closed (EOF or error pending), without consuming data."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


class SyslogSink(QueueingSink):
    """RFC 5424 syslog to /dev/log, UDP or TCP."""

    config: SyslogConfig

    def __init__(self, name: str, config: SyslogConfig, context: RuntimeContext) -> None:
        self._sock: socket.socket | None = None
        self._facility = FACILITIES[config.facility]
        super().__init__(name, config, context)

    def alert_record(self, alert: Alert) -> dict[str, Any] | None:
        return {"msg": rfc5424(alert, self._facility, self.context.host, self.config.app_name, self.config.sd_id,
                               os.getpid())}

    def threat_record(self, update: ThreatUpdate) -> dict[str, Any] | None:
        alert = Alert("ravn", "ravn_threat_level", int(update.score), update.describe(), ts=update.ts,
                      host=update.host, level=update.level,
                      incident=str(update.incidents[0].get("id", "")) if update.incidents else "")
        return self.alert_record(alert)

    def _connect(self) -> socket.socket:
        addr = self.config.address
        if addr.startswith(("udp://", "tcp://")):
            host, _, port = addr[6:].rpartition(":")
            host = host.strip("[]")
            kind = socket.SOCK_DGRAM if addr.startswith("udp://") else socket.SOCK_STREAM
            info = socket.getaddrinfo(host, int(port), 0, kind)[0]
            sock = socket.socket(info[0], kind)
            sock.settimeout(5.0)
            sock.connect(info[4])
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(5.0)
            sock.connect(addr)
        return sock

    def send(self, records: list[dict[str, Any]]) -> None:
        tcp = self.config.address.startswith("tcp://")
        if self._sock is not None and tcp and not _peer_open(self._sock):
            self._sock.close()  # the receiver closed the connection: a write would vanish into it
            self._sock = None
        if self._sock is None:
            self._sock = self._connect()
        try:
            while records:
                msg: bytes = records[0]["msg"]
                if tcp:
                    self._sock.sendall(b"%d " % len(msg) + msg)
                else:
                    self._sock.send(msg[: self.config.max_message])
                records.pop(0)  # a retry resends only what was not sent
                self.counters["sent"] += 1
        except OSError:
            self._sock.close()
            self._sock = None
            raise

    def close(self) -> None:
        super().close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
