"""The threaded runtime: sources -> ingress queue -> transport -> analysis -> sink queue -> sinks, supervised.

One module per part (see docs/ARCHITECTURE.md for the picture):

- ``source``: ``SourceStage``, a poll thread per source filling the bounded ingress queue (counts accepted, dropped),
  or with the embedded transport under role ``all`` publishing to it directly (published);
- ``egress``: ``EgressStage``, the transport thread publishing what the sources accepted (published, publish_lost);
  not started when the sources publish directly;
- ``analysis``: ``AnalysisStage``, analysis threads: process tree, analyzers, dead letters, scoring (analyzed, ...);
- ``sink``: ``SinkStage``, the sink thread emitting alerts and acking deliveries (alerts_emitted, acked, ...);
- ``supervisor``: ``Slot`` and ``Supervisor``, error budgets, restart backoff, quarantine, thread restarts;
- ``hosts``: ``Hosts``, per-host process trees and incident trackers, bounded by ``ravn.max_hosts``;
- ``selfwatch``: ``SelfWatch``, RAVN's own memory and drops (self-alerts, drop policy);
- ``phases``: the shutdown order; ``daemon``: ``Runtime``, which builds, starts, runs and stops the rest.

Each stage owns its counters, written by its own thread(s) only; ``Runtime.stats()`` reads them all.
"""

from ravn_core.runtime.analysis import LATENCY_BUCKETS
from ravn_core.runtime.daemon import ROLES, Runtime, runtime_context
from ravn_core.runtime.supervisor import Slot

__all__ = ["LATENCY_BUCKETS", "ROLES", "Runtime", "Slot", "runtime_context"]
