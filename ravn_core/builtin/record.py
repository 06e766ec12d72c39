"""Builtin transports ``record`` and ``replay``: events as JSON lines (one event dict per line, fields as in
docs/EVENTS.md).

``record`` is the transport of ``ravn record``: every batch the sources produce is appended to the file, which is
created 0600 (never through a symlink, never another user's file). ``replay`` is the transport of ``ravn replay``:
it reads the file back in batches, with no root and no kernel. A line that is not an event of the schema
(``ravn_core.events.validate_event``: JSON object, known evt.type, every field of its declared type and bounded) is
counted (``bad_lines``), reported with its file and line number (the first 10, then every 1000th) and skipped; the
replay goes on. The CLI puts them in the config's ``transport`` section (``ravn_core.config.with_transport``); a
YAML config may name them too.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import IO

from pydantic import Field

from ravn_core import hookimpl
from ravn_core.components import Delivery, Health, PluginConfig, RuntimeContext, Transport
from ravn_core.events import Batch, Event, validate_event
from ravn_core.registry import TransportRegistry

log = logging.getLogger("ravn.record")


def open_private(path: str) -> IO[str]:
    """``path`` for writing, 0600 (recorded events hold every process's argv, paths and addresses: root's only).

    Never through a symlink (O_NOFOLLOW); an existing file must be a regular file of this process's user (a file
    another user planted would stay theirs, readable by them) and is truncated and set to 0600.
    """
    import os
    import stat

    from ravn_core.errors import RavnError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RavnError(f"{path}: cannot write the events file: {exc.strerror}"
                        f"{' (a symlink: refused)' if exc.errno == 40 else ''}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise RavnError(f"{path}: exists and is {'not a regular file' if not stat.S_ISREG(st.st_mode) else ''}"
                        f"{f'owned by uid {st.st_uid}' if stat.S_ISREG(st.st_mode) else ''}: "
                        f"record to a new path")
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "w", encoding="utf-8")


class RecordConfig(PluginConfig):
    path: str = Field(description="the JSON-lines file to write (created 0600; an existing one of this user is "
                      "truncated)")


class ReplayConfig(PluginConfig):
    path: str = Field(description="the JSON-lines file to read (written by `ravn record`)")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="events per batch handed to the analyzers")


class RecordTransport(Transport):
    """Appends each published batch to a JSON-lines file (ravn record)."""

    def __init__(self, name: str, config: RecordConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        path = self.path = config.path
        self._file: IO[str] = open_private(path)
        self.events = 0

    def publish(self, host: str, batch: Batch) -> None:
        dumps = json.dumps
        self._file.write("".join(dumps(ev, separators=(",", ":"), default=str) + "\n" for ev in batch))
        self.events += len(batch)

    def consume(self, timeout_s: float) -> Delivery | None:
        return None

    def flush(self, timeout_s: float) -> None:
        self._file.flush()

    def health(self) -> Health:
        return Health(counters={"recorded_events": self.events})

    def close(self) -> None:
        self._file.close()


class ReplayTransport(Transport):
    """Reads a recorded JSON-lines file back as batches (ravn replay); the events are this host's."""

    def __init__(self, name: str, config: ReplayConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        path = self.path = config.path
        self.host = context.host
        self.batch_size = config.batch_size
        self._file: IO[str] = open(path, encoding="utf-8")
        self._lock = threading.Lock()
        self._line = 0
        self.events = 0
        self.bad_lines = 0
        self.exhausted = False

    def publish(self, host: str, batch: Batch) -> None:
        raise RuntimeError("replay transport does not accept events")

    def consume(self, timeout_s: float) -> Delivery | None:
        with self._lock:
            if self.exhausted:
                return None
            batch: list[Event] = []
            for line in self._file:
                self._line += 1
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError as exc:
                    self._bad(f"{self.path}:{self._line}: not JSON ({exc.msg}); line skipped")
                    continue
                except RecursionError:
                    self._bad(f"{self.path}:{self._line}: nested too deeply to be an event; line skipped")
                    continue
                problem = validate_event(ev)
                if problem is not None:
                    self._bad(f"{self.path}:{self._line}: {problem}; line skipped")
                    continue
                batch.append(ev)
                if len(batch) >= self.batch_size:
                    break
            else:
                self.exhausted = True
            self.events += len(batch)
        return Delivery(self.host, batch) if batch else None

    def _bad(self, message: str) -> None:
        self.bad_lines += 1
        if self.bad_lines <= 10 or self.bad_lines % 1000 == 0:
            log.warning("%s (%d bad lines so far)", message, self.bad_lines)

    def health(self) -> Health:
        return Health(counters={"replayed_events": self.events, "bad_lines": self.bad_lines})

    def close(self) -> None:
        self._file.close()


@hookimpl
def ravn_register_transports(registry: TransportRegistry) -> None:
    registry.add("record", RecordTransport, RecordConfig)
    registry.add("replay", ReplayTransport, ReplayConfig)
