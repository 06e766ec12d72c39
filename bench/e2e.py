"""End to end: what the real daemon costs per real kernel event (CPU us per event and per exec lifecycle).

Starts ``ravn --config config/ravn.yaml`` (all four probes, both analyzers, the default sinks; state, alert file and
HTTP port moved to a temp dir) as a child process, measures its idle CPU, then runs bounded storms one after the
other, each from generator processes of this script (loopback and a temp log file only):

- ``exec``: ``--shells`` shells each running /bin/true ``--execs`` times (fork + exec + exit each);
- ``open``: ``--procs`` processes each opening a file under /var/log (a watched write prefix) ``--opens`` times;
- ``connect``: ``--procs`` processes each making ``--connects`` TCP connects to a loopback listener that accepts;
- ``mixed``: the three at once;
- ``alert``: ``--alerts`` short-lived children each reading /etc/shadow (rule ``sensitive_file_read``), one every
  100 ms, while one shell runs an exec loop; the latency is from the open to the alert's line in the JSONL file.

For each storm the daemon's CPU is read from /proc/<pid>/stat (utime + stime of all its threads, plus cutime +
cstime of reaped children such as the BPF loader) when the daemon is drained before it starts and again
``--settle`` s after the generators end, at the first poll where every accepted event is analyzed or dropped.
The machine is not quiet (other processes' events reach the daemon too), so the background measured first (CPU
and events per second, with the same /status polling) is subtracted for the storm's wall time ("net").
Printed per storm: actions generated, events delivered per source (accepted by the runtime), dropped (queue)
and kernel drops (ring full), analyzed, unaccounted (= accepted - analyzed - dropped, must be 0), CPU us per
delivered event, CPU us per exec lifecycle (exec storm), and the alert latency. The last line is one JSON object.

Absolute figures depend on the machine's load (compare ratios measured in one run):

    sudo .venv/bin/python bench/e2e.py                       # every storm, the issue's exec reference
    sudo .venv/bin/python bench/e2e.py --storms exec,mixed --execs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
STORMS = ("exec", "open", "connect", "mixed", "alert")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALERT_RULE = "sensitive_file_read"


# ---------------------------------------------------------------------------------------------- generators
def _pace(done: int, rate: float, t0: float) -> None:
    delay = t0 + done / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def gen_opens(n: int, rate: float, path: str) -> int:
    """``n`` opens for append of ``path`` (a watched write prefix: one file event each), at most ``rate``/s."""
    t0 = time.monotonic()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    for i in range(n):
        os.close(os.open(path, flags, 0o600))
        if not i % 100:
            _pace(i, rate, t0)
    return n


def gen_connects(n: int, rate: float) -> int:
    """``n`` TCP connects to a loopback listener that accepts and closes each, at most ``rate``/s."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]

    def serve() -> None:
        for _ in range(n):
            conn, _addr = srv.accept()
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    t0 = time.monotonic()
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port)):
            pass
        if not i % 50:
            _pace(i, rate, t0)
    t.join(30)
    srv.close()
    return n


def gen_shadow(n: int, interval: float) -> list[tuple[int, float]]:
    """``n`` children that each open /etc/shadow for reading and exit; (pid, wall time of the open) each."""
    out: list[tuple[int, float]] = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            t = time.time()
            fd = os.open("/etc/shadow", os.O_RDONLY)
            os.close(fd)
            os.write(w, repr(t).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out.append((pid, float(f.read())))
        os.waitpid(pid, 0)
        time.sleep(interval)
    return out


def exec_shell(n: int) -> subprocess.Popen[bytes]:
    """A shell running /bin/true ``n`` times (the issue's reference workload)."""
    script = f'i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done'
    return subprocess.Popen(["/bin/sh", "-c", script])


def gen_main(kind: str, n: int, rate: float, arg: str) -> None:
    if kind == "open":
        print(json.dumps({"opens": gen_opens(n, rate, arg)}), flush=True)
    elif kind == "connect":
        print(json.dumps({"connects": gen_connects(n, rate)}), flush=True)
    elif kind == "shadow":
        print(json.dumps({"shadow": gen_shadow(n, rate)}), flush=True)


# ---------------------------------------------------------------------------------------------- daemon
def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` plus cutime + cstime of its reaped children, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """utime + stime per thread name of ``pid`` (threads of one name summed), in seconds."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_bytes()
        except OSError:  # the thread ended
            continue
        name = raw.split(b"(", 1)[1].rsplit(b")", 1)[0].decode(errors="replace")
        fields = raw.rsplit(b")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(src: Path, tmp: Path, port: int, sets: list[str], profile: bool = False) -> Path:
    config = yaml.safe_load(src.read_text())
    if profile:
        # py-spy samples the daemon with process_vm_readv, which the security probe reports (and a rule alerts
        # on): a feedback storm of millions of events that is the profiler's, not the workload's. Not traced then.
        from ravn_ebpf_security.config import ALL_EVENTS

        for source in config.get("sources", []):
            if source.get("plugin") == "ebpf_security":
                source["events"] = [e for e in source.get("events", ALL_EVENTS) if e != "process_vm"]
    for item in sets:
        key, _, value = item.partition("=")
        config.setdefault("ravn", {})[key] = yaml.safe_load(value)
    config.setdefault("ravn", {}).update({"state_dir": str(tmp / "state"), "http_listen": f"127.0.0.1:{port}"})
    for sink in config.get("sinks", []):
        if sink.get("plugin") == "jsonl":
            sink["path"] = str(tmp / "alerts.jsonl")
    path = tmp / "ravn.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Daemon:
    def __init__(self, config: Path, tmp: Path, port: int, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.tmp = tmp
        ravn = str(Path(sys.executable).parent / "ravn")
        self.proc = subprocess.Popen([ravn, "--config", str(config)], stdout=(tmp / "stdout").open("w"),
                                     stderr=(tmp / "stderr").open("w"), env=env)
        self.pid = self.proc.pid

    def wait_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"e2e: daemon exited {self.proc.returncode}: "
                                 f"{(self.tmp / 'stderr').read_text()[-3000:]}")
            try:
                get_json(f"{self.base}/healthz")
                return
            except urllib.error.HTTPError as exc:
                raise SystemExit(f"e2e: daemon degraded: {exc.read().decode()[:800]}") from None
            except OSError:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise SystemExit("e2e: the daemon did not answer /healthz") from None
                time.sleep(0.5)

    def status(self) -> dict[str, Any]:
        """/status: on the TCP port where the daemon serves it there, else on its root-only unix socket."""
        sock = self.tmp / "state" / "ravn.sock"
        if not sock.exists():
            return get_json(f"{self.base}/status")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(b"GET /status HTTP/1.0\r\nHost: ravn\r\n\r\n")
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"e2e: /status on {sock}: {head[:200]!r}")
        data: dict[str, Any] = json.loads(body)
        return data

    def counts(self) -> dict[str, Any]:
        st = self.status()["stats"]
        return {"accepted": st["accepted"], "dropped": st["dropped"], "analyzed": st["analyzed"],
                "lost": st.get("publish_lost", 0), "alerts": st["alerts"],
                "kernel_drops": sum(s["kernel_drops"] for s in st["sources"].values()),
                "per_source": {n: s["accepted"] for n, s in st["sources"].items()}}

    def settle(self, wait: float, poll: float, timeout: float = 300) -> tuple[dict[str, Any], float, float]:
        """After ``wait`` s (the syscall probe flushes its summaries every second), wait for a poll at which
        everything accepted is analyzed or dropped. Other processes on the machine keep producing events, so
        "no new event" never comes. Returns (counts, CPU seconds, monotonic time) of that poll."""
        time.sleep(wait)
        deadline = time.monotonic() + timeout
        while True:
            cpu, cur, now = cpu_seconds(self.pid), self.counts(), time.monotonic()
            if cur["accepted"] == cur["analyzed"] + cur["dropped"] + cur["lost"]:
                return cur, cpu, now
            if now > deadline:
                raise SystemExit(f"e2e: the daemon did not drain within {timeout:.0f}s: {cur}")
            time.sleep(poll / 5)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        data: dict[str, Any] = json.loads((self.tmp / "state" / "status.json").read_text())
        return data

    def close(self) -> None:
        """Stop the daemon if it still runs (the bench gave up or failed): SIGTERM, SIGKILL after 60 s."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class AlertTail:
    """Follows the JSONL alert file; the first wall time each (rule, pid) was seen."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, dict[tuple[str, int], float]()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        pos, buf = 0, b""
        while not self._stop.wait(0.002):
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                continue
            if not chunk:
                continue
            now = time.time()
            pos += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "rule" in rec:
                    self.seen.setdefault((rec["rule"], int(rec.get("pid", 0))), now)

    def close(self) -> None:
        self._stop.set()
        self._t.join()


# ---------------------------------------------------------------------------------------------- storms
def run_storm(kind: str, args: argparse.Namespace, tmp: Path) -> tuple[dict[str, int], list[tuple[int, float]]]:
    """Start the generators of ``kind``, wait for them; returns the actions done and the shadow opens."""
    me = [sys.executable, __file__, "--gen"]
    logfile = f"/var/log/ravn-e2e-{os.getpid()}.log"
    shells: list[subprocess.Popen[bytes]] = []
    gens: list[subprocess.Popen[str]] = []
    actions = {"execs": 0, "opens": 0, "connects": 0, "shadow_reads": 0}
    if kind in ("exec", "mixed"):
        shells += [exec_shell(args.execs) for _ in range(args.shells)]
        actions["execs"] = args.execs * args.shells
    if kind == "alert":
        shells.append(exec_shell(args.execs))
        actions["execs"] = args.execs
    if kind in ("open", "mixed"):
        gens += [subprocess.Popen([*me, "open", str(args.opens), str(args.rate), logfile], stdout=subprocess.PIPE,
                                  text=True) for _ in range(args.procs)]
    if kind in ("connect", "mixed"):
        gens += [subprocess.Popen([*me, "connect", str(args.connects), str(args.rate / 4), "-"],
                                  stdout=subprocess.PIPE, text=True) for _ in range(args.procs)]
    if kind == "alert":
        gens.append(subprocess.Popen([*me, "shadow", str(args.alerts), "0.1", "-"], stdout=subprocess.PIPE,
                                     text=True))
    shadow: list[tuple[int, float]] = []
    for g in gens:
        out = json.loads(g.communicate(timeout=600)[0].strip().splitlines()[-1])
        if "opens" in out:
            actions["opens"] += out["opens"]
        if "connects" in out:
            actions["connects"] += out["connects"]
        if "shadow" in out:
            shadow = [(int(p), float(t)) for p, t in out["shadow"]]
            actions["shadow_reads"] += len(shadow)
    for s in shells:
        if kind == "alert":
            s.terminate()
        s.wait(600)
    if os.path.exists(logfile):
        os.unlink(logfile)
    return actions, shadow


def measure(daemon: Daemon, args: argparse.Namespace, storms: list[str], tmp: Path,
            spies: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Background, then each storm in turn, then the daemon's stop; the result object (the last line printed).
    A py-spy recorder started here is put in ``spies`` so that the caller can stop it if this fails."""
    daemon.wait_up()
    tail = AlertTail(tmp / "alerts.jsonl")
    daemon.settle(args.settle, args.poll)  # start-up events (the seeding, our own /status reads) analyzed
    # The machine is not quiet (other processes' events reach the daemon too): measure that background, the
    # daemon's CPU and the events it gets while no storm runs, with the same /status polling as the storms.
    n0, c0, t0 = daemon.counts()["accepted"], cpu_seconds(daemon.pid), time.monotonic()
    while time.monotonic() - t0 < args.idle:
        time.sleep(args.poll)
        daemon.counts()
    idle_wall = time.monotonic() - t0
    idle_rate = (cpu_seconds(daemon.pid) - c0) / idle_wall
    idle_events = (daemon.counts()["accepted"] - n0) / idle_wall
    print(f"e2e: background: CPU {1e3 * idle_rate:.1f} ms/s, {idle_events:.0f} events/s (with /status every "
          f"{args.poll}s)", flush=True)

    if args.profile:
        exe = os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy"
        spy = subprocess.Popen([exe, "record", "--pid", str(daemon.pid), "--rate", "250", "--format", "raw",
                                "--threads", "--output", args.profile, "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append(spy)
        time.sleep(1)
    results: dict[str, Any] = {}
    for kind in storms:
        before, cpu0, t0 = daemon.settle(0, args.poll)
        threads0 = thread_cpu(daemon.pid)
        actions, shadow = run_storm(kind, args, tmp)
        gen_s = time.monotonic() - t0
        after, cpu1, t1 = daemon.settle(args.settle, args.poll)
        threads1 = thread_cpu(daemon.pid)
        events = after["accepted"] - before["accepted"]
        cpu, wall = cpu1 - cpu0, t1 - t0
        net = cpu - idle_rate * wall
        net_events = events - idle_events * wall
        r: dict[str, Any] = {
            **actions, "generate_s": round(gen_s, 2), "wall_s": round(wall, 2),
            "delivered": events, "per_source": {n: v - before["per_source"].get(n, 0)
                                                for n, v in after["per_source"].items()},
            "dropped": after["dropped"] - before["dropped"], "kernel_drops": after["kernel_drops"] - before[
                "kernel_drops"], "analyzed": after["analyzed"] - before["analyzed"],
            "alerts": after["alerts"] - before["alerts"],
            "cpu_s": round(cpu, 3), "cpu_net_s": round(net, 3),
            "us_per_event": round(1e6 * cpu / events, 1) if events else None,
            "net_events": round(net_events),
            "net_us_per_event": round(1e6 * net / net_events, 1) if net_events > 0 else None,
            "events_per_s": round(events / gen_s),
        }
        r["unaccounted"] = r["delivered"] - r["analyzed"] - r["dropped"]
        # the same CPU per thread (names as the kernel keeps them, 15 bytes), in us per delivered event
        r["thread_us_per_event"] = {n: round(1e6 * (c - threads0.get(n, 0.0)) / events, 1)
                                    for n, c in sorted(threads1.items(), key=lambda t: threads0.get(t[0], 0) - t[1])
                                    if events and c - threads0.get(n, 0.0) > 0}
        if kind == "exec" and actions["execs"]:
            r["us_per_exec"] = round(1e6 * cpu / actions["execs"], 1)
            r["net_us_per_exec"] = round(1e6 * net / actions["execs"], 1)
            r["events_per_exec"] = round(events / actions["execs"], 2)
        if shadow:
            time.sleep(0.5)
            lat = sorted(tail.seen[(ALERT_RULE, pid)] - t for pid, t in shadow if (ALERT_RULE, pid) in tail.seen)
            r["alert_latency_ms"] = {"seen": f"{len(lat)}/{len(shadow)}",
                                     "p50": round(1e3 * lat[len(lat) // 2], 1) if lat else None,
                                     "max": round(1e3 * lat[-1], 1) if lat else None}
        results[kind] = r
        src = " ".join(f"{n.removeprefix('ebpf_')}={v}" for n, v in r["per_source"].items())
        line = (f"e2e: {kind:8s} {events:7d} events ({src}) in {gen_s:.1f}s, dropped {r['dropped']} kernel "
                f"{r['kernel_drops']} unaccounted {r['unaccounted']}; CPU {cpu:.2f}s = {r['us_per_event']} us/event "
                f"(net of background {r['net_us_per_event']})")
        if "us_per_exec" in r:
            line += f"; {r['us_per_exec']} us/exec (net {r['net_us_per_exec']}, {r['events_per_exec']} events/exec)"
        if "alert_latency_ms" in r:
            line += f"; alert latency ms {r['alert_latency_ms']}"
        line += "\n    us/event by thread: " + ", ".join(f"{n} {v}" for n, v in r["thread_us_per_event"].items())
        print(line, flush=True)
    tail.close()
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    spies.clear()
    final = daemon.stop()
    st = final["stats"]
    unaccounted = st["accepted"] - st["analyzed"] - st["dropped"] - st.get("publish_lost", 0)
    out = {"background_ms_per_s": round(1e3 * idle_rate, 1), "background_events_per_s": round(idle_events),
           "storms": results, "exit_unaccounted": unaccounted, "config": args.config,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config" / "ravn.yaml"))
    p.add_argument("--storms", default=",".join(STORMS), help=f"comma-separated, of {', '.join(STORMS)}")
    p.add_argument("--shells", type=int, default=2, help="exec storm: shells at once (default 2)")
    p.add_argument("--execs", type=int, default=5000, help="exec storm: /bin/true runs per shell (default 5000)")
    p.add_argument("--procs", type=int, default=2, help="open/connect storms: generator processes (default 2)")
    p.add_argument("--opens", type=int, default=20000, help="open storm: opens per process (default 20000)")
    p.add_argument("--connects", type=int, default=5000, help="connect storm: connects per process (default 5000)")
    p.add_argument("--rate", type=float, default=20000, help="opens/s per process; connects/s is a quarter")
    p.add_argument("--alerts", type=int, default=20, help="alert storm: /etc/shadow readers (default 20)")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement (default 5)")
    p.add_argument("--settle", type=float, default=1.5,
                   help="seconds after the generators end before waiting for the backlog to drain")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between /status polls (idle too)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ravn: core key")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="daemon environment")
    p.add_argument("--profile", metavar="FILE", help="record the daemon with py-spy (on PATH, or $PY_SPY) during "
                   "the storms into FILE (collapsed stacks, all threads, idle frames left out); the security "
                   "probe then does not trace process_vm (py-spy's own reads of the daemon)")
    p.add_argument("--gen", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.gen:
        gen_main(args.gen[0], int(args.gen[1]), float(args.gen[2]), args.gen[3])
        return 0
    storms = [s for s in args.storms.split(",") if s]
    if unknown := [s for s in storms if s not in STORMS]:
        p.error(f"unknown storm(s) {unknown}; choose from {STORMS}")

    tmp = Path(tempfile.mkdtemp(prefix="ravn-e2e-"))
    port = free_port()
    cfg = make_config(Path(args.config), tmp, port, args.set, profile=bool(args.profile))
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    daemon = Daemon(cfg, tmp, port, env)
    print(f"e2e: daemon pid {daemon.pid}, config {cfg}", flush=True)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        out = measure(daemon, args, storms, tmp, spies)
    finally:  # a failure or a give-up (SystemExit) must not leave the daemon or py-spy running
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        daemon.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
