"""RAVN's Redis transport and sink: the fleet path from agents to analyzer workers.

- ``transport: {plugin: redis}``: stream mode (one XADD per batch, consumer groups, XAUTOCLAIM of dead
  consumers' entries, dead-letter stream) or list mode (LPUSH + BLMOVE into a per-worker processing list).
- ``sinks: [{plugin: redis}]``: threat level keys, ``threat_updates`` pub/sub, a bounded alerts stream.

docs: plugins/transport_redis/README.md.
"""

__all__: list[str] = []
