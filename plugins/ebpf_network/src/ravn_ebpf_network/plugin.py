"""Hook implementations of the ebpf_network plugin (registration only; importing this touches no kernel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import SourceRegistry


@hookimpl
def ravn_register_sources(registry: SourceRegistry) -> None:
    from ravn_ebpf_network.source import NetworkConfig, NetworkSource

    registry.add("ebpf_network", NetworkSource, NetworkConfig)
