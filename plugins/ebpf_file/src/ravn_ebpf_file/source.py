"""The ebpf_file source: loads bpf/file.bpf.c through ravn_core.bpf.probe.BccProbe, fills its prefix maps, decodes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ravn_core.bpf.abi import EVENT_TYPE_IDS
from ravn_core.bpf.paths import seed_cwds
from ravn_core.bpf.probe import BccProbe
from ravn_core.components import RuntimeContext
from ravn_core.events import Batch, Event
from ravn_ebpf_file.config import PATH_MAX, SUFFIX_LEN, WILD_LEN, FileConfig, PathRules
from ravn_ebpf_file.decode import COUNTERS, DROP, make_decoders

if TYPE_CHECKING:
    from bcc import BPF

#: syscalls whose sys_enter_* gets ravn_file_enter and sys_exit_* gets ravn_file_exit
SYSCALLS: tuple[str, ...] = (
    "open", "openat", "openat2", "creat", "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2",
    "chmod", "fchmodat", "fchmodat2", "fchmod", "chown", "lchown", "fchownat", "link", "linkat", "symlink",
    "symlinkat", "truncate", "chdir", "fchdir",
)


class FileSource(BccProbe):
    """Opens, unlinks, renames, chmods, chowns, links, symlinks and truncates of watched paths."""

    plugin: ClassVar[str] = "ebpf_file"
    package: ClassVar[str] = "ravn_ebpf_file"
    bpf_file: ClassVar[str] = "file.bpf.c"

    config: FileConfig

    def __init__(self, name: str, config: FileConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.rules = PathRules.from_config(config)
        self.counters.update(dict.fromkeys(COUNTERS, 0))

    def tracepoints(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for sc in SYSCALLS:
            out += [("ravn_file_enter", f"syscalls:sys_enter_{sc}"), ("ravn_file_exit", f"syscalls:sys_exit_{sc}")]
        if self.config.report_chattr:
            out += [("ravn_file_ioctl_enter", "syscalls:sys_enter_ioctl"),
                    ("ravn_file_ioctl_exit", "syscalls:sys_exit_ioctl")]
        return out

    def probe_cflags(self) -> list[str]:
        c = self.config
        mask = 0
        for t in c.report_all:
            mask |= 1 << EVENT_TYPE_IDS[t]
        return [
            f"-DRAVN_FILE_ALL_MASK={mask}",
            f"-DRAVN_FILE_RELATIVE={int(c.relative_paths)}",
            f"-DRAVN_FILE_NORMALIZE={int(c.normalize_paths)}",
            f"-DRAVN_FILE_WORLD_WRITABLE={int(c.report_world_writable)}",
            f"-DRAVN_FILE_N_WILD={len(self.rules.roots)}",
            f"-DRAVN_FILE_N_SUFFIX={len(self.rules.suffixes)}",
            f"-DRAVN_FILE_MAX_RULES={c.max_rules}",
            f"-DRAVN_FILE_MAX_INFLIGHT={c.max_inflight}",
        ]

    def on_loaded(self, bpf: BPF) -> None:
        trie = bpf["ravn_file_rules"]
        for prefix, klass in self.rules.classes.items():
            raw = prefix.encode()
            key = trie.Key()
            key.prefixlen = len(raw) * 8
            key.data = raw
            leaf = trie.Leaf()
            leaf.klass = klass
            leaf.len = len(raw)
            trie[key] = leaf
        wild = bpf["ravn_file_wild"]
        for i, root in enumerate(self.rules.roots):
            raw = root.encode().ljust(WILD_LEN, b"\0")
            leaf = wild.Leaf()
            for w in range(WILD_LEN // 8):
                leaf.w[w] = int.from_bytes(raw[w * 8:(w + 1) * 8], "little")
                n = max(0, min(8, len(root.encode()) - w * 8))
                leaf.mask[w] = int.from_bytes(b"\xff" * n + b"\0" * (8 - n), "little")
            leaf.len = len(root.encode())
            wild[ctypes.c_int(i)] = leaf
        suffixes = bpf["ravn_file_suffix"]
        for i, (suffix, klass) in enumerate(self.rules.suffixes.items()):
            raw = suffix.encode()
            word = raw.rjust(SUFFIX_LEN, b"\0")  # right-aligned: the path's last byte is the window's last
            mask = (b"\xff" * len(raw)).rjust(SUFFIX_LEN, b"\0")
            leaf = suffixes.Leaf()
            for w in range(2):
                leaf.w[w] = int.from_bytes(word[w * 8:(w + 1) * 8], "little")
                leaf.mask[w] = int.from_bytes(mask[w * 8:(w + 1) * 8], "little")
            leaf.klass = klass
            leaf.len = len(raw)
            suffixes[ctypes.c_int(i)] = leaf
        if self.config.relative_paths:
            names = bpf["ravn_file_names"]
            for name in self.rules.names:
                key = names.Key()
                key.s = name.encode()
                names[key] = ctypes.c_uint8(1)
        assert ctypes.sizeof(trie.Key()) == 4 + PATH_MAX
        if self.config.relative_paths:
            seed_cwds(bpf["ravn_file_cwd"])

    def decoders(self) -> dict[int, Callable[[bytes], Event]]:
        return make_decoders(self.event_header(), self.rules, frozenset(self.config.report_all), self.counters)

    def poll(self, timeout_ms: int) -> Batch:
        return [e for e in super().poll(timeout_ms) if e is not DROP]

    def drain(self) -> Batch:
        return [e for e in super().drain() if e is not DROP]
