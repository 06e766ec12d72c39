"""Base classes of the components that plugins provide, and the values that flow between them.

Threads (see docs/ARCHITECTURE.md): each source runs in its own poll thread; the runtime moves the batches
it returns through a bounded queue to the transport; analysis threads consume batches from the transport, run
every analyzer on them, feed the threat scorer and hand alerts to the sink thread. Each component is called
from exactly one thread at a time (its own), except ``Transport.publish`` and ``Transport.consume``, which the
transport must allow from the transport thread and the analysis threads at once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ravn_core.events import Batch, Event

if TYPE_CHECKING:
    import logging

    from ravn_core.proctree import ProcessTree

HealthState = Literal["ok", "degraded", "failed", "stopped"]
Level = Literal["LOW", "MEDIUM", "HIGH"]


class PluginConfig(BaseModel):
    """Base of every plugin's typed config model: unknown keys are errors; every field documents itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Health:
    """What a component says of itself. ``failed`` makes the supervisor restart it."""

    state: HealthState = "ok"
    detail: str = ""
    counters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeContext:
    """Given to every component factory.

    :ivar host: this host's name (config ``ravn.host`` or the hostname).
    :ivar ravn_pid: RAVN's own pid; probes exclude it and its children in the kernel.
    :ivar state_dir: a root-only directory for state files and sockets.
    :ivar logger: the component's logger (``ravn.<kind>.<name>``).
    :ivar config_path: the YAML file the config came from, for resolving relative paths (None in tests).
    """

    host: str
    ravn_pid: int
    state_dir: str
    logger: logging.Logger
    config_path: str | None = None


@dataclass(frozen=True)
class RuntimeSnapshot:
    """One read of a running runtime, for observers such as the HTTP endpoint (``Runtime.snapshot()``).

    Plugins read the runtime only through this: ``ravn_runtime_started`` hands them ``snapshot``, a callable that
    takes a fresh one. Everything in it is a copy; holding it pins nothing.

    :ivar status: ``Runtime.status()``: pid, host, role, health, components, threads, threat, ``stats``,
        latency quantiles, memory and the recent alerts (alert text: serve it only to root).
    :ivar latency_bounds: upper bounds (seconds) of the analysis latency histogram.
    :ivar latency_counts: batches per bucket, not cumulative; one more than ``latency_bounds`` (the +Inf bucket).
    :ivar latency_sum: the sum of the batch latencies counted there (seconds).
    :ivar alert_counts: alerts sent to the sinks per (level, rule name).
    :ivar proctrees: per host: (processes held in its process tree, evictions by the tree's bound).
    :ivar queue_capacity: capacity of each stage queue, in batches (``ravn.queue_batches``).
    :ivar proctree_max: bound of each process tree (``ravn.proctree_max``).
    :ivar memory_limit_bytes: ``ravn.memory_limit_mb`` in bytes.
    """

    status: dict[str, Any]
    latency_bounds: tuple[float, ...]
    latency_counts: tuple[int, ...]
    latency_sum: float
    alert_counts: dict[tuple[str, str], int]
    proctrees: dict[str, tuple[int, int]]
    queue_capacity: int
    proctree_max: int
    memory_limit_bytes: int


@dataclass
class BatchContext:
    """What analyzers get beside a batch.

    :ivar host: the host the batch came from (several in fleet mode).
    :ivar proctree: that host's process tree, already updated with this batch's fork/exec/exit events.
    :ivar now: wall-clock seconds when analysis of the batch started.
    """

    host: str
    proctree: ProcessTree
    now: float


@dataclass
class Alert:
    """One detection. ``evidence`` holds the triggering events, the process and its ancestry.

    :ivar score: 0-100; the core combines the scores of an incident's alerts into the incident's score, and the
        worst open incident is the host's threat score (ravn_core/threat.py).
    :ivar rule: rule name for the rules analyzer, model name for a model.
    :ivar tags: ATT&CK technique ids, e.g. ``["T1059.004"]``; the first one's tactic is the rule's tactic when
        alerts of an incident are combined.
    :ivar count: how many alerts of this rule for this process were folded into this one.
    :ivar incident: the id of the incident the alert joined; set by the core when it scores the alert.
    :ivar corroboration: set by an analyzer whose alerts only corroborate others (the sequence model): such an
        alert adds a capped amount to the incident of the process it names, never makes one above LOW on its own,
        and reaches the sinks only when its incident holds another alert.
    """

    analyzer: str
    rule: str
    score: int
    description: str
    pid: int = 0
    comm: str = ""
    tags: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    host: str = ""
    level: Level = "LOW"
    count: int = 1
    incident: str = ""
    corroboration: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThreatUpdate:
    """The host's threat level changed.

    :ivar score: the score of the worst open incident.
    :ivar top_alerts: the best alert of each rule of the worst incident.
    :ivar incidents: summaries of the open incidents at the new level, worst first (``Incident.summary``: id,
        root process, rules in order, score, level, age); empty when the level fell to LOW with none open.
    """

    host: str
    level: Level
    score: float
    previous_level: Level
    top_alerts: list[Alert]
    ts: float = field(default_factory=time.time)
    incidents: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "threat"
        return d

    def describe(self) -> str:
        """One line: the change and the incident that set it (root process and rules in order)."""
        text = f"threat level {self.previous_level} -> {self.level} (score {self.score:.1f})"
        if self.incidents:
            inc = self.incidents[0]
            root = inc.get("root") or {}
            text += (f", incident {inc.get('id', '?')} root {root.get('pid', 0)} {root.get('comm', '') or '?'}: "
                     f"{' > '.join(inc.get('rules') or []) or '-'}")
            if len(self.incidents) > 1:
                text += f" (+{len(self.incidents) - 1} more at {self.level})"
        return text


@dataclass
class Delivery:
    """A batch taken from a transport; ``ack(delivery)`` once analyzers and sinks have taken it."""

    host: str
    batch: Batch
    token: Any = None


class Component(ABC):  # noqa: B024 - abstract by intent; kinds add the abstract methods
    """Common to all components. ``name`` is the instance name from the config (defaults to the plugin)."""

    kind: ClassVar[str] = "component"

    def __init__(self, name: str, config: Any, context: RuntimeContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.log = context.logger

    def health(self) -> Health:
        """Called by the health thread every ``ravn.health_interval_s``. Must not block."""
        return Health()

    def reload(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """SIGHUP: re-read what can be re-read (rules, model). Keep the old state if the new one is bad."""

    def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release everything. Called once, on the component's own thread or at shutdown."""


class Source(Component):
    """Produces events. Runs in its own poll thread: ``start``, then ``poll`` until stop, then ``stop``."""

    kind = "source"

    @abstractmethod
    def start(self) -> None:
        """Load and attach. Raise ``UnusableEnvironment`` with the fix when the machine cannot do it."""

    @abstractmethod
    def poll(self, timeout_ms: int) -> Batch:
        """Return the events that arrived, waiting at most ``timeout_ms``. Never block longer."""

    @abstractmethod
    def stop(self) -> None:
        """Detach everything. After it returns no program, map or fd of this source is left."""

    def drain(self) -> Batch:
        """At shutdown, after ``stop`` is requested: return whatever is still buffered. Default: nothing."""
        return []


class Transport(Component):
    """Moves batches from the sources' side to the analysis side (in-process, or Redis for fleets)."""

    kind = "transport"

    @abstractmethod
    def publish(self, host: str, batch: Batch) -> None:
        """Accept a batch. Must not lose it once it returns: spool it if the backend is away."""

    @abstractmethod
    def consume(self, timeout_s: float) -> Delivery | None:
        """Return the next batch for analysis, or None after ``timeout_s``."""

    def ack(self, delivery: Delivery) -> None:
        """The batch was analyzed and its alerts taken by the sinks."""

    def flush(self, timeout_s: float) -> None:
        """Push out anything buffered (spool, pipeline) within ``timeout_s``."""

    def pending(self) -> int:
        """Batches published and not yet consumed (for drain at shutdown and metrics)."""
        return 0


class Analyzer(Component):
    """Scores batches. ``analyze`` runs on an analysis thread; it must not block on I/O."""

    kind = "analyzer"

    @abstractmethod
    def analyze(self, batch: Batch, ctx: BatchContext) -> list[Alert]:
        """Return the alerts this batch raises (often none)."""

    def tick(self, ctx: BatchContext) -> list[Alert]:
        """Called about once a second with no batch, for time-based windows. Default: nothing."""
        return []


class Sink(Component):
    """Receives alerts and threat updates. Runs on the sink thread."""

    kind = "sink"

    @abstractmethod
    def emit_alerts(self, alerts: list[Alert]) -> None:
        """Deliver alerts (already folded and scored)."""

    def emit_threat(self, update: ThreatUpdate) -> None:
        """Deliver a threat level change."""

    def emit_incidents(self, host: str, incidents: list[dict[str, Any]]) -> None:
        """The open incidents of ``host`` changed (one opened, closed, or gained an alert or score).

        ``incidents`` is the whole current list, worst first (``Incident.summary`` dicts: id, root, rules, score,
        level, age_s, ...); empty when none is open. Called at most about once a second per host, after the
        alerts that changed them. Default: nothing (alerts carry their incident id anyway).
        """

    def flush(self) -> None:
        """Make everything emitted so far durable."""


class HealthProbe(Component):
    """Checks something about the daemon or the machine; run by the health thread."""

    kind = "health_probe"

    @abstractmethod
    def check(self) -> Health:
        """Return the current state. Must not block for more than a few ms."""


def event_pid(event: Event) -> int:
    """The acting process of an event (``proc.pid``), 0 when missing."""
    pid = event.get("proc.pid", 0)
    return pid if isinstance(pid, int) else 0
