"""Every hook fires, in exactly this order, in a run with a reload and one component error (tox's trace test)."""

from __future__ import annotations

from typing import Any

from ravn_core import hookimpl
from ravn_core.testing import make_host, run_pipeline


class Recorder:
    def __init__(self) -> None:
        self.trace: list[str] = []

    @hookimpl
    def ravn_add_commands(self, subparsers: Any) -> None:
        self.trace.append("add_commands")

    @hookimpl
    def ravn_register_sources(self, registry: Any) -> None:
        self.trace.append("register_sources")

    @hookimpl
    def ravn_register_transports(self, registry: Any) -> None:
        self.trace.append("register_transports")

    @hookimpl
    def ravn_register_analyzers(self, registry: Any) -> None:
        self.trace.append("register_analyzers")

    @hookimpl
    def ravn_register_sinks(self, registry: Any) -> None:
        self.trace.append("register_sinks")

    @hookimpl
    def ravn_register_health_probes(self, registry: Any) -> None:
        self.trace.append("register_health_probes")

    @hookimpl
    def ravn_configure(self, config: Any) -> None:
        self.trace.append("configure")

    @hookimpl
    def ravn_runtime_started(self, runtime: Any, components: list[Any]) -> None:
        self.trace.append(f"runtime_started:{len(components)}")

    @hookimpl
    def ravn_component_error(self, component: Any, error: BaseException, restarts: int, quarantined: bool) -> None:
        self.trace.append(f"component_error:{component.name}:{type(error).__name__}:{restarts}:{quarantined}")

    @hookimpl
    def ravn_reload(self, reason: str) -> None:
        self.trace.append(f"reload:{reason}")

    @hookimpl
    def ravn_runtime_stopping(self, reason: str) -> None:
        self.trace.append(f"runtime_stopping:{reason}")

    @hookimpl
    def ravn_runtime_stopped(self, stats: dict[str, Any]) -> None:
        self.trace.append(f"runtime_stopped:{stats['analyzed']}")


def test_exact_hook_order() -> None:
    rec = Recorder()
    host = make_host((rec, "recorder"))
    host.add_commands(None)
    config = {
        "sources": [{"plugin": "test_source", "batches": 2, "events_per_batch": 5}],
        # fails on its first batch and on each of its 5 events alone: the analyzer's own error, not a bad event's
            "analyzers": [{"plugin": "test_analyzer", "fail_on_batch": 1, "fail_times": 6}],
        "sinks": [{"plugin": "test_sink"}],
        "ravn": {"restart_backoff_s": 0.05, "reorder_ms": 0},  # one delivery, one analyze call: no hold
    }

    def reloaded_after_error(rt: Any) -> bool:
        if any(t.startswith("component_error") for t in rec.trace) and not any(
                t.startswith("reload") for t in rec.trace):
            rt.reload("test")
        return rt.counters["analyzed"] == 10 and any(t.startswith("reload") for t in rec.trace)

    run_pipeline(config, host=host, until=reloaded_after_error)
    assert rec.trace == [
        "register_sources", "register_transports", "register_analyzers", "register_sinks",
        "register_health_probes", "add_commands", "configure", "runtime_started:4",
        "component_error:test_analyzer:ValueError:1:False", "reload:test", "runtime_stopping:test",
        "runtime_stopped:10",
    ]
