"""Hook implementations of the ebpf_file plugin (registration only; importing this touches no kernel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import SourceRegistry


@hookimpl
def ravn_register_sources(registry: SourceRegistry) -> None:
    from ravn_ebpf_file.config import FileConfig
    from ravn_ebpf_file.source import FileSource

    registry.add("ebpf_file", FileSource, FileConfig)
