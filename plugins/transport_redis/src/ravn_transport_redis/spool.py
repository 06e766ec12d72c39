"""The agent's send queue: encoded batches wait here until Redis confirms them.

Bounded twice: up to ``memory_bytes`` in memory, then appended to a file up to ``file_bytes``, then new batches
are dropped (and counted). Order is kept: while the file holds anything, new batches go to the file too, and
the memory part (all older) is sent first. When the file has been sent completely it is truncated.

The file is created 0600 (owner only) whatever the umask, never opened through a symlink, and refused when
another user owns it.

At ``close()`` whatever is still in memory is written to the file, and a new spool on the same path sends the
file's batches first: batches spooled while Redis was away survive an agent restart. A batch sent from the
file and confirmed by Redis may be sent again if the agent dies before the file is truncated (at-least-once;
workers drop the duplicate by batch id).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

import msgpack

_LEN = struct.Struct(">I")
SPOOL_MODE = 0o600


@dataclass
class Entry:
    """One batch, encoded, with where it goes.

    :ivar key: stream or list key.
    :ivar batch_id: ``<host>:<boot id>:<seq>``.
    :ivar payload: the stream entry's fields (stream mode) or the JSON element (list mode).
    :ivar events: events in the batch (for the counters).
    :ivar unconfirmed: it was (maybe) sent on a connection that broke before the reply.
    """

    key: str
    batch_id: str
    payload: dict[bytes, bytes] | bytes
    events: int
    unconfirmed: bool = False

    @property
    def size(self) -> int:
        body = self.payload
        n = len(body) if isinstance(body, bytes) else sum(len(k) + len(v) for k, v in body.items())
        return n + len(self.key) + len(self.batch_id) + 64

    def dump(self) -> bytes:
        body = msgpack.packb([self.key, self.batch_id, self.payload, self.events, self.unconfirmed],
                             use_bin_type=True)
        return _LEN.pack(len(body)) + body

    @classmethod
    def load(cls, body: bytes) -> Entry:
        key, batch_id, payload, events, unconfirmed = msgpack.unpackb(body, raw=False, strict_map_key=False)
        return cls(key, batch_id, payload, events, unconfirmed)


class Spool:
    """Thread-safe FIFO of entries: ``put`` from the publisher, ``peek``/``pop`` from the sender thread."""

    def __init__(self, memory_bytes: int, file_bytes: int, path: str) -> None:
        self.memory_limit = memory_bytes
        self.file_limit = file_bytes
        self.path = path
        self._mem: deque[Entry] = deque()
        self._mem_bytes = 0
        self._file: BinaryIO | None = None
        self._file_read = 0  # offset of the next record to send
        self._file_size = 0
        self._file_entries = 0
        self._lock = threading.Lock()
        self.not_empty = threading.Condition(self._lock)
        self.dropped_batches = 0
        self.dropped_events = 0
        self.spilled = 0
        self._opened = False

    # ------------------------------------------------------------------------------------------ file
    def _open(self) -> BinaryIO:
        if self._file is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            # 0600 whatever the umask (the file holds this host's events); never through a symlink; a file
            # someone else owns is refused, and one left with a wider mode is narrowed.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, SPOOL_MODE)
            f = os.fdopen(fd, "r+b")  # kept open for the spool's life; every write seeks first
            try:
                owner = os.fstat(fd).st_uid
                if owner != os.geteuid():
                    raise RuntimeError(f"spool file {self.path} is owned by uid {owner}, not by this process "
                                       f"(uid {os.geteuid()}); refusing to use it")
                os.fchmod(fd, SPOOL_MODE)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise RuntimeError(f"spool file {self.path} is in use by another RAVN process") from None
            except BaseException:
                f.close()
                raise
            self._file = f
            f.seek(0, os.SEEK_END)
            self._file_size = f.tell()
        return self._file

    def recover(self) -> int:
        """Count the batches a previous run left in the spool file (they are sent first). Returns the count."""
        with self._lock:
            if self._opened or not os.path.exists(self.path):
                self._opened = True
                return 0
            self._opened = True
            f = self._open()
            f.seek(0)
            n = good_end = 0
            while True:
                head = f.read(_LEN.size)
                if len(head) < _LEN.size:
                    break
                (size,) = _LEN.unpack(head)
                if len(f.read(size)) < size:
                    break
                n += 1
                good_end = f.tell()
            f.truncate(good_end)  # a torn last record from a crash
            self._file_size = good_end
            self._file_read = 0
            self._file_entries = n
            return n

    # ------------------------------------------------------------------------------------------ queue
    def put(self, entry: Entry) -> bool:
        """Queue one entry. False (and counted as dropped) when both memory and file are full."""
        size = entry.size
        with self._lock:
            if self._file_entries == 0 and self._mem_bytes + size <= self.memory_limit:
                self._mem.append(entry)
                self._mem_bytes += size
            elif self._file_size + size <= self.file_limit:
                record = entry.dump()
                f = self._open()
                f.seek(0, os.SEEK_END)
                f.write(record)
                self._file_size += len(record)
                self._file_entries += 1
                self.spilled += 1
            else:
                self.dropped_batches += 1
                self.dropped_events += entry.events
                return False
            self.not_empty.notify()
            return True

    def peek(self, max_entries: int, max_bytes: int = 64 << 20) -> list[Entry]:
        """The oldest entries, without removing them (the sender pops them once Redis confirmed them)."""
        with self._lock:
            out: list[Entry] = []
            total = 0
            for e in self._mem:
                if len(out) >= max_entries or (out and total + e.size > max_bytes):
                    return out
                out.append(e)
                total += e.size
            if self._file_entries and len(out) < max_entries and self._file is not None:
                f = self._file
                f.flush()
                f.seek(self._file_read)
                for _ in range(min(self._file_entries, max_entries - len(out))):
                    (size,) = _LEN.unpack(f.read(_LEN.size))
                    e = Entry.load(f.read(size))
                    if out and total + e.size > max_bytes:
                        break
                    out.append(e)
                    total += e.size
            return out

    def pop(self, n: int) -> None:
        """Remove the ``n`` oldest entries (those the last ``peek`` returned first)."""
        with self._lock:
            while n and self._mem:
                self._mem_bytes -= self._mem.popleft().size
                n -= 1
            if n and self._file is not None:
                f = self._file
                f.seek(self._file_read)
                for _ in range(min(n, self._file_entries)):
                    (size,) = _LEN.unpack(f.read(_LEN.size))
                    f.seek(size, os.SEEK_CUR)
                    self._file_entries -= 1
                self._file_read = f.tell()
                if self._file_entries == 0:
                    f.truncate(0)
                    self._file_size = self._file_read = 0

    def mark_unconfirmed(self, n: int) -> None:
        """The first ``n`` entries were in flight when the connection broke."""
        with self._lock:
            for e in list(self._mem)[:n]:
                e.unconfirmed = True
        # file entries are re-read from disk; a resend of those is covered by the workers' dedup

    def drop_first(self, batch_ids: set[str]) -> int:
        """Remove in-memory entries whose batch id Redis already has (found after a reconnect)."""
        with self._lock:
            keep = deque(e for e in self._mem if e.batch_id not in batch_ids)
            removed = len(self._mem) - len(keep)
            self._mem = keep
            self._mem_bytes = sum(e.size for e in keep)
            for e in self._mem:
                e.unconfirmed = False
            return removed

    def unconfirmed(self) -> list[Entry]:
        with self._lock:
            return [e for e in self._mem if e.unconfirmed]

    def __len__(self) -> int:
        with self._lock:
            return self.count_locked()

    def count_locked(self) -> int:
        """Entries queued; call with ``not_empty`` held."""
        return len(self._mem) + self._file_entries

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._mem_bytes + (self._file_size - self._file_read)

    def close(self) -> None:
        """Write what is still in memory to the file (before the file's own entries keep their order)."""
        with self._lock:
            if not self._mem and self._file is None:
                return
            f = self._open()
            f.flush()
            f.seek(self._file_read)
            rest = f.read() if self._file_entries else b""
            head = b"".join(e.dump() for e in self._mem)
            f.seek(0)
            f.truncate(0)
            f.write(head + rest)
            f.flush()
            os.fsync(f.fileno())
            if not head and not rest:
                os.unlink(self.path)
            self._mem.clear()
            self._mem_bytes = 0
            self._file_entries = 0
            self._file_size = self._file_read = 0
            f.close()
            self._file = None
