"""Threat scoring: folds repeated alerts, combines recent alerts into a host score, maps it to a level.

- An alert's level comes from its own score: above ``threat.high`` HIGH, above ``threat.medium`` MEDIUM, else LOW.
- Folding: the first alert of a (rule, pid) goes out at once. Repeats within ``fold_window_s`` are counted, not
  sent; when the window closes with repeats, one alert goes out again with ``count`` = the repeats folded.
- Host score: each rule contributes its highest recent alert score, decayed by half every ``half_life_s``;
  contributions combine as a noisy-OR (``100 * (1 - prod(1 - s/100))``), so one HIGH alert makes the host HIGH,
  and several independent MEDIUM signals escalate it, while one noisy rule firing on many processes counts once.
- A level change produces a ``ThreatUpdate`` with the top alerts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ravn_core.components import Alert, Level, ThreatUpdate
from ravn_core.config import ThreatConfig


def level_for(score: float, cfg: ThreatConfig) -> Level:
    if score > cfg.high:
        return "HIGH"
    if score > cfg.medium:
        return "MEDIUM"
    return "LOW"


@dataclass
class _Fold:
    alert: Alert
    until: float
    repeats: int = 0


@dataclass
class _Contribution:
    score: float
    ts: float
    alert: Alert


class ThreatScorer:
    """One per host. Not thread-safe: owned by the analysis stage (guarded by the runtime's lock)."""

    def __init__(self, host: str, cfg: ThreatConfig, max_folds: int = 10000) -> None:
        self.host = host
        self.cfg = cfg
        self.level: Level = "LOW"
        self.score = 0.0
        self._folds: dict[tuple[str, str, int], _Fold] = {}
        self._rules: dict[str, _Contribution] = {}
        self._max_folds = max_folds
        self.folded = 0

    def process(self, alerts: list[Alert], now: float) -> tuple[list[Alert], list[ThreatUpdate]]:
        """Fold and score ``alerts``; returns the alerts to emit and any level change."""
        out: list[Alert] = self._expire(now)
        for alert in alerts:
            alert.host = alert.host or self.host
            alert.level = level_for(alert.score, self.cfg)
            key = (alert.analyzer, alert.rule, alert.pid)
            fold = self._folds.get(key)
            if fold is not None and now < fold.until:
                fold.repeats += alert.count
                self.folded += alert.count
                if alert.score > fold.alert.score:
                    fold.alert = alert
                continue
            self._folds[key] = _Fold(alert, now + self.cfg.fold_window_s)
            out.append(alert)
            prev = self._rules.get(alert.rule)
            if prev is None or self._decayed(prev, now) <= alert.score:
                self._rules[alert.rule] = _Contribution(float(alert.score), now, alert)
        if len(self._folds) > self._max_folds:
            out.extend(self._expire(now, force=True))
        return out, self._rescore(now)

    def tick(self, now: float) -> tuple[list[Alert], list[ThreatUpdate]]:
        """Close expired fold windows and let the score decay. Call about once a second."""
        return self._expire(now), self._rescore(now)

    def _expire(self, now: float, force: bool = False) -> list[Alert]:
        out = []
        for key, fold in list(self._folds.items()):
            if force or now >= fold.until:
                del self._folds[key]
                if fold.repeats:
                    out.append(replace(fold.alert, count=fold.repeats, ts=now))
        return out

    def _decayed(self, c: _Contribution, now: float) -> float:
        age = max(0.0, now - c.ts)
        return c.score * 0.5 ** (age / self.cfg.half_life_s)

    def _rescore(self, now: float) -> list[ThreatUpdate]:
        remaining = 1.0
        for rule, c in list(self._rules.items()):
            s = self._decayed(c, now)
            if s < 1.0:
                del self._rules[rule]
                continue
            remaining *= 1.0 - min(s, 100.0) / 100.0
        self.score = round(100.0 * (1.0 - remaining), 2)
        level = level_for(self.score, self.cfg)
        if level == self.level:
            return []
        previous, self.level = self.level, level
        return [ThreatUpdate(self.host, level, self.score, previous, self.top_alerts(now), ts=now)]

    def top_alerts(self, now: float) -> list[Alert]:
        ranked = sorted(self._rules.values(), key=lambda c: self._decayed(c, now), reverse=True)
        return [c.alert for c in ranked[: self.cfg.top_alerts]]
