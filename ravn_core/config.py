"""YAML config -> typed models. Each plugin's section is validated by that plugin's own model.

Every error names the file, the line and the key path, e.g.
``ravn.yaml:14: sources[1] (ebpf_file).prefixes: Input should be a valid list``.

Secrets are references, never literals: ``password: {$env: RAVN_REDIS_PASSWORD}`` or
``password: {$file: /run/secrets/redis}``. Plugin models declare such fields as ``SecretRef``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, model_validator
from pydantic_core import CoreSchema, core_schema

from ravn_core.components import PluginConfig
from ravn_core.errors import ConfigError

if TYPE_CHECKING:
    from ravn_core.registry import Registration, Registry

Path_ = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------- secrets
class Secret:
    """A resolved secret. ``str()`` and ``repr()`` never show the value; call ``get()``."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str) -> None:
        self._value = value
        self.reference = reference

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _resolve_secret, serialization=core_schema.plain_serializer_function_ser_schema(repr)
        )


def _resolve_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        raise ValueError("secrets are references, not literals: use {$env: NAME} or {$file: /path}")
    if not isinstance(value, dict) or len(value) != 1 or not ({"$env", "$file"} & set(value)):
        raise ValueError("a secret is {$env: NAME} or {$file: /path}")
    if "$env" in value:
        name = str(value["$env"])
        if name not in os.environ:
            raise ValueError(f"environment variable {name!r} is not set")
        return Secret(os.environ[name], f"$env:{name}")
    path = str(value["$file"])
    try:
        return Secret(Path(path).read_text().rstrip("\n"), f"$file:{path}")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path!r}: {exc.strerror}") from None


# The type plugin models use for secret fields: accepts {$env: NAME} or {$file: /path}, yields a Secret.
SecretRef = Secret


# ---------------------------------------------------------------------------------------------- core models
class ThreatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    medium: float = Field(50, ge=0, le=100, description="score above which the level is MEDIUM")
    high: float = Field(80, ge=0, le=100, description="score above which the level is HIGH")
    fold_window_s: float = Field(60, gt=0, description="repeats of one alert (same rule, process and description) "
                                 "within this are folded into one")
    top_alerts: int = Field(5, ge=0, le=100, description="alerts (and incidents) carried in a threat update")
    incident_window_s: float = Field(600, gt=0, description="a rule counts in its incident for this long after its "
                                     "last alert; an incident with no rule left closes")
    same_tactic_weight: float = Field(0.1, ge=0, le=1, description="share of the other scores of one ATT&CK tactic "
                                      "added to its best rule in an incident")
    same_tactic_max: float = Field(10, ge=0, le=100, description="most that extra rules of one tactic add")
    cross_tactic_weight: float = Field(0.75, ge=0, le=1, description="weight of each tactic after the strongest in "
                                       "an incident's noisy-OR (1: plain noisy-OR)")
    corroboration_weight: float = Field(0.25, ge=0, le=1, description="share of a corroborating alert's score "
                                        "(the sequence model) that counts in its incident")
    corroboration_max: float = Field(20, ge=0, le=100, description="most that corroborating alerts add to an "
                                     "incident (as one group); never above `medium`")
    max_incidents: int = Field(1024, ge=1, description="open incidents kept per host; beyond, the least recently "
                               "active of the lowest level is evicted")

    @model_validator(mode="after")
    def _order(self) -> ThreatConfig:
        if self.medium >= self.high:
            raise ValueError(f"medium ({self.medium}) must be below high ({self.high})")
        if self.corroboration_max > self.medium:
            raise ValueError(f"corroboration_max ({self.corroboration_max}) must not exceed medium ({self.medium}): "
                             "corroboration alone is never above LOW")
        return self


class CoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field("", description="this host's name in alerts and Redis keys; empty = hostname")
    state_dir: str = Field("/run/ravn", description="root-only directory (0700, owned by RAVN's user; created so, "
                           "refused when someone else owns it) for the status socket, status.json and spool files")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$", description="log level")
    health_interval_s: float = Field(5.0, gt=0, le=3600, description="how often the health thread checks")
    queue_batches: int = Field(256, ge=1, le=1_000_000, description="capacity of each stage queue, in batches")
    queue_events: int = Field(262144, ge=1, description="events the stage queue holds at most (about 1 KB each): "
                              "bounds the memory a burst can pin")
    analysis_threads: int = Field(1, ge=1, le=64, description="analysis threads consuming the transport")
    reorder_ms: int = Field(30, ge=0, le=5000, description="each probe delivers through its own ring, so a chmod can "
                            "reach the analyzers after the exec it preceded: an analysis thread holds events this "
                            "long (of event time) and hands them on in evt.ts order; 0: each batch as it comes")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="bound on draining queues at SIGINT/SIGTERM")
    error_budget: int = Field(5, ge=1, description="restarts within error_window_s before quarantine")
    error_window_s: float = Field(300.0, gt=0, description="window of the error budget")
    restart_backoff_s: float = Field(0.5, gt=0, description="first restart delay; doubles per restart")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="cap of the restart delay")
    memory_limit_mb: float = Field(
        200.0, gt=0, description="private (anonymous) RSS in MB above which RAVN alerts on itself and trims caches; "
        "file-backed library pages (~60 MB: onnxruntime, numpy, Python) are not counted")
    heap_trim_interval_s: float = Field(
        60.0, ge=0, description="how often the health thread hands freed heap back to the kernel (malloc_trim) "
        "when private memory is 32 MB or more above the lowest it has been: what a burst (a fork storm) freed; "
        "0: only over memory_limit_mb")
    stall_timeout_s: float = Field(60.0, gt=0, description="a pipeline thread whose heartbeat is older than this "
                                   "counts as stalled and the systemd watchdog is no longer fed, so WatchdogSec "
                                   "restarts RAVN; above restart_backoff_max_s, which a restarting source waits")
    drop_alert_ratio: float = Field(0.01, ge=0, le=1, description="share of events dropped in one health interval "
                                    "over which drop_policy applies")
    drop_policy: Literal["alert", "exit"] = Field(
        "alert", description="drops over drop_alert_ratio: `alert` raises a self-alert (at most every "
        "drop_alert_interval_s); `exit` stops RAVN with exit code 1 (for a supervisor that restarts it)")
    drop_alert_interval_s: float = Field(10.0, ge=0, le=3600, description="least time between two drop self-alerts")
    max_hosts: int = Field(4096, ge=1, description="hosts whose process tree and threat score are kept (fleet "
                           "workers); over it the least recently seen are forgotten (counter hosts_evicted)")
    proctree_max: int = Field(65536, ge=16, description="processes kept in the process tree (LRU)")
    http_listen: str = Field("", pattern=r"^(|\[?[0-9A-Za-z.:-]*\]?:[0-9]{1,5})$",
                             description="HOST:PORT of the /healthz and /metrics endpoint (config/ravn.yaml sets "
                                         "127.0.0.1:9477); empty disables it. They carry no alert text: /status "
                                         "is served only on the root-only socket <state_dir>/ravn.sock")
    http_optional: bool = Field(False, description="when http_listen cannot be bound, log it and run without the "
                                                   "endpoint; false: a startup error (exit 2), since whoever holds "
                                                   "the port would answer /healthz in RAVN's name")
    http_max_connections: int = Field(32, ge=1, le=1024, description="requests served at once on each endpoint "
                                      "(TCP, status socket), one thread each; more are answered 503 and closed")
    http_timeout_s: float = Field(5.0, gt=0, le=300, description="an endpoint connection is closed this long "
                                  "after it was accepted, whatever it has sent")
    bpf_stats: bool = Field(False, description="set sysctl kernel.bpf_stats_enabled=1 so /metrics shows per-program "
                                               "run time (costs ~20-30 ns per program run)")
    threat: ThreatConfig = Field(default_factory=ThreatConfig)

    def hostname(self) -> str:
        return self.host or socket.gethostname()


class Section(BaseModel):
    """A plugin's section before its own model validates it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    plugin: str
    name: str | None = None
    enabled: bool = True


class RawConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ravn: CoreConfig = Field(default_factory=CoreConfig)
    sources: list[Section] = Field(default_factory=list)
    transport: Section = Field(default_factory=lambda: Section(plugin="embedded"))
    analyzers: list[Section] = Field(default_factory=list)
    sinks: list[Section] = Field(default_factory=list)
    health_probes: list[Section] = Field(default_factory=list)


@dataclass(frozen=True)
class ComponentSpec:
    """One component to build: which registration, its instance name, its validated config.

    :ivar section: the config section it comes from (``sources``, ``transport``, ``analyzers``, ``sinks``,
        ``health_probes``).
    """

    section: str
    name: str
    plugin: str
    config: PluginConfig
    registration: Registration[Any]

    @property
    def kind(self) -> str:
        """The component kind, as ``Component.kind``: source, transport, analyzer, sink or health_probe."""
        return _KINDS[self.section]


_KINDS = {"sources": "source", "transport": "transport", "analyzers": "analyzer", "sinks": "sink",
          "health_probes": "health_probe"}


@dataclass(frozen=True)
class RavnConfig:
    """The whole validated config."""

    core: CoreConfig
    sources: list[ComponentSpec]
    transport: ComponentSpec
    analyzers: list[ComponentSpec]
    sinks: list[ComponentSpec]
    health_probes: list[ComponentSpec]
    path: str | None = None
    explicitly_named: frozenset[str] = field(default_factory=frozenset)

    def components(self) -> list[ComponentSpec]:
        return [*self.sources, self.transport, *self.analyzers, *self.sinks, *self.health_probes]


# ---------------------------------------------------------------------------------------------- YAML with lines
#: nodes a YAML file may expand to, aliases counted each time they are used: a 403-byte "billion laughs" file
#: (each level an alias list of the one below) otherwise expands to gigabytes; real configs and rule files are
#: a few thousand nodes
MAX_YAML_NODES = 200_000
#: nesting depth a YAML file may have (deeper ones are refused, not a RecursionError)
MAX_YAML_DEPTH = 64


class _Walk:
    """Turns a composed YAML node tree into Python values, recording the line of every key path; refuses an alias
    that contains itself, more than MAX_YAML_NODES nodes after alias expansion, and nesting past MAX_YAML_DEPTH."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lines: dict[Path_, int] = {}
        self.nodes = 0
        self.open: set[int] = set()  # ids of the collection nodes being converted (the path from the root)
        self.scalars = yaml.SafeLoader("")  # resolves scalars (null, ints, timestamps...) the safe way

    def value(self, node: yaml.Node, path: Path_, line: int | None = None) -> Any:
        self.lines[path] = line or node.start_mark.line + 1
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise ConfigError(f"{self.where}:{node.start_mark.line + 1}: over {MAX_YAML_NODES} YAML nodes once "
                              f"aliases are expanded (an alias bomb?); write the values out instead")
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self.scalars.construct_object(node, deep=True)
        if id(node) in self.open:
            raise ConfigError(f"{self.where}:{node.start_mark.line + 1}: {_fmt(path)}: a YAML alias that contains "
                              f"itself (recursive anchor)")
        if len(path) >= MAX_YAML_DEPTH:
            raise ConfigError(f"{self.where}:{node.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.value(n, (*path, i)) for i, n in enumerate(node.value)]
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                    raise ConfigError(f"{self.where}:{key_node.start_mark.line + 1}: {_fmt(path)}: keys must be "
                                      f"strings (not numbers, booleans or merge keys `<<`)")
                if key in out:
                    raise ConfigError(f"{self.where}:{key_node.start_mark.line + 1}: {_fmt((*path, key))}: "
                                      f"duplicate key")
                out[key] = self.value(value_node, (*path, key), key_node.start_mark.line + 1)
            return out
        finally:
            self.open.discard(id(node))


def with_transport(config: RavnConfig, registries: dict[str, Registry[Any]], plugin: str,
                   options: dict[str, Any]) -> RavnConfig:
    """``config`` with its transport replaced by ``plugin`` and ``options`` (validated by the plugin's model):
    ``ravn record`` and ``ravn replay`` put the builtin ``record`` / ``replay`` transport in this way."""
    reg = registries["transport"].get(plugin)
    if reg is None:
        raise ConfigError(f"unknown transport plugin {plugin!r} (blocked?)")
    try:
        model = reg.config_model.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"transport {plugin}: {_fmt(tuple(err['loc']))}: {err['msg']}") from None
    spec = ComponentSpec("transport", plugin, plugin, model, reg)
    return dataclasses.replace(config, transport=spec, explicitly_named=config.explicitly_named | {plugin})


def _fmt(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top level)"


def read_text(path: str | Path, what: str = "config") -> str:
    """A file's text; a missing or unreadable file is a ConfigError naming it."""
    where = str(path)
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        if what == "config":
            raise ConfigError(f"{where}: no such file; pass an existing config (see config/ravn.example.yaml)") \
                from None
        raise ConfigError(f"{where}: no such {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {what} file: {exc.strerror}") from None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """Read a YAML mapping and the line of every key path in it."""
    return parse_yaml(read_text(path), str(path))


def parse_yaml_lines(text: str, where: str) -> tuple[Any, dict[Path_, int]]:
    """The one YAML reader of RAVN (configs and rule files): the document's value and the line of every key path
    (a mapping key's line; a list item's first line). Safe tags only; duplicate keys, non-string keys, recursive
    aliases, alias bombs and absurd nesting are ConfigErrors naming the file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}{line}: malformed YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested deeper than the YAML parser can follow") from None
    if node is None:
        return None, {}
    walk = _Walk(where)
    try:
        data = walk.value(node, ())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: malformed YAML: {exc}") from None
    return data, walk.lines


def parse_yaml(text: str, where: str = "<config>") -> tuple[dict[str, Any], dict[Path_, int]]:
    """A config: a YAML mapping (see parse_yaml_lines)."""
    data, lines = parse_yaml_lines(text, where)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:{lines.get((), 1)}: the config must be a mapping (ravn:, sources:, ...)")
    return data, lines


def _line(lines: dict[Path_, int], path: Path_) -> int:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _raise(exc: ValidationError, where: str, lines: dict[Path_, int], base: Path_, label: str = "") -> None:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    path = base + loc
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    raise ConfigError(f"{where}:{_line(lines, path)}: {_fmt(path)}{label}: {msg}{more}") from None


# ---------------------------------------------------------------------------------------------- validation
def validate(
    data: dict[str, Any],
    registries: dict[str, Registry[Any]],
    where: str = "<config>",
    lines: dict[Path_, int] | None = None,
) -> RavnConfig:
    """Validate a parsed config against the core models and each plugin's model.

    :param registries: ``{"sources": ..., "transport": ..., "analyzers": ..., "sinks": ..., "health_probes": ...}``
    """
    lines = lines or {}
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        _raise(exc, where, lines, ())
        raise AssertionError("unreachable") from None

    named: set[str] = set()

    def build(key: str, section: Section, base: Path_) -> ComponentSpec:
        registry = registries[key]
        reg = registry.get(section.plugin)
        if reg is None:
            known = ", ".join(registry.names()) or "none installed"
            hint = ""
            if os.environ.get("RAVN_DISABLE_PLUGIN_AUTOLOAD") == "1":
                hint = ("; RAVN_DISABLE_PLUGIN_AUTOLOAD=1 imports only the entry points named by the config or "
                        "RAVN_PLUGINS: name the one that provides it in RAVN_PLUGINS (e.g. transport_redis for "
                        "redis, sinks for webhook)")
            raise ConfigError(
                f"{where}:{_line(lines, (*base, 'plugin'))}: {_fmt((*base, 'plugin'))}: unknown {registry.kind} "
                f"plugin {section.plugin!r} (known: {known}; `ravn plugins list` shows what is installed{hint})"
            )
        options = dict(section.model_extra or {})
        name = section.name or section.plugin
        try:
            model = reg.config_model.model_validate(options)
        except ValidationError as exc:
            _raise(exc, where, lines, base, f" ({section.plugin})")
            raise AssertionError("unreachable") from None
        named.add(section.plugin)
        return ComponentSpec(key, name, section.plugin, model, reg)

    def build_list(key: str, sections: list[Section]) -> list[ComponentSpec]:
        # Disabled sections are validated too (a typo is an error either way) but not built.
        specs: list[ComponentSpec] = []
        seen: dict[str, int] = {}
        for i, section in enumerate(sections):
            spec = build(key, section, (key, i))
            if not section.enabled:
                continue
            if spec.name in seen:  # i is the section's own index: disabled sections before it count too
                raise ConfigError(
                    f"{where}:{_line(lines, (key, i))}: {key}[{i}]: name {spec.name!r} is used twice in {key} "
                    f"({key}[{seen[spec.name]}] and {key}[{i}]); give one of them `name:`"
                )
            seen[spec.name] = i
            specs.append(spec)
        return specs

    return RavnConfig(
        core=raw.ravn,
        sources=build_list("sources", raw.sources),
        transport=build("transport", raw.transport, ("transport",)),
        analyzers=build_list("analyzers", raw.analyzers),
        sinks=build_list("sinks", raw.sinks),
        health_probes=build_list("health_probes", raw.health_probes),
        path=None if where.startswith("<") else where,
        explicitly_named=frozenset(named),
    )


def load(path: str | Path, registries: dict[str, Registry[Any]]) -> RavnConfig:
    """Read and validate a config file. Raises ConfigError naming file, line and key path."""
    data, lines = load_yaml(path)
    return validate(data, registries, str(path), lines)


__all__ = ["ConfigError", "PluginConfig", "RavnConfig", "Secret", "SecretRef", "load", "validate"]
