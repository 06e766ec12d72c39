"""Typed registries that plugins fill with component factories during registration (tox's register.py).

A registration is ``registry.add(name, factory, config_model)``. ``factory(name, config, context)`` builds the
component; ``config_model`` (a ``PluginConfig`` subclass) validates its YAML section before that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ravn_core.components import (
    Analyzer,
    Component,
    HealthProbe,
    PluginConfig,
    RuntimeContext,
    Sink,
    Source,
    Transport,
)
from ravn_core.errors import StartupError

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class Registration(Generic[C]):
    name: str
    factory: Callable[[str, Any, RuntimeContext], C]
    config_model: type[PluginConfig]
    plugin: str  # the pluggy plugin name that registered it
    distribution: str  # "ravn-ebpf-file 0.1.0", or "builtin"
    description: str


class Registry(Generic[C]):
    """Factories of one kind of component, by name."""

    kind = "component"

    def __init__(self) -> None:
        self._items: dict[str, Registration[C]] = {}
        # Set by PluginHost while one plugin's registration hook runs, so errors can name the plugin.
        self.current_plugin = "?"
        self.current_distribution = "?"

    def add(
        self,
        name: str,
        factory: Callable[[str, Any, RuntimeContext], C],
        config_model: type[PluginConfig],
        description: str = "",
    ) -> None:
        """Register ``factory`` under ``name``. A name already taken aborts startup naming both owners."""
        if name in self._items:
            prev = self._items[name]
            raise StartupError(
                f"duplicate {self.kind} {name!r}: {prev.distribution} vs {self.current_distribution}"
            )
        if not (isinstance(config_model, type) and issubclass(config_model, PluginConfig)):
            raise StartupError(f"{self.kind} {name!r}: config_model must subclass ravn_core.PluginConfig")
        self._items[name] = Registration(
            name, factory, config_model, self.current_plugin, self.current_distribution,
            description or (factory.__doc__ or "").strip().split("\n")[0],
        )

    def get(self, name: str) -> Registration[C] | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]  # Iterator[Registration[C]]
        return iter(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items


class SourceRegistry(Registry[Source]):
    kind = "source"


class TransportRegistry(Registry[Transport]):
    kind = "transport"


class AnalyzerRegistry(Registry[Analyzer]):
    kind = "analyzer"


class SinkRegistry(Registry[Sink]):
    kind = "sink"


class HealthProbeRegistry(Registry[HealthProbe]):
    kind = "health_probe"
