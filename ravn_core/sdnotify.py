"""systemd's notify protocol, written by hand (no dependency): READY, WATCHDOG, STOPPING, STATUS.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket path, or ``@name`` for an abstract
one) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The runtime sends ``READY=1`` once every
source is attached and every thread started, ``WATCHDOG=1`` from its health thread only while every pipeline thread
is alive and its heartbeat is fresh (``ravn.stall_timeout_s``), and ``STOPPING=1`` when shutdown begins. A daemon
that is SIGSTOPped, deadlocked or stuck in one batch stops feeding the watchdog, and systemd kills and restarts it
after ``WatchdogSec``. Without ``NOTIFY_SOCKET`` every call is a no-op. See sd_notify(3).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ravn.sdnotify")


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET``; ``watchdog_s`` is 0 when no watchdog is asked for."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_s = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *assignments: str) -> bool:
        """Send ``"A=1\\nB=2"``; False when there is no socket or the send failed (logged once)."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), addr)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


__all__ = ["Notifier"]
