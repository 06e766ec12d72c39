"""Hook implementations of the ``ebpf_syscall`` plugin (nothing here touches the kernel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ravn_core import hookimpl

if TYPE_CHECKING:
    from ravn_core.registry import SourceRegistry


@hookimpl
def ravn_register_sources(registry: SourceRegistry) -> None:
    from ravn_ebpf_syscall.config import SyscallConfig
    from ravn_ebpf_syscall.source import SyscallSource

    registry.add("ebpf_syscall", SyscallSource, SyscallConfig)
