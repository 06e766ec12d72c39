"""SyscallSource: the ``ebpf_syscall`` probe (BPF side: ``bpf/syscall.bpf.c``)."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ravn_core.bpf.abi import EVENT_TYPE_IDS
from ravn_core.bpf.env import TRACEFS
from ravn_core.bpf.probe import BccProbe
from ravn_core.bpf.ring import Decoder
from ravn_core.components import RuntimeContext
from ravn_core.errors import UnusableEnvironment
from ravn_core.events import Batch
from ravn_ebpf_syscall.config import SyscallConfig
from ravn_ebpf_syscall.decode import NOTHING, SummaryFlusher, event_decoder, events_batch_decoder
from ravn_ebpf_syscall.syscalls import NORETURN, names_by_nr, table

if TYPE_CHECKING:
    from bcc import BPF

#: summary mode: the ring of final summaries (exited processes) is read this often; at 400 bytes a record, the
#: default 1 MiB ring holds 2,600 of them, 26,000 exits/s between two reads (more fall back to the map flush)
FINAL_READ_MS = 100


class SyscallSource(BccProbe):
    """Syscall events (mode: events) or per-process syscall summaries (mode: summary)."""

    plugin = "ebpf_syscall"
    package = "ravn_ebpf_syscall"
    bpf_file = "syscall.bpf.c"
    config: SyscallConfig

    def __init__(self, name: str, config: SyscallConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._flusher: SummaryFlusher | None = None
        self._next_flush = 0.0
        self._next_read = 0.0

    @property
    def summary(self) -> bool:
        return self.config.mode == "summary"

    @property
    def with_ret(self) -> bool:
        return self.config.mode == "events" and self.config.return_values

    def probe_cflags(self) -> list[str]:
        return [f"-DRAVN_SC_SUMMARY={int(self.summary)}", f"-DRAVN_SC_RET={int(self.with_ret)}",
                f"-DRAVN_SC_MAX_PROCS={self.config.max_summary_processes}"]

    def tracepoints(self) -> list[tuple[str, str]]:
        if self.config.effective_hook() == "raw":
            tps = [("ravn_sc_enter_raw", "raw_syscalls:sys_enter")]
            if self.with_ret:
                tps.append(("ravn_sc_exit_raw", "raw_syscalls:sys_exit"))
            return tps
        tps, missing = [], []
        for name in self.config.selected():
            tp = table()[name].tracepoint
            if self.with_ret and name not in NORETURN:
                tps.append(("ravn_sc_exit_tp", f"syscalls:sys_exit_{tp}"))
            else:
                tps.append(("ravn_sc_enter_tp", f"syscalls:sys_enter_{tp}"))
            if not (TRACEFS / "events" / "syscalls" / f"sys_enter_{tp}").is_dir():
                missing.append(name)
        if missing:
            raise UnusableEnvironment(
                f"ebpf_syscall: no syscalls:sys_enter_* tracepoint on this kernel for {', '.join(missing)}; "
                "remove them from `syscalls` or use `hook: raw`")
        return tps

    def on_loaded(self, bpf: BPF) -> None:
        if self.config.effective_hook() != "raw":
            return
        sel = bpf[b"ravn_sc_sel"]
        for name in self.config.selected():
            nr = table()[name].nr
            sel[ctypes.c_int(nr)] = ctypes.c_uint8(2 if self.with_ret and name in NORETURN else 1)

    def _summary_flusher(self) -> SummaryFlusher:
        if self._flusher is None:  # before the ring opens (it takes the flusher's decoders); table set by start()
            self._flusher = SummaryFlusher(None, self.event_header(), names_by_nr())
        return self._flusher

    def decoders(self) -> dict[int, Decoder]:
        if self.summary:  # the ring carries only the final summaries of exited processes
            return {EVENT_TYPE_IDS["syscall_summary"]: self._summary_flusher().decode_final}
        return {EVENT_TYPE_IDS["syscall"]: event_decoder(self.event_header(), names_by_nr())}

    def fast_decoder(self) -> tuple[int, Callable[[memoryview], Batch]] | None:
        if self.summary:
            return self._summary_flusher().final_batch()
        if self.with_ret:
            return None  # the syscall.ret key depends on the record
        return events_batch_decoder(self.event_header(), names_by_nr())

    def start(self) -> None:
        self._flusher = None
        super().start()
        if self.summary:
            assert self.bpf is not None
            self._summary_flusher().table = self.bpf[b"ravn_sc_summary"]
            self._next_flush = time.monotonic() + self.config.flush_interval_ms / 1000

    def stop(self) -> None:
        self._flusher = None
        super().stop()

    def poll(self, timeout_ms: int) -> Batch:
        flusher = self._flusher
        if not self.summary or flusher is None:
            return super().poll(timeout_ms)
        # Summary mode never waits on the ring: the kernel would wake this thread for nearly every exiting process
        # (one record each, each its own batch downstream). It sleeps to the next read instead: the ring every
        # FINAL_READ_MS (the final records wait that long at most), the map every flush_interval_ms.
        now = time.monotonic()
        due = min(self._next_read, self._next_flush)
        if due - now > timeout_ms / 1000:
            time.sleep(timeout_ms / 1000)
            return []
        if due > now:
            time.sleep(due - now)
        self._next_read = time.monotonic() + FINAL_READ_MS / 1000
        batch = super().poll(0)  # the final summaries in the ring: nothing waits
        if flusher.nothing:
            batch = self._without_nothing(batch)
        if time.monotonic() >= self._next_flush:
            batch += self.flush()
        return batch

    def _without_nothing(self, batch: Batch) -> Batch:
        assert self._flusher is not None
        self.counters["events"] -= self._flusher.nothing
        self._flusher.nothing = 0
        return [e for e in batch if e is not NOTHING]

    def flush(self) -> Batch:
        """Summary mode: read the per-process map now and return the syscall_summary events of live processes
        (and of exited ones whose final record could not be sent)."""
        if self._flusher is None or self._flusher.table is None:
            return []
        self._next_flush = time.monotonic() + self.config.flush_interval_ms / 1000
        batch = self._flusher.flush()
        self.counters["events"] += len(batch)
        return batch

    def drain(self) -> Batch:
        if not self.summary:
            return super().drain()
        batch = super().drain()
        if self._flusher is not None and self._flusher.nothing:
            batch = self._without_nothing(batch)
        return batch + self.flush()
