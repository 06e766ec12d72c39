"""Hook implementations of ravn-transport-redis: the ``redis`` transport and the ``redis`` sink."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.components import RuntimeContext, Sink, Transport
    from ravn_core.registry import SinkRegistry, TransportRegistry

from ravn_transport_redis.config import RedisSinkConfig, RedisTransportConfig


def _transport(name: str, config: Any, context: RuntimeContext) -> Transport:
    """Redis streams with consumer groups (or reliable lists) between agents and analyzer workers."""
    from ravn_transport_redis.transport import RedisTransport

    return RedisTransport(name, config, context)


def _sink(name: str, config: Any, context: RuntimeContext) -> Sink:
    """Threat level keys, the threat_updates channel and a bounded alerts stream in Redis."""
    from ravn_transport_redis.sink import RedisSink

    return RedisSink(name, config, context)


@hookimpl
def ravn_register_transports(registry: TransportRegistry) -> None:
    registry.add("redis", _transport, RedisTransportConfig)


@hookimpl
def ravn_register_sinks(registry: SinkRegistry) -> None:
    registry.add("redis", _sink, RedisSinkConfig)
