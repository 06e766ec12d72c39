"""Soak: the real daemon with every probe of a config, under a steady load for N minutes, and its verdicts.

Starts ``ravn --config <config with state/log paths moved to a temp dir>`` as a child process and drives, for the
whole window, a synthetic load generator (``--rate`` execs, file opens and TCP connects per second, each; 0: none)
and/or bench/benign.py's workload kinds (``--benign build,web|all``: rounds of real benign work, in a session and
a cgroup of their own, repeated until the window ends). Samples the daemon's RSS every second and its /status every
5 s, waits ``--settle`` seconds after the work (the model scores processes at their exit), then stops it with
SIGTERM and reads the final counters and the jsonl sink. Optionally, after the measurement window, ``--forks N``
short-lived processes are forked and exited as fast as Python can (the process-tree bound under a fork storm:
``ravn_proctree_processes`` must stay <= ``ravn.proctree_max``).

Reports: RSS at the end of warm-up and at the end, growth after warm-up (mean of the first vs the last 30 s after
warm-up), max RSS, events accepted/dropped/analyzed per source, unaccounted loss (accepted - dropped - analyzed
after a clean stop), kernel drops, the fork-storm figures, and the verdicts: alerts per level and analyzer,
MEDIUM alerts per host-hour (rules vs model), the HIGH alerts, the highest level of the incidents they joined (and
that incident scored from these alerts alone, since other activity can join an incident too), and the host threat
level's highest value. Verdicts are given twice: for the benign workload (alerts attributed to its session or
cgroup: what the benign work itself caused) and for the whole host (everything the daemon saw, other users'
activity included). The last line is one JSON object.

    sudo .venv/bin/python bench/soak.py --minutes 10 --rate 50 --forks 100000
    sudo .venv/bin/python bench/soak.py --minutes 10 --rate 0 --benign all   # 10 minutes of mixed benign work
    sudo .venv/bin/python bench/soak.py --minutes 3 --skip-missing   # plugins not installed are left out
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benign as benign_kinds
from ravn_core.bpf.testing import build_fork_loop
from ravn_core.builtin.health import anon_rss_bytes, rss_bytes
from ravn_core.config import ThreatConfig
from ravn_core.status import StatusReader
from ravn_core.threat import Contribution, incident_line, incident_score, level_for, tactic_of

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"LOW": 0, "MEDIUM": 1, "HIGH": 2}


# ---------------------------------------------------------------------------------------------- load generator
def load(rate: float, seconds: float, workdir: str) -> None:
    """execs, opens and connects, ``rate`` of each per second, for ``seconds``."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused (still a connect event)
    port = closed.getsockname()[1]
    path = os.path.join(workdir, "soak-file")
    interval = 1.0 / rate
    nxt = time.monotonic()
    end = nxt + seconds
    n = 0
    while time.monotonic() < end:
        pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
        with open(path, "w") as f:
            f.write("x")
        with socket.socket() as c:
            c.connect_ex(("127.0.0.1", port))
        os.waitpid(pid, 0)
        n += 1
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"load_iterations": n}), flush=True)


def fork_storm(count: int, workdir: Path) -> float:
    """Fork ``count`` children that exit at once (a C loop when a C compiler exists); returns the seconds."""
    exe = build_fork_loop(workdir)
    t0 = time.monotonic()
    if exe is not None:
        subprocess.run([str(exe), str(count)], check=True, timeout=3600)
    else:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------- benign work
def make_cgroup(name: str) -> tuple[Path | None, int]:
    """A cgroup v2 directory for the benign workload: every event of its processes carries its id (proc.cgroup)."""
    root = next((p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")) if (p / "cgroup.procs").exists()),
                None)
    if root is None:
        return None, 0
    path = root / f"ravn-soak-{os.getpid()}-{name}"
    try:
        path.mkdir(exist_ok=True)
        return path, path.stat().st_ino
    except OSError:
        return None, 0


def start_benign(kinds: str, seconds: float, workdir: Path, cgroup: Path | None, seed: int) -> subprocess.Popen[str]:
    """bench/benign.py's ``kinds`` for ``seconds`` (the round under way finishes), as a session leader in
    ``cgroup``: its session id and cgroup attribute the alerts it causes."""
    procs = str(cgroup / "cgroup.procs") if cgroup else ""

    def enter() -> None:
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "benign.py"), str(workdir), "--kinds", kinds,
                             "--seconds", str(seconds), "--seed", str(seed), "--verbose"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=enter, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def belongs(alert: dict[str, Any], root: int, cgroup_id: int) -> bool:
    """The alert is about the benign workload: its process, an event or an ancestor is in the workload's cgroup or
    session, or descends from its driver."""
    ev = alert.get("evidence") or {}
    if alert.get("pid") == root:
        return True
    if cgroup_id and any(e.get("proc.cgroup") == cgroup_id for e in ev.get("events") or []):
        return True
    procs = [ev.get("process") or {}, *(ev.get("ancestry") or []), *(ev.get("lineage") or [])]
    return any(p.get("pid") == root or p.get("sid") == root for p in procs)


def verdicts(records: list[dict[str, Any]], hours: float, keep: Any = None) -> dict[str, Any]:
    """Alert figures of the jsonl records whose alerts pass ``keep`` (all when None): counts per level and
    analyzer, MEDIUM per host-hour (rules vs model), the HIGH alerts, and the incidents the alerts joined."""
    alerts = [r for r in records if r.get("kind", "alert") == "alert" and "rule" in r and (keep is None or keep(r))]
    counts: dict[str, dict[str, int]] = {}
    for a in alerts:
        per = counts.setdefault(a.get("analyzer", "?"), dict.fromkeys(LEVELS, 0))
        per[a.get("level", "LOW")] = per.get(a.get("level", "LOW"), 0) + 1
    medium = [a for a in alerts if a.get("level") == "MEDIUM"]
    ids = {a.get("incident") for a in alerts if a.get("incident")}
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") in ("incidents", "threat"):
            for inc in r.get("incidents") or []:
                if inc.get("id") in ids:
                    prev = latest.get(inc["id"])
                    # keep the summary at the incident's highest level (it may have been reported lower later)
                    level = LEVELS.get(inc.get("level", "LOW"), 0)
                    if prev is None or level >= LEVELS.get(prev.get("level", "LOW"), 0):
                        latest[inc["id"]] = inc
    incidents = sorted(latest.values(), key=lambda i: (-LEVELS.get(i.get("level", "LOW"), 0),
                                                       -float(i.get("score", 0))))
    # the same incidents scored from the kept alerts alone (what this work adds up to, whatever else joined them;
    # every alert of the run counts, so the incident window is ignored: an upper bound)
    cfg = ThreatConfig()
    own: dict[str, dict[tuple[str, str], Contribution]] = {}
    for a in alerts:
        if a.get("incident") and a.get("analyzer") != "ravn":
            rules = own.setdefault(a["incident"], {})
            rk = (a.get("analyzer", "?"), a.get("rule", "?"))
            score = float(a.get("score", 0))
            if rk not in rules or score > rules[rk].score:
                rules[rk] = Contribution(rk[0], rk[1], score, tactic_of(a.get("tags") or []),
                                         bool(a.get("corroboration")), 0.0, 0.0, None)  # type: ignore[arg-type]
    own_scores = {i: incident_score(c.values(), cfg) for i, c in own.items()}
    own_max = max(own_scores.values(), default=0.0)
    by_rule: dict[str, int] = {}
    for a in medium:
        key = f"{a.get('analyzer', '?')}/{a.get('rule', '?')}"
        by_rule[key] = by_rule.get(key, 0) + 1
    return {
        "alerts": counts,
        "high": len([a for a in alerts if a.get("level") == "HIGH"]),
        "medium": len(medium),
        "medium_per_host_hour": round(len(medium) / hours, 2) if hours > 0 else None,
        "medium_per_host_hour_rules": round(sum(a.get("analyzer") == "analyzer_rules" for a in medium) / hours, 2)
        if hours > 0 else None,
        "medium_per_host_hour_model": round(sum(a.get("analyzer") == "analyzer_onnx" for a in medium) / hours, 2)
        if hours > 0 else None,
        "medium_by_rule": by_rule,
        "high_alerts": [f"{a.get('analyzer')}/{a.get('rule')} pid {a.get('pid')} {a.get('comm')}: "
                        f"{a.get('description')}" for a in alerts if a.get("level") == "HIGH"][:50],
        "incidents": len(incidents),
        "incident_level": incidents[0].get("level", "LOW") if incidents else "-",
        "own_incident_score": round(own_max, 1),
        "own_incident_level": level_for(own_max, cfg) if own_scores else "-",
        "own_incidents": {i: [f"{r[1]} {c.score:g}" for r, c in rules.items()] for i, rules in own.items()
                          if level_for(own_scores[i], cfg) != "LOW"},
        "incidents_medium_plus": [incident_line(i) for i in incidents if LEVELS.get(i.get("level", "LOW"), 0) >= 1],
    }


def host_level(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The host threat level over the run: its highest value and the changes to HIGH (from the threat records)."""
    threat = [r for r in records if r.get("kind") == "threat"]
    worst = max((r.get("level", "LOW") for r in threat), key=lambda lvl: LEVELS.get(lvl, 0), default="LOW")
    return {"max": worst, "changes": len(threat),
            "to_high": sum(1 for r in threat if r.get("level") == "HIGH" and r.get("previous_level") != "HIGH")}


# ---------------------------------------------------------------------------------------------- helpers
def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def get_metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(src: Path, tmp: Path, port: int, skip_missing: bool, exclude: list[str], overrides: list[str],
                transport_overrides: list[str]) -> tuple[Path, list[str], list[str]]:
    config = yaml.safe_load(src.read_text())
    for section, items in (("ravn", overrides), ("transport", transport_overrides)):
        for item in items:
            key, _, value = item.partition("=")
            config.setdefault(section, {})[key] = yaml.safe_load(value)
    config.setdefault("ravn", {}).update({"state_dir": str(tmp / "state"), "http_listen": f"127.0.0.1:{port}"})
    for sink in config.get("sinks", []):
        if sink.get("plugin") == "jsonl":
            sink["path"] = str(tmp / "alerts.jsonl")
    skipped: list[str] = []
    for key in ("sources", "analyzers", "sinks"):
        skipped += [s["plugin"] for s in config.get(key, []) if s["plugin"] in exclude]
        config[key] = [s for s in config.get(key, []) if s["plugin"] not in exclude]
    if skip_missing:
        from ravn_core.cli import load_host

        registries = load_host().registries()
        for key in ("sources", "analyzers", "sinks"):
            keep = [s for s in config.get(key, []) if s["plugin"] in registries[key]]
            skipped += [s["plugin"] for s in config.get(key, []) if s not in keep]
            config[key] = keep
    path = tmp / "ravn.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, [s.get("name", s["plugin"]) for s in config.get("sources", [])], skipped


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth is measured")
    p.add_argument("--rate", type=float, default=50.0, help="execs, opens and connects per second, each (0: none)")
    p.add_argument("--benign", default="", metavar="KINDS",
                   help=f"bench/benign.py kinds run for the whole window (comma-separated or 'all': "
                        f"{', '.join(benign_kinds.KINDS)}); default none")
    p.add_argument("--seed", type=int, default=0, help="seed of the benign workload's rounds")
    p.add_argument("--settle", type=float, default=20.0,
                   help="seconds between the end of the work and the daemon's stop (the model's verdicts come at "
                        "process exits; default 20)")
    p.add_argument("--forks", type=int, default=0, help="after the soak window, fork+exit this many processes")
    p.add_argument("--config", default=str(ROOT / "config" / "ravn.yaml"))
    p.add_argument("--skip-missing", action="store_true", help="leave out plugins that are not installed")
    p.add_argument("--exclude", action="append", default=[], help="leave out this plugin (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ravn: core key, e.g. --set memory_limit_mb=1024 (YAML value)")
    p.add_argument("--transport-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a transport: key, e.g. --transport-set capacity_events=65536")
    p.add_argument("--after-storm", type=float, default=5.0,
                   help="seconds to keep sampling RSS and the backlog after the fork storm (default 5)")
    p.add_argument("--load", nargs=3, metavar=("RATE", "SECONDS", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        load(float(args.load[0]), float(args.load[1]), args.load[2])
        return 0

    if args.benign:
        try:
            benign_kinds.parse_kinds(args.benign)
        except ValueError as exc:
            p.error(str(exc))
    tmp = Path(tempfile.mkdtemp(prefix="ravn-soak-"))
    tmp.chmod(0o755)
    port = free_port()
    cfg, sources, skipped = make_config(Path(args.config), tmp, port, args.skip_missing, args.exclude, args.set,
                                        args.transport_set)
    base = f"http://127.0.0.1:{port}"
    status = StatusReader(str(tmp / "state"))  # /status: only on the daemon's root-only socket
    seconds = args.minutes * 60
    out_f, err_f = (tmp / "stdout").open("w"), (tmp / "stderr").open("w")
    ravn = str(Path(sys.executable).parent / "ravn")
    daemon = subprocess.Popen([ravn, "--config", str(cfg)], stdout=out_f, stderr=err_f)
    print(f"soak: daemon pid {daemon.pid}, config {cfg}, sources {sources}, skipped {skipped}", flush=True)
    deadline = time.monotonic() + 120
    while True:
        if daemon.poll() is not None:
            print((tmp / "stderr").read_text()[-3000:], file=sys.stderr)
            return 1
        try:
            get_json(f"{base}/healthz")
            break
        except urllib.error.HTTPError as exc:  # 503: up but degraded (named in /healthz); soak anyway
            print(f"soak: daemon up but degraded: {exc.read().decode()[:500]}", flush=True)
            break
        except OSError:
            if time.monotonic() > deadline:
                print("soak: the daemon did not answer /healthz within 120 s", file=sys.stderr)
                daemon.kill()
                return 1
            time.sleep(0.5)
    started = time.monotonic()
    wall_started = time.time()
    loadgen = subprocess.Popen([sys.executable, __file__, "--load", str(args.rate), str(seconds), str(tmp)],
                               stdout=subprocess.PIPE, text=True) if args.rate > 0 else None
    cgroup, cgroup_id = make_cgroup("benign") if args.benign else (None, 0)
    # the last round runs to its end: stop starting rounds a little before the window closes
    benign = start_benign(args.benign, max(1.0, seconds - 30), tmp / "benign", cgroup, args.seed) \
        if args.benign else None
    samples: list[tuple[float, int]] = []
    anon_samples: list[tuple[float, int]] = []
    statuses: list[dict[str, Any]] = []
    while time.monotonic() - started < seconds:
        t = time.monotonic() - started
        samples.append((t, rss_bytes(daemon.pid)))
        anon_samples.append((t, anon_rss_bytes(daemon.pid)))
        if len(samples) % 5 == 0:
            st = status.read()
            statuses.append({"t": round(t), "accepted": st["stats"]["accepted"], "analyzed": st["stats"]["analyzed"],
                             "dropped": st["stats"]["dropped"], "rss": samples[-1][1],
                             "proctree": get_metric(f"{base}/metrics", "ravn_proctree_processes")})
            if len(statuses) % 12 == 0:
                print(f"soak: t={t:.0f}s rss={samples[-1][1] / 1048576:.1f} MB accepted={statuses[-1]['accepted']} "
                      f"dropped={statuses[-1]['dropped']} proctree={statuses[-1]['proctree']:.0f}", flush=True)
        time.sleep(max(0.0, started + len(samples) - time.monotonic()))
    load_out = loadgen.communicate(timeout=60)[0].strip().splitlines() if loadgen else []
    load_iterations = json.loads(load_out[-1])["load_iterations"] if load_out else 0
    benign_rounds: list[str] = []
    benign_s = 0.0
    if benign is not None:
        try:
            benign_rounds = benign.communicate(timeout=600)[1].strip().splitlines()[-1:]  # "build: 3 rounds, ..."
        except subprocess.TimeoutExpired:
            os.killpg(benign.pid, signal.SIGKILL)
            benign_rounds = ["killed: still running 600 s after the window"]
        benign_s = time.monotonic() - started
    if args.settle > 0:
        time.sleep(args.settle)

    storm: dict[str, Any] = {}
    if args.forks:
        before = rss_bytes(daemon.pid)
        took = fork_storm(args.forks, tmp)
        # after the storm: RSS, private memory and the backlog (accepted, not yet analyzed or dropped) each second
        curve: list[tuple[int, float, float, int]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.after_storm:
            st = status.read()["stats"]
            curve.append((round(time.monotonic() - t0), round(rss_bytes(daemon.pid) / 1048576, 1),
                          round(anon_rss_bytes(daemon.pid) / 1048576, 1),
                          st["accepted"] - st["analyzed"] - st["dropped"]))
            time.sleep(1)
        storm = {"forks": args.forks, "seconds": round(took, 1), "forks_per_s": round(args.forks / took),
                 "after": curve, "backlog_max": max(c[3] for c in curve) if curve else 0,
                 "proctree_processes": get_metric(f"{base}/metrics", "ravn_proctree_processes"),
                 "proctree_evictions": get_metric(f"{base}/metrics", "ravn_proctree_evictions_total"),
                 "proctree_max": get_metric(f"{base}/metrics", "ravn_proctree_max"),
                 "rss_before_mb": round(before / 1048576, 1), "rss_after_mb": round(rss_bytes(daemon.pid) / 1048576, 1),
                 "kernel_drops": status.read()["stats"]["sources"]}
        storm["kernel_drops"] = {n: s["kernel_drops"] for n, s in storm["kernel_drops"].items()}
        storm["bounded"] = storm["proctree_processes"] <= storm["proctree_max"]

    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(120)
    final = json.loads((tmp / "state" / "status.json").read_text())
    st = final["stats"]
    wall_s = time.time() - wall_started
    records: list[dict[str, Any]] = []
    alerts_file = tmp / "alerts.jsonl"
    if alerts_file.exists():
        records = [json.loads(line) for line in alerts_file.read_text().splitlines() if line.strip()]
    if cgroup is not None:
        try:
            cgroup.rmdir()
        except OSError:
            pass
    host_hours = wall_s / 3600
    judged: dict[str, Any] = {"host": {**verdicts(records, host_hours), "threat_level": host_level(records),
                                       "hours": round(host_hours, 4)}}
    if benign is not None:
        root = benign.pid
        judged["benign"] = {**verdicts(records, benign_s / 3600, lambda a: belongs(a, root, cgroup_id)),
                            "kinds": args.benign, "rounds": benign_rounds, "seconds": round(benign_s),
                            "hours": round(benign_s / 3600, 4), "exit": benign.returncode}

    after = [r for t, r in samples if t >= args.warmup]
    window = min(30, max(1, len(after) // 4))
    start_rss = sum(after[:window]) / window if after else 0
    end_rss = sum(after[-window:]) / window if after else 0
    kernel_drops = sum(s["kernel_drops"] for s in st["sources"].values())
    anon_after = [r for t, r in anon_samples if t >= args.warmup]
    anon_start = sum(anon_after[:window]) / window if anon_after else 0
    anon_end = sum(anon_after[-window:]) / window if anon_after else 0
    result = {
        "minutes": args.minutes, "rate_per_kind": args.rate, "overrides": args.set, "load_iterations": load_iterations,
        "sources": sources, "skipped": skipped, "exit_code": code,
        "rss_after_warmup_mb": round(start_rss / 1048576, 1), "rss_end_mb": round(end_rss / 1048576, 1),
        "rss_growth_pct": round(100 * (end_rss - start_rss) / start_rss, 2) if start_rss else None,
        "rss_max_mb": round(max(r for _, r in samples) / 1048576, 1),
        "anon_after_warmup_mb": round(anon_start / 1048576, 1), "anon_end_mb": round(anon_end / 1048576, 1),
        "anon_growth_pct": round(100 * (anon_end - anon_start) / anon_start, 2) if anon_start else None,
        "anon_max_mb": round(max(r for _, r in anon_samples) / 1048576, 1),
        "accepted": st["accepted"], "dropped": st["dropped"], "analyzed": st["analyzed"],
        "kernel_drops": kernel_drops, "unaccounted": st["accepted"] - st["dropped"] - st["analyzed"],
        "per_source": {n: {"accepted": s["accepted"], "dropped": s["dropped"], "kernel_drops": s["kernel_drops"]}
                       for n, s in st["sources"].items()},
        "alerts": st["alerts_emitted"], "self_alerts": st["self_alerts"],
        "fork_storm": storm,
        "verdicts": judged,
    }
    (tmp / "samples.json").write_text(json.dumps({"rss": samples, "status": statuses}))
    print(f"soak: RSS after warm-up {result['rss_after_warmup_mb']} MB, end {result['rss_end_mb']} MB "
          f"({result['rss_growth_pct']}%), max {result['rss_max_mb']} MB; accepted {st['accepted']} dropped "
          f"{st['dropped']} analyzed {st['analyzed']} kernel drops {kernel_drops} unaccounted {result['unaccounted']}"
          f"; samples in {tmp / 'samples.json'}")
    for part, v in judged.items():
        print(f"soak verdicts ({part}, {v['hours'] * 60:.1f} min): {v['high']} HIGH, {v['medium']} MEDIUM alerts "
              f"= {v['medium_per_host_hour']} MEDIUM per host-hour (rules {v['medium_per_host_hour_rules']}, "
              f"model {v['medium_per_host_hour_model']}); incidents {v['incidents']}, highest {v['incident_level']}"
              f" (from these alerts alone: {v['own_incident_level']} {v['own_incident_score']})"
              + (f"; host threat level max {v['threat_level']['max']}" if "threat_level" in v else ""))
        for key, n in sorted(v["medium_by_rule"].items(), key=lambda kv: -kv[1]):
            print(f"  MEDIUM x{n} {key}")
        for line in v["high_alerts"][:10]:
            print(f"  HIGH {line}")
        for line in v["incidents_medium_plus"][:10]:
            print(f"  incident {line}")
    print(json.dumps(result))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
