"""Every RAVN hook. Hooks wire components together at startup and mark lifecycle points; no event, batch or
alert ever passes through a hook (the runtime calls components directly, one ``try`` each).

Order in which they fire (docs/hooks.md has the diagram; tests/unit/test_hook_order.py asserts it):
``ravn_register_sources`` -> ``ravn_register_transports`` ->
``ravn_register_analyzers`` -> ``ravn_register_sinks`` -> ``ravn_register_health_probes`` ->
``ravn_configure`` -> ``ravn_runtime_started`` -> [``ravn_component_error``]* -> [``ravn_reload``]* ->
``ravn_runtime_stopping`` -> ``ravn_runtime_stopped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ravn_core.components import Component, RuntimeSnapshot
    from ravn_core.config import RavnConfig
    from ravn_core.registry import (
        AnalyzerRegistry,
        HealthProbeRegistry,
        SinkRegistry,
        SourceRegistry,
        TransportRegistry,
    )
    from ravn_core.runtime import Runtime

hookspec = pluggy.HookspecMarker("ravn")


# ---------------------------------------------------------------------------------------------- registration
@hookspec
def ravn_register_sources(registry: SourceRegistry) -> None:
    """Declare the event sources this plugin provides.

    Called once by ``PluginHost.register_components()`` on the main thread, before the config is validated.
    :param registry: call ``registry.add(name, factory, config_model)`` per source.
    Errors: an exception aborts startup, naming the plugin and its distribution.
    """


@hookspec
def ravn_register_transports(registry: TransportRegistry) -> None:
    """Declare the transports this plugin provides (the path from sources to analyzers).

    Called once by ``PluginHost.register_components()`` on the main thread, after ``ravn_register_sources``.
    :param registry: call ``registry.add(name, factory, config_model)`` per transport.
    Errors: an exception aborts startup, naming the plugin and its distribution.
    """


@hookspec
def ravn_register_analyzers(registry: AnalyzerRegistry) -> None:
    """Declare the analyzers this plugin provides.

    Called once by ``PluginHost.register_components()`` on the main thread, after
    ``ravn_register_transports``.
    :param registry: call ``registry.add(name, factory, config_model)`` per analyzer.
    Errors: an exception aborts startup, naming the plugin and its distribution.
    """


@hookspec
def ravn_register_sinks(registry: SinkRegistry) -> None:
    """Declare the alert sinks this plugin provides.

    Called once by ``PluginHost.register_components()`` on the main thread, after ``ravn_register_analyzers``.
    :param registry: call ``registry.add(name, factory, config_model)`` per sink.
    Errors: an exception aborts startup, naming the plugin and its distribution.
    """


@hookspec
def ravn_register_health_probes(registry: HealthProbeRegistry) -> None:
    """Declare health probes (checks the health thread runs every ``ravn.health_interval_s``).

    Called once by ``PluginHost.register_components()`` on the main thread, after ``ravn_register_sinks``.
    :param registry: call ``registry.add(name, factory, config_model)`` per probe.
    Errors: an exception aborts startup, naming the plugin and its distribution.
    """


# ---------------------------------------------------------------------------------------------- command line
@hookspec
def ravn_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ravn`` subcommands (e.g. ``ravn train`` from the ONNX analyzer).

    Called once by ``ravn_core.cli.main()`` on the main thread, before arguments are parsed, after plugins
    are loaded. Call ``subparsers.add_parser(name, help=...)`` and ``parser.set_defaults(func=handler)``,
    where ``handler(args, host) -> int`` (``host``: the loaded PluginHost) returns the exit code.
    Errors: an exception aborts the CLI, naming the plugin.
    """


# ---------------------------------------------------------------------------------------------- configuration
@hookspec(historic=True)
def ravn_configure(config: RavnConfig) -> None:
    """The validated config is known; read the parts that concern this plugin as a whole.

    Called once by ``PluginHost.configure()`` on the main thread after validation and before any component is
    built. Historic: a plugin registered later still sees it.
    :param config: the whole validated config (read-only).
    Errors: an exception aborts startup (exit 2), naming the plugin.
    """


# ---------------------------------------------------------------------------------------------- runtime
@hookspec
def ravn_runtime_started(
    runtime: Runtime, components: list[Component], snapshot: Callable[[], RuntimeSnapshot]
) -> None:
    """Every component is built and the sources are attached; the threads start right after it returns.

    Called once by ``Runtime.start()`` on the main thread, before any component error can fire.
    :param runtime: the running runtime, to tell runtimes apart; read it only through ``snapshot``.
    :param components: every component, in config order (sources, transport, analyzers, sinks, probes).
    :param snapshot: ``Runtime.snapshot``: call it (from any thread) for a fresh ``RuntimeSnapshot`` (status,
        counters, latency histogram, alert counts), e.g. on each scrape of the HTTP endpoint.
    Errors: a ``StartupError`` aborts startup (the runtime detaches its sources, fires ``ravn_runtime_stopped``
    and raises it: e.g. the HTTP port is taken); any other exception is logged with the plugin's name and the
    runtime goes on.
    """


@hookspec
def ravn_component_error(component: Component, error: BaseException, restarts: int, quarantined: bool) -> None:
    """A component raised. The runtime already logged it once and will restart it (or has quarantined it).

    Called by the supervisor on the failing component's thread.
    :param restarts: how many times this component has been restarted so far.
    :param quarantined: True when its error budget is spent and it will not run again until SIGHUP.
    Errors: logged and ignored.
    """


@hookspec
def ravn_reload(reason: str) -> None:
    """SIGHUP (or ``ravn reload``): components are being asked to re-read rules, models and secrets.

    Called by the main loop on the main thread, before each component's ``reload()``.
    :param reason: ``"SIGHUP"`` or a description of what triggered the reload.
    Errors: logged and ignored.
    """


@hookspec
def ravn_runtime_stopping(reason: str) -> None:
    """Shutdown began: sources are being stopped and queues drained.

    Called once by ``Runtime.stop()`` on the main thread.
    :param reason: ``"SIGTERM"``, ``"SIGINT"``, ``"duration"`` or ``"error: ..."``.
    Errors: logged and ignored.
    """


@hookspec
def ravn_runtime_stopped(stats: dict[str, Any], snapshot: Callable[[], RuntimeSnapshot]) -> None:
    """Shutdown finished: every thread joined, sinks flushed, sources detached.

    Called once by ``Runtime.stop()`` on the main thread.
    :param stats: final counters per stage (accepted, delivered, dropped).
    :param snapshot: the same callable ``ravn_runtime_started`` got (equal to it: a plugin that keyed state on it
        finds that state again).
    Errors: logged and ignored.
    """
