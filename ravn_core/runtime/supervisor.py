"""Supervision: each component in a ``Slot``, its error budget and restart backoff, and the runtime's threads.

A failure is logged once with the plugin's name, fires ``ravn_component_error`` and schedules a restart after
``restart_backoff_s * 2^(n-1)`` (capped at ``restart_backoff_max_s``); more than ``ravn.error_budget`` failures
within ``ravn.error_window_s`` quarantine the component (health: degraded) until SIGHUP, and the supervisor tells the
runtime (a self-alert). A thread whose loop raises is restarted by the health thread; one that ends is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ravn_core.backoff import backoff_delay
from ravn_core.components import Component, Health, RuntimeContext
from ravn_core.errors import DidNotEnable, RavnError, StartupError

if TYPE_CHECKING:
    from ravn_core.config import ComponentSpec, CoreConfig
    from ravn_core.plugins import PluginHost

log = logging.getLogger("ravn.runtime")


@dataclass(eq=False)
class Slot:
    """One component under supervision, and the counters of the stage that runs it.

    The supervision fields are changed under ``lock`` (the transport's slot fails from the transport, analysis and
    sink threads). Each counter has one writer, the thread that runs the slot: ``accepted``, ``dropped``,
    ``batches`` and ``published`` (only when it publishes to the embedded transport itself) for a source;
    ``processed``, ``skipped`` (events it did not see: restart delay, quarantine, a batch it failed on) and
    ``dead_letters`` (events it raised on alone) for an analyzer, one slot per analysis thread; ``processed``
    (alerts taken) and ``dropped`` for a sink.
    """

    spec: ComponentSpec
    component: Any
    errors: deque[float] = field(default_factory=deque)
    restarts: int = 0
    quarantined: bool = False
    last_error: str = ""
    retry_at: float = 0.0
    heartbeat: float = field(default_factory=time.time)
    restart_requested: bool = False
    reload_requested: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: int = 0
    dropped: int = 0
    batches: int = 0
    published: int = 0
    processed: int = 0
    skipped: int = 0
    dead_letters: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        """source, transport, analyzer, sink or health_probe."""
        return str(getattr(self.component, "kind", self.spec.kind))

    def health(self) -> Health:
        if self.quarantined:
            return Health("degraded", f"quarantined after {self.restarts} restarts: {self.last_error}")
        try:
            h: Health = self.component.health()
        except Exception as exc:
            return Health("degraded", f"health() raised {type(exc).__name__}: {exc}")
        if h.state == "ok" and self.retry_at:
            return Health("degraded", f"restarting after: {self.last_error}", h.counters)
        return h


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``top -H``, ``ps -L``, /proc/<pid>/task/<tid>/comm),
    cut to the 15 bytes the kernel keeps: ``source:ebpf_security`` is ``source:security``. Best effort."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name.replace("ebpf_", "")[:15])
    except OSError:
        pass


class Supervisor:
    """Builds components, keeps their error budgets, and runs and restarts the runtime's threads."""

    def __init__(self, core: CoreConfig, host: PluginHost, context: RuntimeContext,
                 on_quarantine: Callable[[Slot], None]) -> None:
        self.core = core
        self.host = host
        self.context = context
        self.on_quarantine = on_quarantine
        self.threads: dict[str, threading.Thread] = {}
        self._targets: dict[str, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        self._died: set[str] = set()  # threads whose loop raised (restarted by the health thread); not those that ended
        self.thread_restarts = 0  # one writer: the health thread

    # ------------------------------------------------------------------------------------------ components
    def build(self, spec: ComponentSpec) -> Component:
        """Call the component's factory with its own context (logger ``ravn.<kind>.<name>``)."""
        ctx = RuntimeContext(
            host=self.context.host, ravn_pid=self.context.ravn_pid, state_dir=self.context.state_dir,
            logger=logging.getLogger(f"ravn.{spec.kind}.{spec.name}"), config_path=self.context.config_path,
        )
        try:
            return spec.registration.factory(spec.name, spec.config, ctx)
        except (DidNotEnable, RavnError):
            raise
        except Exception as exc:
            raise StartupError(
                f"{spec.kind} {spec.name!r} ({spec.registration.distribution}) cannot be built: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def fail(self, slot: Slot, exc: BaseException) -> None:
        """Spend one of the slot's error budget: schedule its restart, or quarantine it."""
        with slot.lock:
            now = time.monotonic()
            slot.errors.append(now)
            while slot.errors and now - slot.errors[0] > self.core.error_window_s:
                slot.errors.popleft()
            slot.last_error = f"{type(exc).__name__}: {exc}"
            slot.restarts += 1
            newly = False
            if len(slot.errors) > self.core.error_budget:
                newly = not slot.quarantined
                slot.quarantined = True
            else:
                delay = backoff_delay(len(slot.errors), self.core.restart_backoff_s, self.core.restart_backoff_max_s)
                slot.retry_at = now + delay
            restarts, quarantined, errors = slot.restarts, slot.quarantined, len(slot.errors)
        plugin = f"{slot.spec.plugin} ({slot.spec.registration.distribution})"
        if quarantined:
            log.error("%s %r from %s quarantined after %d errors in %.0fs; last: %s", slot.kind, slot.name,
                      plugin, errors, self.core.error_window_s, slot.last_error)
        else:
            log.error("%s %r from %s failed: %s; restart in %.1fs", slot.kind, slot.name, plugin,
                      slot.last_error, slot.retry_at - time.monotonic(), exc_info=restarts == 1)
        if newly:
            self.on_quarantine(slot)
        self.host.component_error(slot.component, exc, restarts, quarantined)

    def lift(self, slot: Slot) -> None:
        """SIGHUP: out of quarantine, budget reset, restarted at once."""
        with slot.lock:
            if slot.quarantined:
                log.info("%s %r leaves quarantine on reload", slot.kind, slot.name)
                slot.quarantined = False
                slot.errors.clear()
                slot.retry_at = time.monotonic()

    @staticmethod
    def safe(slot: Slot, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` (stop, close, flush, reload: no budget spent); log what it raises and return None."""
        try:
            return fn()
        except Exception as exc:
            log.warning("%s %r: %s raised %s: %s", slot.kind, slot.name, getattr(fn, "__name__", "call"),
                        type(exc).__name__, exc)
            return None

    @staticmethod
    def wait_retry(slot: Slot, stop: threading.Event) -> bool:
        """Sleep until the slot's retry time (interruptible). False when stopping."""
        while time.monotonic() < slot.retry_at:
            if stop.wait(min(0.1, max(0.0, slot.retry_at - time.monotonic()))):
                return False
        return True

    def ready(self, slot: Slot) -> bool:
        """For a component rebuilt after a failure (an analyzer): False while quarantined or waiting out its
        backoff; once the backoff is over, close it and build it again from its factory."""
        if slot.quarantined:
            return False
        if slot.retry_at:
            if time.monotonic() < slot.retry_at:
                return False
            slot.retry_at = 0.0
            self.safe(slot, slot.component.close)
            try:
                slot.component = self.build(slot.spec)
                log.info("%s %r rebuilt", slot.kind, slot.name)
            except Exception as exc:
                self.fail(slot, exc)
                return False
        return True

    # ------------------------------------------------------------------------------------------ threads
    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        """Run ``target(*args)`` in the daemon thread ``ravn-<name>``; restarted by ``restart_dead`` if it raises."""
        def run() -> None:
            name_os_thread(name)
            try:
                target(*args)
            except BaseException:
                log.exception("thread %s died; the health thread will restart it", name)
                self._died.add(name)

        self._targets[name] = (target, args)
        t = threading.Thread(target=run, name=f"ravn-{name}", daemon=True)
        t.start()
        self.threads[name] = t

    def restart_dead(self) -> None:
        """Restart every thread whose loop raised (the health thread)."""
        for name in list(self._died):
            t = self.threads.get(name)
            if t is not None and not t.is_alive():
                self._died.discard(name)
                log.error("thread %s is dead; restarting it", name)
                self.thread_restarts += 1
                self.spawn(name, *self._targets[name][:1], *self._targets[name][1])

    def join(self, prefix: str, deadline: float) -> None:
        """Wait for the threads whose name starts with ``prefix``, until ``deadline`` (monotonic)."""
        for name, t in list(self.threads.items()):
            if name.startswith(prefix):
                t.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> list[str]:
        return [n for n, t in self.threads.items() if t.is_alive()]
