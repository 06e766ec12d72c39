"""Hook implementations of analyzer_rules: registration only, nothing runs at import time.

This is the whole plugin surface a third-party analyzer needs (copy it): one ``@hookimpl`` that adds a
factory and its typed config model to the analyzer registry. The factory is called with
``(name, config, runtime_context)`` after the config section validated against ``RulesConfig``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import AnalyzerRegistry


@hookimpl
def ravn_register_analyzers(registry: AnalyzerRegistry) -> None:
    # Imported here so that `import ravn_analyzers.rules.plugin` stays cheap and side-effect free.
    from ravn_analyzers.rules.engine import RulesAnalyzer, RulesConfig

    registry.add("analyzer_rules", RulesAnalyzer, RulesConfig, "YAML rules: conditions, sequences, thresholds")


@hookimpl
def ravn_add_commands(subparsers: Any) -> None:
    """``ravn rules check FILE...`` and ``ravn rules list`` (rules/cli.py)."""
    from ravn_analyzers.rules.cli import add_rules_command

    add_rules_command(subparsers)
