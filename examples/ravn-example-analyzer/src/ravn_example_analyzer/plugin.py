"""Hook implementations only (RAVN style rule 4): importing this module must not start any work."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import AnalyzerRegistry


@hookimpl
def ravn_register_analyzers(registry: AnalyzerRegistry) -> None:
    """Called once by the PluginHost at startup, before the config is validated."""
    from ravn_example_analyzer.analyzer import ExecWatchAnalyzer, ExecWatchConfig

    registry.add("example_analyzer", ExecWatchAnalyzer, ExecWatchConfig)
