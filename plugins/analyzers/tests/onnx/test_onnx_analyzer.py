"""analyzer_onnx on real onnxruntime sessions: alerts, batching, evidence, and every fallback made to happen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig, default_model_path
from ravn_analyzers.onnx.model import ModelError, Scorer
from ravn_analyzers.onnx.tokens import display

from ravn_core.components import BatchContext
from ravn_core.errors import DidNotEnable
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context


def syscalls(pid: int, nrs: list[int], comm: str = "worker") -> list[dict[str, Any]]:
    return [{"evt.type": "syscall", "evt.source": "ebpf_syscall", "proc.pid": pid, "proc.tid": pid,
             "proc.comm": comm, "syscall.nr": n} for n in nrs]


def cyclic(n: int, start: int = 0) -> list[int]:
    return [(start + i) % 10 for i in range(n)]


def scrambled(n: int, start: int = 0) -> list[int]:
    # deterministic, never "i then i+1": steps of 3 (mod 10)
    return [(start + 3 * i) % 10 for i in range(n)]


def ctx(tree: ProcessTree | None = None, now: float | None = None) -> BatchContext:
    return BatchContext("testhost", tree or ProcessTree(), time.time() if now is None else now)


def build(model: Path | str, **cfg: Any) -> OnnxAnalyzer:
    return OnnxAnalyzer("analyzer_onnx", OnnxConfig(model_path=str(model), **cfg), make_context("onnx"))


def test_normal_stream_is_quiet_and_anomalous_one_alerts_with_evidence(cyclic_model: Any) -> None:
    an = build(cyclic_model())
    assert an.health().state == "ok"
    tree = ProcessTree()
    tree.update([{"evt.type": "exec", "proc.pid": 300, "proc.ppid": 1, "proc.comm": "evil",
                  "exec.filename": "/tmp/evil", "exec.argv": ["/tmp/evil"], "exec.ret": 0}])
    batch = syscalls(200, cyclic(200), "good") + syscalls(300, scrambled(200), "evil")
    alerts = an.analyze(batch, ctx(tree))
    assert [a.pid for a in alerts] == [300]
    a = alerts[0]
    assert a.analyzer == "analyzer_onnx" and a.rule == "cyclic-test" and a.comm == "evil"
    # corroboration by default: the model's own score, flagged for the core, which keeps it LOW and adds it to
    # the process's incident
    assert a.score == 100 and a.corroboration and a.tags[0] == "anomaly"
    assert "(corroboration)" in a.description
    assert "corroboration only (own_alerts is off)" in an.health().detail
    ev = a.evidence
    assert ev["model"] == "cyclic-test" and ev["model_version"] == "0.0.1"
    assert ev["process_score_nats"] > 6 and ev["threshold_nats"] == 1.0
    names = {display(str(i)) for i in range(10)}
    assert set(ev["window"]["tokens"]) <= names and len(ev["window"]["tokens"]) >= 16
    assert display("0") in ("read", "nr0") and display("@exec") == "@exec"
    assert ev["lineage"][0]["exe"] == "/tmp/evil"
    # one session.run for both processes' windows
    assert an.counters["runs"] == 1 and an.counters["windows"] >= 2
    # no repeat alert for the same process while its score does not rise
    assert an.analyze(syscalls(300, scrambled(64)), ctx(tree)) == []


def test_windows_of_many_processes_go_in_one_run_per_batch(cyclic_model: Any) -> None:
    an = build(cyclic_model())
    batch: list[dict[str, Any]] = []
    for pid in range(1000, 1050):
        batch += syscalls(pid, cyclic(70, pid))
    assert an.analyze(batch, ctx()) == []
    assert an.counters["runs"] == 1
    assert an.counters["windows"] == 100  # 70 tokens: a window of 32 new, one of 1 context + 31 new, 7 pending
    assert an.health().counters["processes"] == 50


def test_exit_and_idle_flush_score_partial_windows(cyclic_model: Any) -> None:
    an = build(cyclic_model(), idle_flush_s=5, exit_grace_s=2)
    # 20 scrambled tokens: under min_events (32) and under one window -> nothing yet
    assert an.analyze(syscalls(7, scrambled(20)), ctx(now=100.0)) == []
    # the exit event comes before the process's last syscall summary: nothing final yet
    assert an.analyze([{"evt.type": "exit", "proc.pid": 7, "proc.comm": "worker", "exit.code": 0}],
                      ctx(now=101.0)) == []
    assert an.analyze(syscalls(7, scrambled(5)), ctx(now=101.5)) == []  # the late summary still counts
    assert an.tick(ctx(now=102.0)) == []
    alerts = an.tick(ctx(now=103.5))  # exit_grace_s after the exit: final score over 20 + 1 + 5 tokens
    assert len(alerts) == 1 and alerts[0].evidence["final"] is True and alerts[0].evidence["events_scored"] == 26
    assert an.health().counters["processes"] == 0
    # idle process: tick flushes after idle_flush_s
    assert an.analyze(syscalls(8, scrambled(20)), ctx(now=200.0)) == []
    assert an.tick(ctx(now=202.0)) == []
    alerts = an.tick(ctx(now=206.0))
    assert [a.pid for a in alerts] == [8]


def test_pid_reuse_after_exit_finalizes_the_old_process(cyclic_model: Any) -> None:
    an = build(cyclic_model(), exit_grace_s=60)
    an.analyze([*syscalls(9, scrambled(20)), {"evt.type": "exit", "proc.pid": 9}], ctx(now=10.0))
    fork = {"evt.type": "fork", "proc.pid": 1, "proc.comm": "init", "fork.child_pid": 9, "fork.child_tid": 9}
    alerts = an.analyze([fork, *syscalls(9, cyclic(5), "new")], ctx(now=11.0))
    assert len(alerts) == 1 and alerts[0].comm == "worker"  # the old process, scored at once
    assert an.health().counters["processes"] == 2  # pid 1 (its @fork token) and the new pid 9


def test_other_probe_events_are_tokens(cyclic_model: Any) -> None:
    an = build(cyclic_model())
    exec_ev = {"evt.type": "exec", "proc.pid": 9, "proc.comm": "sh", "exec.filename": "/bin/sh", "exec.ret": 0}
    batch = syscalls(9, cyclic(10)) + [exec_ev] * 30 + syscalls(9, cyclic(10))
    alerts = an.analyze([*batch, {"evt.type": "exit", "proc.pid": 9}], ctx(now=50.0)) + an.tick(ctx(now=60.0))
    assert len(alerts) == 1  # @exec:shell is not in the model's vocabulary: unknown tokens are surprising
    assert "@exec:shell" in alerts[0].evidence["window"]["tokens"] and "T1059.004" in alerts[0].tags
    quiet = build(cyclic_model("b.onnx"), other_events=False)
    assert quiet.analyze([*batch, {"evt.type": "exit", "proc.pid": 9}], ctx(now=50.0)) == []
    assert quiet.tick(ctx(now=60.0)) == []


# ---------------------------------------------------------------------------------------------- fallbacks
def test_right_padding_does_not_change_the_packaged_model_at_real_positions() -> None:
    """analyze packs a batch only as wide as its longest window (rounded up): that is exact only because the model
    is causal, so a row's outputs at its real positions do not depend on the padding after them."""
    import numpy as np
    from ravn_analyzers.onnx.model import pack

    scorer = Scorer(default_model_path())
    rng = np.random.default_rng(7)
    windows = [rng.integers(3, len(scorer.ids), size=int(rng.integers(1, 60))).tolist() for _ in range(24)]
    full = scorer.run(pack(windows, scorer.info.window))
    narrow = scorer.run(pack(windows, 64))
    for i, w in enumerate(windows):
        assert np.array_equal(full[i, :len(w)], narrow[i, :len(w)])


def test_missing_model_steps_aside_and_a_new_file_brings_it_back(tmp_path: Path, cyclic_model: Any) -> None:
    path = tmp_path / "later.onnx"
    an = build(path)
    h = an.health()
    assert h.state == "degraded" and "does not exist" in h.detail
    assert an.analyze(syscalls(1, scrambled(100)), ctx()) == []
    path.write_bytes(cyclic_model("src.onnx").read_bytes())
    an.tick(ctx())  # mtime changed: loads it
    assert an.health().state == "ok"
    assert len(an.analyze(syscalls(1, scrambled(100)), ctx())) == 1


def test_truncated_model_file(tmp_path: Path, cyclic_model: Any) -> None:
    data = cyclic_model().read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    an = build(bad)
    h = an.health()
    assert h.state == "degraded" and "not a loadable ONNX model" in h.detail
    assert an.analyze(syscalls(1, scrambled(100)), ctx()) == []
    bad.write_bytes(data)
    os.utime(bad, (time.time() + 5, time.time() + 5))
    an.tick(ctx())
    assert an.health().state == "ok"


def test_wrong_input_shape(wrong_input_model: Path) -> None:
    h = build(wrong_input_model).health()
    assert h.state == "degraded" and "model input must be tokens int64 [N, W]" in h.detail


@pytest.mark.parametrize(("key", "value", "expect"), [
    ("ravn.schema_version", "99", "feature schema version '99'"),
    ("ravn.schema", "someone-else", "feature schema 'someone-else'"),
    ("ravn.calibration", "{}", "bad RAVN metadata"),
])
def test_mismatched_metadata(cyclic_model: Any, key: str, value: str, expect: str) -> None:
    h = build(cyclic_model(**{key: value})).health()
    assert h.state == "degraded" and expect in h.detail


def test_bad_reload_keeps_the_working_model(tmp_path: Path, cyclic_model: Any) -> None:
    path = cyclic_model()
    an = build(path)
    path.write_bytes(b"not onnx at all")
    an.reload()
    assert an.health().state == "ok"  # old model kept; the error was logged
    assert len(an.analyze(syscalls(1, scrambled(100)), ctx())) == 1


def test_inference_error_steps_aside_then_sighup_retries(fails_at_run_model: Path, cyclic_model: Any) -> None:
    an = build(fails_at_run_model)
    assert an.health().state == "ok"  # loads, and its load-time test inference passes
    batch = syscalls(1, scrambled(40)) + syscalls(2, scrambled(40)) + syscalls(3, scrambled(40))
    assert an.analyze(batch, ctx()) == []
    h = an.health()
    assert h.state == "degraded" and h.detail.startswith("inference error:")
    fails_at_run_model.write_bytes(cyclic_model().read_bytes())
    an.reload()  # SIGHUP
    assert an.health().state == "ok"
    assert len(an.analyze(batch, ctx())) == 3


def test_latency_budget_fallback_and_recovery(cyclic_model: Any) -> None:
    an = build(cyclic_model(), latency_budget_ms=0.0001, budget_strikes=3, retry_after_s=0.2)
    for i in range(2):  # windows that differ: none comes from the score cache, each batch runs the model
        an.analyze(syscalls(10 + i, cyclic(40, i)), ctx())
        assert an.health().state == "ok"
    an.analyze(syscalls(20, cyclic(40, 2)), ctx())
    h = an.health()
    assert h.state == "degraded" and "latency budget: 3 batches in a row" in h.detail
    assert h.counters["over_budget"] == 3
    assert an.analyze(syscalls(21, scrambled(100)), ctx()) == []
    time.sleep(0.25)
    an.tick(ctx())  # retry_after_s elapsed: model back (and it will strike out again with this budget)
    assert an.health().state == "ok"


def test_a_window_seen_before_is_not_inferred_again(cyclic_model: Any) -> None:
    """The same short program run again (the same window) takes its surprise from the cache: the same alert,
    no inference; a reload (a new model) forgets the cache."""
    an = build(cyclic_model(), exit_grace_s=0)

    def run_once(pid: int) -> list[Any]:
        evs = [*syscalls(pid, scrambled(20)), {"evt.type": "exit", "proc.pid": pid, "evt.ts": 10**12 + pid}]
        # exited (no grace): its final partial window is scored at once
        return an.analyze(evs, ctx()) + an.tick(ctx(now=time.time() + 1))

    first = run_once(100)
    assert [a.pid for a in first] == [100] and an.counters["runs"] == 1 and an.counters["cache_hits"] == 0
    second = run_once(101)
    assert [a.pid for a in second] == [101] and an.counters["runs"] == 1 and an.counters["cache_hits"] == 1
    assert second[0].evidence["process_score_nats"] == first[0].evidence["process_score_nats"]
    an.reload()
    assert [a.pid for a in run_once(102)] == [102] and an.counters["runs"] == 2
    off = build(cyclic_model(), exit_grace_s=0, score_cache=0)
    for pid in (200, 201):
        off.analyze([*syscalls(pid, scrambled(20)), {"evt.type": "exit", "proc.pid": pid, "evt.ts": 10**12}], ctx())
        off.tick(ctx(now=time.time() + 1))
    assert off.counters["runs"] == 2 and off.counters["cache_hits"] == 0


def test_a_final_window_too_short_to_score_is_not_inferred(cyclic_model: Any) -> None:
    an = build(cyclic_model(), exit_grace_s=0, exit_min_events=8)
    # the exit event is a token too: 6 syscalls + @exit = 7 tokens, under exit_min_events; 7 + 1 = 8 is enough
    short = [*syscalls(5, scrambled(6)), {"evt.type": "exit", "proc.pid": 5, "evt.ts": 10**12}]
    an.analyze(short, ctx())
    assert an.tick(ctx(now=time.time() + 1)) == []
    assert an.counters["runs"] == 0 and an.counters["finals_too_short"] == 1
    enough = [*syscalls(6, scrambled(7)), {"evt.type": "exit", "proc.pid": 6, "evt.ts": 10**12}]
    an.analyze(enough, ctx())
    an.tick(ctx(now=time.time() + 1))
    assert an.counters["runs"] == 1 and an.counters["processes_scored"] == 1


def test_default_model_path_is_packaged() -> None:
    assert OnnxConfig().model_path == "default"
    assert Path(default_model_path()).name == "default.onnx"


def test_onnxruntime_missing_raises_did_not_enable(tmp_path: Path) -> None:
    """A real interpreter in which `import onnxruntime` fails (a sitecustomize meta-path blocker)."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "onnxruntime" or name.startswith("onnxruntime."):
                    raise ImportError("blocked by test: onnxruntime is not installed")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    code = textwrap.dedent("""
        from ravn_core.errors import DidNotEnable
        from ravn_core.testing import make_context
        from ravn_analyzers.onnx.analyzer import OnnxAnalyzer, OnnxConfig
        try:
            OnnxAnalyzer("analyzer_onnx", OnnxConfig(), make_context("x"))
        except DidNotEnable as exc:
            print("DidNotEnable:", exc)
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "DidNotEnable: onnxruntime is not installed" in out.stdout
    assert DidNotEnable.__name__ == "DidNotEnable"


def test_registered_through_the_plugin_host() -> None:
    import argparse

    from ravn_core.plugins import PluginHost

    host = PluginHost()
    host.load()
    host.register_components()
    entry = host.analyzers.get("analyzer_onnx")
    assert entry is not None and entry.config_model is OnnxConfig and entry.distribution.startswith("ravn-analyzers")
    parser = argparse.ArgumentParser()
    host.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--events", "x.jsonl", "--output", "m.onnx"])
    assert args.command == "train" and callable(args.func)


def test_window_cap_per_call_leaves_the_rest_for_the_next_call(cyclic_model: Any) -> None:
    an = build(cyclic_model(), max_windows_per_batch=10)
    batch: list[dict[str, Any]] = []
    for pid in range(1, 11):
        batch += syscalls(pid, scrambled(64, pid))  # 2 full windows each: 20 windows, 10 different
    first = an.analyze(batch, ctx())
    assert an.counters["windows"] == 10 and an.counters["runs"] == 1
    second = an.analyze([], ctx())  # nothing new arrives: the backlog is still scored
    assert an.counters["windows"] == 20 and an.counters["runs"] == 2
    assert sorted(a.pid for a in first + second) == list(range(1, 11))


def test_shipped_default_model() -> None:
    """The packaged model loads through the default config, is small, says what it is, and is calibrated."""
    path = Path(default_model_path())
    assert path.is_file() and path.stat().st_size < 5 * 1024 * 1024
    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(), make_context("onnx"))
    h = an.health()
    assert h.state == "ok", h.detail
    assert an.scorer is not None
    info = an.scorer.info
    assert info.name == "ravn-benign-lm" and info.version.startswith("1.")
    assert info.calibration.n_heldout >= 100
    t1, t01 = info.calibration.threshold(0.01), info.calibration.threshold(0.001)
    assert 0 < t1 < t01
    assert {"@exec", "@exit", "@fork", "59", "231"} <= set(info.vocab)  # execve, exit_group
    # a burst of syscalls no benign process in training made, in a shell-spawning pattern: alerts
    odd = [{"evt.type": "exec", "proc.pid": 4242, "proc.comm": "x", "exec.filename": "/tmp/x", "exec.ret": 0}]
    odd += syscalls(4242, [101, 41, 42, 33, 33, 33, 59, 321, 310, 101] * 8, "x")
    alerts = an.analyze([*odd, {"evt.type": "exit", "proc.pid": 4242}], ctx(now=1000.0))
    alerts += an.tick(ctx(now=1010.0))
    assert len(alerts) == 1 and alerts[0].rule == "ravn-benign-lm" and alerts[0].score >= 50


def test_exit_grace_by_event_time_for_replays(cyclic_model: Any) -> None:
    """A replay runs faster than the events happened: exit_grace_s is also counted in evt.ts."""
    an = build(cyclic_model(), exit_grace_s=2)
    sec = 1_000_000_000
    evs = [{**e, "evt.ts": 100 * sec} for e in syscalls(7, scrambled(20))]
    evs.append({"evt.type": "exit", "proc.pid": 7, "evt.ts": 100 * sec})
    evs += [{**e, "evt.ts": 101 * sec} for e in syscalls(7, scrambled(3))]  # its late summary
    assert an.analyze(evs, ctx(now=5.0)) == []
    later = [{**e, "evt.ts": 103 * sec} for e in syscalls(8, cyclic(3))]  # another process, 3 s later
    alerts = an.analyze(later, ctx(now=5.1))  # same wall clock, but event time passed the grace
    assert [a.pid for a in alerts] == [7] and alerts[0].evidence["events_scored"] == 24


def test_a_fork_storm_leaves_no_more_than_max_processes_alive(cyclic_model: Any) -> None:
    """Exited processes wait exit_grace_s (event time) for their last summary. In a storm, more than
    max_processes of them do; those the bound drops must be freed, not kept by the exit queue."""
    import gc

    from ravn_analyzers.onnx.analyzer import _Proc

    an = build(cyclic_model(), exit_grace_s=3, max_processes=100)
    sec = 1_000_000_000
    for pid in range(1000, 6000):  # 5,000 short processes within one second of event time
        an.analyze([{"evt.type": "fork", "proc.pid": 1, "fork.child_pid": pid, "evt.ts": 50 * sec},
                    {**syscalls(pid, [1, 2])[0], "evt.ts": 50 * sec},
                    {"evt.type": "exit", "proc.pid": pid, "evt.ts": 50 * sec}], ctx(now=5.0))
    gc.collect()
    alive = sum(isinstance(o, _Proc) for o in gc.get_objects())
    assert an.health().counters["processes"] <= 100
    assert alive <= 101, alive  # the tracked ones (+1: pid 1's @fork); the queue keeps none of the dropped
    # the queue is bounded too; the tracked ones are still finalised, by event time here
    assert len(an._exits) <= 100
    an.analyze([{**syscalls(7, [1])[0], "evt.ts": 60 * sec}], ctx(now=5.1))
    assert an.health().counters["processes"] <= 2


def test_large_batches_run_in_chunks_with_the_same_result() -> None:
    """Scorer.run splits a batch into RUN_WINDOWS-window session runs (bounds onnxruntime's arena); same numbers."""
    import numpy as np
    from ravn_analyzers.onnx.model import RUN_WINDOWS, Scorer

    scorer = Scorer(default_model_path())
    rng = np.random.default_rng(7)
    n = 2 * RUN_WINDOWS + 5
    windows = rng.integers(2, len(scorer.info.vocab) + 2, size=(n, scorer.info.window), dtype=np.int64)
    whole = scorer.run(windows)
    one_by_one = np.concatenate([scorer.run(windows[i:i + 1]) for i in range(n)])
    assert whole.shape == windows.shape
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-5)


def test_inference_memory_is_taken_at_load() -> None:
    """After load, runs of every batch size do not grow private memory (no per-shape memory patterns; the load-time
    probe runs the largest shape, so onnxruntime's arena has its full size). Measured: +0.5 MB; +6.7 MB with
    per-shape memory patterns and a small probe."""
    import numpy as np

    from ravn_core.builtin.health import anon_rss_bytes

    an = OnnxAnalyzer("analyzer_onnx", OnnxConfig(), make_context("onnx"))
    assert an.scorer is not None
    before = anon_rss_bytes()
    for n in [*range(1, 17), *range(16, 0, -1), 64, 128]:
        an.scorer.run(np.full((n, an.window), 3, dtype=np.int64))
    assert anon_rss_bytes() - before < 3 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- own alerts
def learning(**over: Any) -> str:
    base = {"host": "testhost", "threshold_nats": 1.0, "strong_threshold_nats": 2.0, "heldout_hours": 6.0,
            "medium_alerts": 3, "fa_per_hour": 0.5, "budget_per_hour": 1.0, "budget_met": True}
    return json.dumps({**base, **over})


def anomalous_alert(an: OnnxAnalyzer, host: str = "testhost") -> Any:
    alerts = an.analyze(syscalls(300, scrambled(200), "evil"), BatchContext(host, ProcessTree(), time.time()))
    assert len(alerts) == 1
    return alerts[0]


def test_own_alerts_only_for_a_learned_model_that_met_its_budget_on_this_host(cyclic_model: Any) -> None:
    met = cyclic_model("met.onnx", **{"ravn.learning": learning()})
    # met, and asked for: an alert of its own, at most MEDIUM (80)
    an = build(met, own_alerts=True)
    a = anomalous_alert(an)
    assert not a.corroboration and a.score == 80 and "(corroboration)" not in a.description
    assert "own alerts (measured 0.50 MEDIUM false alarms per host-hour on 6.00 h held back on testhost)" \
        in an.health().detail
    # ... for the host it learned only: another host's batches (fleet mode) get corroboration
    assert anomalous_alert(an, host="otherhost").corroboration
    # met, not asked for: corroboration
    an = build(met)
    assert anomalous_alert(an).corroboration and "own_alerts is off" in an.health().detail
    # a stricter own_alerts_budget than the measured rate: corroboration, and the reason
    an = build(met, own_alerts=True, own_alerts_budget=0.25)
    assert anomalous_alert(an).corroboration
    assert "not within own_alerts_budget (0.25 per host-hour)" in an.health().detail
    # a budget never loosened beyond 1 MEDIUM per host-hour
    with pytest.raises(ValueError, match="less than or equal to 1"):
        OnnxConfig(own_alerts_budget=2.0)
    # not met at learning time
    missed = cyclic_model("missed.onnx", **{"ravn.learning": learning(fa_per_hour=4.0, budget_met=False)})
    an = build(missed, own_alerts=True)
    assert anomalous_alert(an).corroboration
    assert "measured 4.00 MEDIUM false alarms per host-hour" in an.health().detail
    assert "not within its learning budget (1 per host-hour)" in an.health().detail
    # no learning metadata at all (e.g. the shipped model)
    an = build(cyclic_model(), own_alerts=True)
    assert anomalous_alert(an).corroboration
    assert "no false-alarm rate measured on this host (make one with `ravn learn`)" in an.health().detail


def test_a_learned_model_brings_its_budget_thresholds(cyclic_model: Any) -> None:
    """A learned model's thresholds (calibrated to the false-alarm budget) replace the per-process ones, unless
    fa_rate is set explicitly."""
    high = cyclic_model("high.onnx", **{"ravn.learning": learning(threshold_nats=50.0, strong_threshold_nats=60.0)})
    assert build(high).analyze(syscalls(300, scrambled(200)), ctx()) == []  # ~8 nats: far below 50
    assert len(build(high, fa_rate=0.01).analyze(syscalls(300, scrambled(200)), ctx())) == 1


@pytest.mark.parametrize(("over", "expect"), [
    ({"budget_met": "yes"}, "ravn.learning['budget_met'] is 'yes', not a bool"),
    ({"fa_per_hour": True}, "ravn.learning['fa_per_hour'] is True, not a number"),
    ({"threshold_nats": 3.0}, "0 < threshold_nats <= strong_threshold_nats"),
])
def test_bad_learning_metadata_is_refused(cyclic_model: Any, over: dict[str, Any], expect: str) -> None:
    h = build(cyclic_model(**{"ravn.learning": learning(**over)})).health()
    assert h.state == "degraded" and expect in h.detail


def test_oversized_model_file_is_refused_naming_it_and_the_limit(tmp_path: Path, cyclic_model: Any) -> None:
    path = cyclic_model()
    size = path.stat().st_size
    limit_mb = (size - 1) / 1048576
    an = build(path, max_model_mb=limit_mb)
    h = an.health()
    assert h.state == "degraded"
    assert f"model file {path} is larger than the limit of {size - 1} bytes" in h.detail
    assert an.analyze(syscalls(1, scrambled(100)), ctx()) == []
    # exactly at the limit loads
    assert build(path, max_model_mb=size / 1048576).health().state == "ok"
    # the read is bounded, so a FIFO that never ends is refused too, not read forever
    fifo = tmp_path / "endless.onnx"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"yes x > {fifo}"])
    try:
        with pytest.raises(ModelError, match=f"model file {fifo} is larger than the limit of 1000 bytes"):
            Scorer(str(fifo), max_bytes=1000)
    finally:
        writer.kill()
        writer.wait()
