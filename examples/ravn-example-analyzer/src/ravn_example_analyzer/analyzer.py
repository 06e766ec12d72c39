"""ExecWatchAnalyzer: one alert per execution of a watched program.

The smallest useful analyzer: a typed config model validated from YAML, a factory that prepares everything
once, and an ``analyze`` that touches only the events it cares about.
"""

from __future__ import annotations

from pydantic import Field

from ravn_core.components import Alert, Analyzer, BatchContext, Health, PluginConfig, RuntimeContext
from ravn_core.events import Batch


class ExecWatchConfig(PluginConfig):
    """``analyzers: [{plugin: example_analyzer, programs: [...], score: 60}]``. Unknown keys are errors."""

    programs: list[str] = Field(
        default_factory=lambda: ["nmap", "masscan"],
        description="program basenames or absolute paths whose execution raises an alert",
    )
    score: int = Field(60, ge=0, le=100, description="alert score (the core maps >50 to MEDIUM, >80 to HIGH)")
    tags: list[str] = Field(default_factory=lambda: ["T1046"], description="ATT&CK technique ids on each alert")


class ExecWatchAnalyzer(Analyzer):
    """Alerts on ``exec`` events whose file is in ``programs``."""

    def __init__(self, name: str, config: ExecWatchConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.config: ExecWatchConfig = config
        # Prepare once: a set of full paths and a set of basenames, so analyze() does two lookups per exec.
        self._paths = frozenset(p for p in config.programs if p.startswith("/"))
        self._names = frozenset(p for p in config.programs if not p.startswith("/"))
        self.seen = 0

    def analyze(self, batch: Batch, ctx: BatchContext) -> list[Alert]:
        alerts = []
        for ev in batch:
            if ev.get("evt.type") != "exec" or ev.get("exec.ret", 0) != 0:
                continue
            path = str(ev.get("exec.filename", ""))
            if path not in self._paths and path.rsplit("/", 1)[-1] not in self._names:
                continue
            self.seen += 1
            pid = int(ev.get("proc.pid", 0))
            alerts.append(Alert(
                analyzer=self.name, rule="watched_program", score=self.config.score,
                description=f"{path} executed: {' '.join(ev.get('exec.argv') or [])}",
                pid=pid, comm=str(ev.get("proc.comm", "")), tags=list(self.config.tags),
                evidence={"events": [dict(ev)], "ancestry": ctx.proctree.lineage(pid)},
                ts=ev.get("evt.ts", 0) / 1e9 or ctx.now, host=ctx.host,
            ))
        return alerts

    def health(self) -> Health:
        return Health("ok", f"watching {len(self.config.programs)} programs", {"alerts": self.seen})
