"""PluginHost: the typed facade over pluggy's PluginManager (tox's plugin/manager.py).

Only this module touches ``pm.hook``. Discovery order (pytest/tox): builtins, then the ``ravn`` entry points
after blocking every name in ``RAVN_DISABLED_PLUGINS``, then ``check_pending()``. An entry point is imported only
if it is in ``RAVN_PLUGINS`` (when that allowlist is set) and its files are root's (see ``untrusted``): plugins run
inside the root daemon. Registration finishes before
any thread starts; the host is then frozen.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from ravn_core import hookspecs
from ravn_core.errors import StartupError
from ravn_core.registry import (
    AnalyzerRegistry,
    HealthProbeRegistry,
    Registry,
    SinkRegistry,
    SourceRegistry,
    TransportRegistry,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ravn_core.components import Component, RuntimeSnapshot
    from ravn_core.config import RavnConfig
    from ravn_core.runtime import Runtime

log = logging.getLogger("ravn.plugins")

ENTRY_POINT_GROUP = "ravn"
BUILTIN_PLUGINS = (
    "ravn_core.builtin.transport_embedded",
    "ravn_core.builtin.record",
    "ravn_core.builtin.sinks",
    "ravn_core.builtin.health",
    "ravn_core.builtin.http",
)
# Cannot be blocked through RAVN_DISABLED_PLUGINS: without them the runtime cannot run or tell its state.
ESSENTIAL_PLUGINS = ("ravn_core.builtin.transport_embedded", "ravn_core.builtin.record", "ravn_core.builtin.health")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str]
    blocked: bool


class PluginHost:
    """Loads plugins and calls their hooks. One per process (tests make a fresh one each)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("ravn")
        self.pm.add_hookspecs(hookspecs)
        self.sources = SourceRegistry()
        self.transports = TransportRegistry()
        self.analyzers = AnalyzerRegistry()
        self.sinks = SinkRegistry()
        self.health_probes = HealthProbeRegistry()
        self._dists: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self._frozen = False
        self._failed: dict[str, str] = {}
        if os.environ.get("RAVN_TRACE_PLUGINS") == "1":
            self.pm.trace.root.setwriter(log.debug)
            self.pm.enable_tracing()

    # ------------------------------------------------------------------------------------------ loading
    def register(self, plugin: Any, name: str, distribution: str = "builtin", version: str = "") -> None:
        """Register a plugin object (module or instance). Tests use it for throwaway plugins."""
        if self._frozen:
            raise StartupError(f"plugin {name!r} registered after startup; register before load() finishes")
        if self.pm.is_blocked(name):
            return
        self.pm.register(plugin, name=name)
        self._dists[name] = (distribution, version)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._dists.pop(name, None)

    def load(self, *, autoload: bool | None = None, only: set[str] | None = None) -> None:
        """Builtins, then entry points (minus RAVN_DISABLED_PLUGINS), then ``check_pending``.

        :param autoload: False loads only the entry points named in ``only`` or in ``RAVN_PLUGINS``
            (RAVN_DISABLE_PLUGIN_AUTOLOAD=1; the CLI passes the plugin names of its config as ``only``).
        """
        for name in _disabled_names():
            if name in ESSENTIAL_PLUGINS:
                log.warning("RAVN_DISABLED_PLUGINS names %s, which is essential; ignoring", name)
                continue
            self.pm.set_blocked(name)
        for modname in BUILTIN_PLUGINS:
            if not self.pm.is_blocked(modname):
                self.register(importlib.import_module(modname), modname)
        if autoload is None:
            autoload = not autoload_disabled()
        allowed = _allowed_names()
        named = (only or set()) | (allowed or set())
        for ep in _entry_points():
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            if not autoload and ep.name not in named:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if allowed is not None and ep.name not in allowed:
                self._failed[ep.name] = f"{dist} {version}: not in RAVN_PLUGINS (the allowlist); not loaded"
                continue
            why = untrusted(ep)
            if why:
                self._failed[ep.name] = f"{dist} {version}: refused: {why}"
                log.warning("plugin %s (%s %s) not loaded: %s", ep.name, dist, version, why)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._failed[ep.name] = f"{dist} {version}: {type(exc).__name__}: {exc}"
                log.debug("plugin %s failed to import", ep.name, exc_info=True)
                continue
            self.register(plugin, ep.name, dist, version)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise StartupError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None

    def failed_plugins(self) -> dict[str, str]:
        """Entry points that could not be imported, with the reason (reported when the config names them)."""
        return dict(self._failed)

    # ------------------------------------------------------------------------------------------ registration
    def register_components(self) -> None:
        """Fire every ``ravn_register_*`` hook, one plugin at a time so errors name the plugin."""
        for hookname, registry in (
            ("ravn_register_sources", self.sources),
            ("ravn_register_transports", self.transports),
            ("ravn_register_analyzers", self.analyzers),
            ("ravn_register_sinks", self.sinks),
            ("ravn_register_health_probes", self.health_probes),
        ):
            caller = getattr(self.pm.hook, hookname)
            # Plugins in registration order (builtins first), not pluggy's LIFO call order.
            for impl in caller.get_hookimpls():
                name = self.pm.get_name(impl.plugin) or "?"
                dist, version = self._dists.get(name, ("?", ""))
                registry.current_plugin = name
                registry.current_distribution = f"{dist} {version}".strip()
                try:
                    impl.function(registry=registry)
                except StartupError:
                    raise
                except Exception as exc:
                    raise StartupError(
                        f"plugin {name!r} ({registry.current_distribution}) failed in {hookname}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                finally:
                    registry.current_plugin = registry.current_distribution = "?"
        self._frozen = True

    def registries(self) -> dict[str, Registry[Any]]:
        return {
            "sources": self.sources,
            "transport": self.transports,
            "analyzers": self.analyzers,
            "sinks": self.sinks,
            "health_probes": self.health_probes,
        }

    def check_named_plugins(self, data: dict[str, Any]) -> None:
        """A plugin the config names that failed to import fails startup with its reason."""
        for name in sorted(named_plugins(data)):
            if name in self._failed:
                raise StartupError(f"plugin {name!r} named in the config cannot load: {self._failed[name]}")
            if self.pm.is_blocked(name):
                raise StartupError(f"plugin {name!r} named in the config is blocked by RAVN_DISABLED_PLUGINS")

    def add_commands(self, subparsers: Any) -> None:
        for impl in self.pm.hook.ravn_add_commands.get_hookimpls():
            name = self.pm.get_name(impl.plugin) or "?"
            try:
                impl.function(subparsers=subparsers)
            except Exception as exc:
                raise StartupError(f"plugin {name!r} failed in ravn_add_commands: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------------------------------ lifecycle
    def configure(self, config: RavnConfig) -> None:
        self.pm.hook.ravn_configure.call_historic(kwargs={"config": config})

    def runtime_started(self, runtime: Runtime, components: list[Component],
                        snapshot: Callable[[], RuntimeSnapshot]) -> None:
        """A StartupError from a plugin is raised (startup fails); other errors are logged."""
        self._notify("ravn_runtime_started", fatal=(StartupError,), runtime=runtime, components=components,
                     snapshot=snapshot)

    def component_error(self, component: Component, error: BaseException, restarts: int, quarantined: bool) -> None:
        self._notify(
            "ravn_component_error", component=component, error=error, restarts=restarts, quarantined=quarantined
        )

    def reload(self, reason: str) -> None:
        self._notify("ravn_reload", reason=reason)

    def runtime_stopping(self, reason: str) -> None:
        self._notify("ravn_runtime_stopping", reason=reason)

    def runtime_stopped(self, stats: dict[str, Any], snapshot: Callable[[], RuntimeSnapshot]) -> None:
        self._notify("ravn_runtime_stopped", stats=stats, snapshot=snapshot)

    def _notify(self, hookname: str, fatal: tuple[type[Exception], ...] = (), **kwargs: Any) -> None:
        """Notifications: each impl in its own try, so one plugin's error does not stop the others
        (except the ``fatal`` ones, raised at once)."""
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except fatal:
                raise
            except Exception:
                log.exception("plugin %s failed in %s", self.pm.get_name(impl.plugin), hookname)

    # ------------------------------------------------------------------------------------------ introspection
    def plugin_infos(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._dists.get(name, ("?", ""))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, dist, version, hooks, False))
        for name in sorted(_disabled_names()):
            if self.pm.is_blocked(name):
                out.append(PluginInfo(name, "?", "", [], True))
        return out


def autoload_disabled() -> bool:
    """RAVN_DISABLE_PLUGIN_AUTOLOAD=1: only the entry points the config or RAVN_PLUGINS names are imported."""
    return os.environ.get("RAVN_DISABLE_PLUGIN_AUTOLOAD") == "1"


def named_plugins(data: Any) -> set[str]:
    """The ``plugin:`` names of a config mapping (sources, transport, analyzers, sinks, health_probes)."""
    wanted: set[str] = set()
    if not isinstance(data, dict):
        return wanted
    for key in ("sources", "analyzers", "sinks", "health_probes"):
        sections = data.get(key)
        for section in sections if isinstance(sections, list) else []:
            if isinstance(section, dict) and isinstance(section.get("plugin"), str):
                wanted.add(section["plugin"])
    transport = data.get("transport")
    if isinstance(transport, dict) and isinstance(transport.get("plugin"), str):
        wanted.add(transport["plugin"])
    return wanted


def _allowed_names() -> set[str] | None:
    """RAVN_PLUGINS=a,b: only these entry points load (builtins always do); unset: every trusted one."""
    raw = os.environ.get("RAVN_PLUGINS")
    return None if raw is None else {n.strip() for n in raw.split(",") if n.strip()}


#: files of a plugin found this deep or this many are not all checked; the plugin is refused
MAX_CHECKED_FILES = 20_000


def untrusted(ep: importlib.metadata.EntryPoint) -> str:
    """Why ``ep``'s code must not be imported into this process, or "" when it may.

    Like osquery with extensions: a plugin runs inside the root daemon, so its files (the top-level package of
    the entry point's module, and its distribution's metadata, where the entry point itself is declared) and
    every directory above them must be owned by root or by this process's user and not writable by group or
    others (a sticky directory such as /tmp excepted). Anyone else who could change them would run code as
    root. A module already imported is not checked again (its code already ran). Nothing is imported here.
    """
    import importlib.machinery
    import stat
    import sys

    top = ep.module.split(".", 1)[0]
    if top in sys.modules:
        return ""
    paths: list[str] = []
    spec = importlib.machinery.PathFinder.find_spec(top)
    if spec is not None:
        if spec.submodule_search_locations:
            paths.extend(spec.submodule_search_locations)
        elif spec.origin:
            paths.append(spec.origin)
    meta = getattr(ep.dist, "_path", None)  # a PathDistribution's .dist-info / .egg-info directory
    if meta is not None:
        paths.append(str(meta))
    euid = os.geteuid()
    seen: set[str] = set()

    def bad(path: str) -> str:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"cannot check {path}: {exc.strerror}"
        if st.st_uid not in (0, euid):
            return f"{path} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX) \
                and not stat.S_ISLNK(st.st_mode):
            who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if st.st_mode & bit)
            return f"{path} is writable by {who} (mode {st.st_mode & 0o7777:o})"
        return ""

    for root in paths:
        root = os.path.abspath(root)
        parent = os.path.dirname(root)
        while parent not in seen:  # the directories above: whoever can write one can swap what is below
            seen.add(parent)
            if why := bad(parent):
                return why
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
        if why := bad(root):
            return why
        if os.path.isdir(root) and not os.path.islink(root):
            count = 0
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    count += 1
                    if count > MAX_CHECKED_FILES:
                        return f"{root} has over {MAX_CHECKED_FILES} files to check"
                    if why := bad(os.path.join(dirpath, name)):
                        return why
    return ""


def _disabled_names() -> list[str]:
    return [n.strip() for n in os.environ.get("RAVN_DISABLED_PLUGINS", "").split(",") if n.strip()]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
