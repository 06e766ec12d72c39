"""The builtin HTTP endpoint (/healthz, /metrics, /status) and `ravn top` against a real running runtime."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ravn_core.builtin.http import endpoint_for, healthz, parse_listen
from ravn_core.config import validate
from ravn_core.runtime import Runtime
from ravn_core.testing import make_host, wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST = {"restart_backoff_s": 0.02, "restart_backoff_max_s": 0.05, "error_budget": 2, "error_window_s": 60,
        "health_interval_s": 0.1}


def start(config: dict[str, Any], tmp_path: Path) -> Runtime:
    host = make_host()
    config = dict(config)
    config["ravn"] = {"state_dir": str(tmp_path / "state"), "http_listen": "127.0.0.1:0", **FAST,
                      **config.get("ravn", {})}
    rt = Runtime(validate(config, host.registries()), host)
    rt.start()
    return rt


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def metrics(url: str) -> dict[str, Any]:
    status, body, ctype = get(f"{url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name} {labels} not exported")


def test_healthz_metrics_and_status(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source", "batches": 30, "events_per_batch": 40}],
                "analyzers": [{"plugin": "test_analyzer", "alert_every": 100, "score": 90}],
                "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None and ep.address[0] == "127.0.0.1"
        assert wait_for(lambda: rt.counters["analyzed"] == 1200 and rt.counters["alerts_emitted"] >= 1, 10)
        code, body, ctype = get(f"{ep.url}/healthz")
        h = json.loads(body)
        assert code == 200 and ctype == "application/json" and h["status"] == "ok"
        assert set(h["components"]) == {"source:test_source", "transport:embedded", "analyzer:test_analyzer",
                                        "sink:test_sink"}
        assert all(c["state"] == "ok" and c["heartbeat"] > rt.started_at - 1 for c in h["components"].values())

        m = metrics(ep.url)
        assert sample(m, "ravn_source_events_total", source="test_source") == 1200
        assert sample(m, "ravn_source_dropped_total", source="test_source") == 0
        assert sample(m, "ravn_source_kernel_drops_total", source="test_source") == 0
        assert sample(m, "ravn_stage_events_total", stage="analyzed") == 1200
        assert sample(m, "ravn_analyzer_events_total", analyzer="test_analyzer") == 1200
        assert sample(m, "ravn_queue_depth", queue="ingress") == 0
        assert sample(m, "ravn_analysis_latency_seconds_count") == 30
        assert sample(m, "ravn_analysis_latency_seconds_bucket", le="+Inf") == 30
        assert 0 < sample(m, "ravn_analysis_latency_seconds_sum") < 30
        assert sample(m, "ravn_alerts_total", level="HIGH", rule="count") == rt.counters["alerts_emitted"]
        assert sample(m, "ravn_component_restarts_total", component="source:test_source") == 0
        assert sample(m, "ravn_threat_level", host=rt.hostname) == 2
        assert sample(m, "process_resident_memory_bytes") > 10e6
        assert sample(m, "process_cpu_seconds_total") > 0
        assert sample(m, "ravn_healthy") == 1

        code, body, _ = get(f"{ep.url}/status")
        assert code == 200 and json.loads(body)["stats"]["analyzed"] == 1200
        assert get(f"{ep.url}/nope")[0] == 404
    finally:
        rt.stop()
    assert endpoint_for(rt) is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ep.url}/healthz", timeout=2)


def test_healthz_503_when_a_component_is_quarantined(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source", "name": "bad", "fail_after": 0},
                            {"plugin": "test_source", "name": "good", "batches": 5}],
                "analyzers": [{"plugin": "test_analyzer"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None
        assert wait_for(lambda: rt.sources[0].quarantined, 10)
        code, body, _ = get(f"{ep.url}/healthz")
        h = json.loads(body)
        assert code == 503 and h["status"] == "degraded" and h["degraded"] == ["source:bad"]
        assert h["components"]["source:bad"]["quarantined"] and h["components"]["source:good"]["state"] == "ok"
        m = metrics(ep.url)
        assert sample(m, "ravn_healthy") == 0
        assert sample(m, "ravn_component_quarantined", component="source:bad") == 1
        assert sample(m, "ravn_component_restarts_total", component="source:bad") == 3
        assert sample(m, "ravn_component_up", component="source:good") == 1
    finally:
        rt.stop()


def test_port_in_use_does_not_stop_the_daemon(tmp_path: Path) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        rt = start({"ravn": {"http_listen": f"127.0.0.1:{busy.getsockname()[1]}"},
                    "sources": [{"plugin": "test_source", "batches": 2}], "analyzers": [{"plugin": "test_analyzer"}]},
                   tmp_path)
        try:
            assert endpoint_for(rt) is None
            assert wait_for(lambda: rt.counters["analyzed"] == 20, 5)
        finally:
            rt.stop()
    finally:
        busy.close()


def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    """docs/OPERATIONS.md names every metric family /metrics exports (and no stale ones)."""
    rt = start({"sources": [{"plugin": "test_source", "batches": 2}], "analyzers": [{"plugin": "test_analyzer",
                "alert_every": 5}], "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None and wait_for(lambda: rt.counters["alerts_emitted"] >= 1, 5)
        _, body, _ = get(f"{ep.url}/metrics")
    finally:
        rt.stop()
    exported = set(re.findall(r"^# TYPE (ravn_\w+) ", body.decode(), re.M))
    exported = {n[:-6] if n.endswith("_total") else n for n in exported}
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    documented = {n[:-6] if n.endswith("_total") else n for n in re.findall(r"`(ravn_\w+)`", doc)}
    assert exported - documented == set(), "metrics missing from docs/OPERATIONS.md"
    assert "ravn_bpf_prog_run_time_seconds" in documented


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen(":9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9") == ("::1", 9)


def test_ravn_top_once_over_http_and_from_the_status_file(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source", "name": "probe_a", "batches": 10, "events_per_batch": 30}],
                "analyzers": [{"plugin": "test_analyzer", "alert_every": 50, "score": 90}],
                "sinks": [{"plugin": "test_sink"}]}, tmp_path)
    try:
        ep = endpoint_for(rt)
        assert ep is not None and wait_for(lambda: rt.counters["alerts_emitted"] >= 1, 5)
        rt.write_status()
        for args in (["--url", ep.url], ["--state-dir", str(tmp_path / "state")]):
            out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "top", "--once", "--interval", "0.2",
                                  *args], capture_output=True, text=True, timeout=60, env={"COLUMNS": "160",
                                                                                           "PATH": "/usr/bin:/bin"})
            assert out.returncode == 0, out.stderr
            text = out.stdout
            assert "threat HIGH" in text and "probe_a" in text and "300" in text, text
            assert "latest alerts" in text and "count" in text and "analyzer:test_analyzer" in text
    finally:
        rt.stop()


def test_ravn_top_without_a_daemon_fails_clearly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "top", "--once", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no running RAVN" in out.stderr


def test_healthz_function_matches_status(tmp_path: Path) -> None:
    rt = start({"sources": [{"plugin": "test_source"}], "analyzers": [{"plugin": "test_analyzer"}]}, tmp_path)
    try:
        code, body = healthz(rt)
        assert code == 200 and body["pid"] == rt.status()["pid"]
    finally:
        rt.stop()
