"""Hook implementations of analyzer_onnx: registration, `ravn train` and `ravn learn`; nothing runs at import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import AnalyzerRegistry


@hookimpl
def ravn_register_analyzers(registry: AnalyzerRegistry) -> None:
    # Imported here: importing the plugin must stay cheap and must not need onnxruntime.
    from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig

    registry.add("analyzer_onnx", OnnxAnalyzer, OnnxConfig, "ONNX sequence model over per-process syscall windows")


@hookimpl
def ravn_add_commands(subparsers: Any) -> None:
    from ravn_analyzers.onnx.cli import add_train_command
    from ravn_analyzers.onnx.learn import add_learn_command

    add_train_command(subparsers)
    add_learn_command(subparsers)
