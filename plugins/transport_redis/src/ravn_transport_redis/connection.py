"""Building the redis-py client (standalone or cluster, AUTH, TLS, client name)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from ravn_transport_redis.config import RedisConnection

# Connection-level failures: the server is away, restarting, failing over or (AuthenticationError is a
# ConnectionError) refusing us. Anything else is a command error.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    # the cluster client's "no node reachable / slots not covered" (we never send cross-slot commands, its other use)
    redis.exceptions.RedisClusterException,
    OSError,
)


def client_kwargs(cfg: RedisConnection, client_name: str) -> dict[str, Any]:
    """Keyword arguments shared by ``redis.Redis`` and ``RedisCluster``.

    redis-py's own retries are off: the transport decides what to resend (it knows which batches are
    unconfirmed), and a silent retry of a pipeline of XADDs would only add duplicates.
    """
    kw: dict[str, Any] = {
        "username": cfg.username,
        "password": cfg.password.get() if cfg.password is not None else None,
        "client_name": client_name,
        "socket_connect_timeout": cfg.connect_timeout_s,
        "socket_timeout": cfg.socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        # RESP2 pinned: reply shapes (XREADGROUP, XAUTOCLAIM) differ under RESP3 and between redis-py releases
        "protocol": 2,
    }
    if cfg.tls.enabled:
        kw.update(
            ssl=True,
            ssl_ca_certs=cfg.tls.ca_file,
            ssl_certfile=cfg.tls.cert_file,
            ssl_keyfile=cfg.tls.key_file,
            ssl_cert_reqs="required",
            ssl_check_hostname=cfg.tls.check_hostname,
        )
    return kw


def make_client(cfg: RedisConnection, client_name: str) -> Any:
    """A ``redis.Redis`` or ``redis.cluster.RedisCluster``. Connects lazily (first command)."""
    kw = client_kwargs(cfg, client_name)
    if cfg.cluster:
        kw.pop("health_check_interval")
        return LazyCluster(cfg, kw)
    if cfg.url:
        if cfg.tls.enabled and cfg.url.startswith("redis://"):
            kw.pop("ssl")  # from_url picks the connection class from the scheme; rediss:// means TLS
            return redis.Redis.from_url("rediss://" + cfg.url[len("redis://"):], **kw)
        if cfg.url.startswith("rediss://"):
            kw.pop("ssl", None)
        return redis.Redis.from_url(cfg.url, **kw)
    return redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, **kw)


class LazyCluster:
    """``RedisCluster`` connects to discover the slots in its constructor; this builds it on first use, so a
    cluster that is down at startup is a reconnect with backoff (and a spool), not a failed start."""

    def __init__(self, cfg: RedisConnection, kw: dict[str, Any]) -> None:
        self._cfg = cfg
        self._kw = kw
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _get(self) -> RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    if self._cfg.url:
                        self._client = RedisCluster.from_url(self._cfg.url, require_full_coverage=True, **self._kw)
                    else:
                        self._client = RedisCluster(host=self._cfg.host, port=self._cfg.port,
                                                    require_full_coverage=True, **self._kw)
                except redis.exceptions.RedisClusterException as exc:  # no node reachable
                    raise redis.exceptions.ConnectionError(str(exc)) from exc
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def describe(cfg: RedisConnection) -> str:
    """Where we connect, for logs (never the password)."""
    if cfg.url:
        where = cfg.url.split("@")[-1]
    else:
        where = f"{cfg.host}:{cfg.port}/{cfg.db}"
    return f"{'cluster ' if cfg.cluster else ''}{'tls ' if cfg.tls.enabled else ''}{where}"


def is_loopback(cfg: RedisConnection) -> bool:
    """Whether we dial this machine only: a unix socket, ``localhost`` or a loopback address."""
    if cfg.url:
        parts = urlsplit(cfg.url)
        if parts.scheme == "unix":
            return True
        host = parts.hostname or ""
    else:
        host = cfg.host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure(cfg: RedisConnection) -> list[str]:
    """Warnings for a connection anyone on the path, or anyone who can reach Redis, can abuse; logged at start."""
    where = describe(cfg)
    found = []
    if cfg.password is None:
        found.append(
            f"redis {where}: no password (AUTH) configured: whoever can reach this Redis can forge, read or delete "
            "RAVN's events and alerts; give each agent its own ACL user (plugins/transport_redis/README.md, "
            "'Security')")
    tls = cfg.tls.enabled or (cfg.url or "").startswith("rediss://")
    if not tls and not is_loopback(cfg):
        found.append(
            f"redis {where}: not loopback and no TLS: events, alerts and the password cross the network in clear "
            "and can be altered on the way; set tls: {enabled: true, ca_file: ...} (README, 'Security')")
    return found
