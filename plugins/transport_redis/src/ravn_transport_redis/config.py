"""Typed config of the Redis transport and sink. Every field has a type, a default and a description."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ravn_core.components import PluginConfig
from ravn_core.config import SecretRef

log = logging.getLogger("ravn.transport.redis")

_TAG = re.compile(r"\{[^{}]+\}")


class TlsConfig(BaseModel):
    """TLS to Redis (``rediss://``). ``ca_file`` verifies the server; ``cert_file``/``key_file`` authenticate us."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = Field(False, description="connect with TLS")
    ca_file: str | None = Field(None, description="PEM CA bundle that signed the server certificate")
    cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS), with key_file")
    key_file: str | None = Field(None, description="PEM private key of cert_file")
    check_hostname: bool = Field(True, description="verify that the server certificate names the host we dial")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        return self


class RedisConnection(PluginConfig):
    """How to reach Redis; shared by the transport and the sink."""

    url: str | None = Field(
        None, description="redis://, rediss:// or unix:// URL; host/port/db below are ignored when set")
    host: str = Field("127.0.0.1", description="Redis host (or one cluster node to discover the others from)")
    port: int = Field(6379, ge=1, le=65535, description="Redis port")
    db: int = Field(0, ge=0, le=15, description="database number (must be 0 with cluster: true)")
    username: str | None = Field(None, description="ACL user; None = the default user")
    password: SecretRef | None = Field(None, description="password, as {$env: NAME} or {$file: /path}, never inline")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings")
    client_name: str = Field("", description="CLIENT SETNAME; empty = ravn-<host>-<pid> (sink: ravn-sink-<host>-<pid>)")
    cluster: bool = Field(False, description="use the Redis Cluster client (keys hash-tagged per host)")
    prefix: str = Field("ravn:", description="prefix of every key RAVN writes (may carry a {hash tag})")
    connect_timeout_s: float = Field(2.0, gt=0, le=60, description="TCP/TLS connect timeout")
    socket_timeout_s: float = Field(10.0, gt=0, le=300, description="reply timeout; must exceed block_ms")
    backoff_s: float = Field(0.05, gt=0, le=60, description="first reconnect delay; doubles per failure "
                             "(was backoff_initial_s, still read with a deprecation warning)")
    backoff_max_s: float = Field(5.0, gt=0, le=600, description="cap of the reconnect delay (jittered 50-100%)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # backoff_initial_s: the name until 2026-12; backoff_s / backoff_max_s as in ravn_sinks
        if isinstance(data, dict) and "backoff_initial_s" in data:
            if "backoff_s" in data:
                raise ValueError("backoff_initial_s is the old name of backoff_s: set only backoff_s")
            msg = "redis: backoff_initial_s is deprecated, use backoff_s (same meaning)"
            warnings.warn(msg, DeprecationWarning, stacklevel=2)
            log.warning("%s", msg)
            data = {("backoff_s" if k == "backoff_initial_s" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> RedisConnection:
        if self.cluster and self.db != 0:
            raise ValueError("Redis Cluster has only database 0")
        if self.backoff_s > self.backoff_max_s:
            raise ValueError("backoff_s must not exceed backoff_max_s")
        return self


class RedisTransportConfig(RedisConnection):
    """``transport: {plugin: redis, ...}``."""

    mode: Literal["stream", "list"] = Field(
        "stream", description="stream: XADD + consumer groups; list: LPUSH + reliable BLMOVE (one shared list)")
    stream_per: Literal["host", "source", "fleet"] = Field(
        "host", description="one stream per host, per host+source (evt.source), or one stream for the fleet")
    maxlen: int = Field(
        10_000, ge=100, description="approximate MAXLEN of each stream, in batches (~230 bytes per event held)")
    group: str = Field("ravn-analyzers", min_length=1, description="consumer group of the analyzer workers")
    consumer: str = Field(
        "", description="consumer name; empty = <hostname>-<pid>-<random> (unique); a stable one recovers own work")
    block_ms: int = Field(500, ge=1, le=60_000, description="how long one XREADGROUP/BLMOVE may block")
    read_count: int = Field(16, ge=1, le=1000, description="batches fetched per read")
    claim_idle_ms: int = Field(
        30_000, ge=100, description="a pending entry idle this long belongs to a dead consumer and is reclaimed")
    claim_interval_ms: int = Field(0, ge=0, description="how often to look for such entries; 0 = claim_idle_ms/2")
    max_deliveries: int = Field(
        10, ge=2, description="an entry delivered this often (a poison batch) goes to the dead-letter stream")
    discover_interval_s: float = Field(2.0, gt=0, le=600, description="how often workers re-read the stream registry")
    deadletter_maxlen: int = Field(10_000, ge=10, description="approximate MAXLEN of the dead-letter stream")
    pipeline_batches: int = Field(64, ge=1, le=10_000, description="batches sent per pipeline round trip")
    spool_memory_mb: float = Field(64.0, ge=0, description="batches waiting for Redis kept in memory up to this")
    spool_file_mb: float = Field(
        512.0, ge=0, description="then spilled to <state_dir>/redis-spool-<host>-<name>.bin up to this; then dropped")
    dedup_window: int = Field(100_000, ge=0, description="batch ids remembered per worker to drop duplicates")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="workers: hosts analyzed (glob patterns, e.g. 'web-*'); others' streams are not read (list and "
                    "fleet modes: their batches are dead-lettered); empty = every host")
    heartbeat_ttl_ms: int = Field(
        10_000, ge=500, description="list mode: a worker whose heartbeat key expired is dead; its list is requeued")

    @model_validator(mode="after")
    def _check_transport(self) -> RedisTransportConfig:
        if self.block_ms / 1000 >= self.socket_timeout_s:
            raise ValueError(f"block_ms ({self.block_ms}) must be below socket_timeout_s ({self.socket_timeout_s} s)")
        if self.cluster and self.mode == "list" and not _TAG.search(self.prefix):
            raise ValueError(
                "list mode on a cluster moves elements between keys: give prefix a hash tag, e.g. '{ravn}:'")
        return self

    @property
    def claim_every_s(self) -> float:
        return (self.claim_interval_ms or self.claim_idle_ms // 2) / 1000


class RedisSinkConfig(RedisConnection):
    """``sinks: [{plugin: redis, ...}]``: threat level keys, ``threat_updates`` channel, alerts stream."""

    alerts_maxlen: int = Field(100_000, ge=10, description="approximate MAXLEN of the alerts stream")
    buffer_alerts: int = Field(10_000, ge=0, description="alerts held while Redis is away; older ones are dropped")
    top_alerts: int = Field(5, ge=0, le=100, description="alerts carried in a threat_updates message")
