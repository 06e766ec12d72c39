"""Hook implementations of the ``ebpf_security`` plugin (nothing here touches the kernel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import SourceRegistry


@hookimpl
def ravn_register_sources(registry: SourceRegistry) -> None:
    from ravn_ebpf_security.config import SecurityConfig
    from ravn_ebpf_security.source import SecuritySource

    registry.add("ebpf_security", SecuritySource, SecurityConfig)
