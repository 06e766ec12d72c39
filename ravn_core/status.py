"""Where a daemon's status lives, and the one reader of it (``ravn status``, ``ravn top``, bench/soak.py).

The status (threat, components, counters and the recent alerts with their evidence) is root-only. The daemon
serves it on a unix socket in its state directory, ``<ravn.state_dir>/ravn.sock`` (0600), and writes it to
``<ravn.state_dir>/status.json`` (0600) every second and at stop. The state directory must be a real directory
owned by the daemon's user (root) with mode 0700: :func:`ensure_state_dir` creates it so, tightens its mode, and
refuses one that another user owns or that is a symlink (another user could otherwise plant files or links in
it). ``/healthz`` and ``/metrics`` stay on TCP (``ravn.http_listen``) and carry no alert text.

:class:`StatusReader` asks the socket first (a live answer) and falls back to the file (the last status a daemon
wrote; ``running`` then tells whether that daemon is still alive).
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import socket
import stat
import time
from typing import Any

from ravn_core.errors import RavnError, StartupError, UnusableEnvironment

log = logging.getLogger("ravn.status")

SOCKET_NAME = "ravn.sock"
STATUS_NAME = "status.json"
DEFAULT_STATE_DIR = "/run/ravn"
#: a status file older than this (or whose pid is gone) is from a daemon that is not running
STALE_S = 30.0


# ---------------------------------------------------------------------------------------------- the state dir
def ensure_state_dir(path: str) -> None:
    """Create ``path`` (0700) or check an existing one: a directory, not a symlink, owned by this process's user.

    A group/other bit on our own directory is removed (logged). Raises StartupError naming the directory, its
    owner and the fix when it is someone else's or not a plain directory; OSError when it cannot be created.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StartupError(f"state dir {path} is a symlink; RAVN uses only a real directory it owns "
                           f"(remove it, or set ravn.state_dir)")
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"state dir {path} is not a directory (set ravn.state_dir)")
    if st.st_uid != os.geteuid():
        raise StartupError(f"state dir {path} is owned by uid {st.st_uid}, not by RAVN's user (uid {os.geteuid()}): "
                           f"another user could plant files in it; remove it or `chown {os.geteuid()} {path}`")
    if st.st_mode & 0o077:
        log.warning("state dir %s had mode %o; set to 0700", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700, follow_symlinks=False)


def write_private_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically, 0600, never through a symlink (O_NOFOLLOW | O_EXCL)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)  # a stale temp file (or anything planted under that name) goes first
    except FileNotFoundError:
        pass
    text = json.dumps(data, default=str)  # one C-encoder call (json.dump to a file encodes in Python, chunk by chunk)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def connect_unix(path: str, timeout_s: float) -> socket.socket:
    """A connected AF_UNIX stream socket to ``path``; paths past sun_path's 107 bytes go through /proc/self/fd."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        if len(os.fsencode(path)) < 104:
            sock.connect(path)
        else:
            dfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
            finally:
                os.close(dfd)
    except BaseException:
        sock.close()
        raise
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = connect_unix(self.unix_path, float(self.timeout or 5.0))


def unix_get(path: str, url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` (e.g. ``/status``) from the HTTP server on the unix socket ``path``: (status, body)."""
    conn = _UnixHTTPConnection(path, timeout_s)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- the reader
def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatusReader:
    """Reads a daemon's status: its unix socket, else its last status file. ``read()`` adds ``running``
    (the daemon answers, or its file is fresh and its pid alive, and it is not stopping) and ``via``."""

    def __init__(self, state_dir: str | None = None, timeout_s: float = 5.0) -> None:
        self.state_dir = state_dir or DEFAULT_STATE_DIR
        self.timeout_s = timeout_s

    @property
    def socket(self) -> str:
        return socket_path(self.state_dir)

    @property
    def file(self) -> str:
        return os.path.join(self.state_dir, STATUS_NAME)

    @property
    def where(self) -> str:
        return self.state_dir

    def read(self) -> dict[str, Any]:
        try:
            code, body = unix_get(self.socket, "/status", self.timeout_s)
        except PermissionError:
            raise UnusableEnvironment(f"{self.socket} is root-only: run `sudo ravn ...`") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise RavnError(f"cannot read the status from {self.socket}: {exc}") from None
            return self._read_file()
        if code != 200:
            raise RavnError(f"{self.socket} answered HTTP {code}: {body[:200].decode(errors='replace')}")
        try:
            status: dict[str, Any] = json.loads(body)
        except ValueError as exc:
            raise RavnError(f"{self.socket}: not a status ({exc})") from None
        status["running"] = not status.get("stopping", False)
        status["via"] = self.socket
        return status

    def _read_file(self) -> dict[str, Any]:
        path = self.file
        try:
            with open(path) as f:
                status: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise RavnError(f"no running RAVN: neither {self.socket} nor {path} exists (is the daemon running? "
                            f"pass --state-dir or --config)") from None
        except PermissionError:
            raise UnusableEnvironment(f"{path} is root-only: run `sudo ravn ...`") from None
        except (OSError, ValueError) as exc:
            raise RavnError(f"cannot read {path}: {exc}") from None
        alive = pid_alive(int(status.get("pid", 0))) and time.time() - float(status.get("updated_at", 0)) < STALE_S
        status["running"] = alive and not status.get("stopping", False)
        status["via"] = path
        return status


__all__ = ["StatusReader", "ensure_state_dir", "socket_path", "unix_get", "write_private_json"]
