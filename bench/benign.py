#!/usr/bin/env python3
"""Benign workloads of several kinds, for model recordings (scripts/record_benign.py), the false-alarm
measurement of the ONNX model (docs/MODEL.md) and the benign run of bench/detect.py.

    .venv/bin/python bench/benign.py WORKDIR [--kinds build,web|all] [--rounds N | --seconds S] [--seed N]

Each kind is a list of shell steps run by ``bash`` in a fresh directory under WORKDIR, round after round with
varied inputs and order (seeded). Nothing leaves the machine or changes the host beyond WORKDIR: servers listen
on loopback, packages go into a venv under WORKDIR, apt only downloads or queries. A tool that is missing skips
its steps (``command -v``); a failing step does not stop the round.

Kinds (``KINDS``):

- ``dev``      the developer workload the shipped model was trained on: gcc/make, git, tar/gzip/xz, Python
               scripts (sqlite3, json, a loopback HTTP client), a unittest suite, pip/dpkg queries, ssh-keygen,
               coreutils pipelines, perl, sqlite3.
- ``build``    a multi-file C project with make -j2 (a static library with ar, an incremental rebuild after an
               edit, make clean), a cmake build, a Python package built to a wheel with pip (setuptools, no
               network) and byte-compiled.
- ``packages`` pip install of a locally built wheel and sdist into a fresh venv (--no-index), pip list/show/
               freeze/uninstall; apt-get download of a small .deb and dpkg-deb -c/-x of it, apt-cache
               show/depends/search/policy, dpkg -L/-S/-l.
- ``admin``    interactive administration: ps, ss, ip, lsof, journalctl, systemctl status, df/du/free, find,
               grep -r in /etc, editing a file (sed -i, ed), less, tar/gzip/zstd, ssh-keygen, openssl (key,
               self-signed certificate, digest), getent, id, w/uptime.
- ``web``      a local HTTP server (python -m http.server on a loopback port) under curl and wget loops, HEAD
               and POST requests, a 404, an upload, ss to watch it.
- ``cron``     jobs as cron runs them: logrotate -d and -f on a test config and state file, run-parts of a
               test directory of jobs, find -mtime cleanup of old files, a flock-guarded job appending to a log.

Python API (what the callers use)::

    from bench.benign import KINDS, run          # (sys.path must hold the repository root)
    run(Path(workdir), kinds=["build", "web"], rounds=1, seed=0)   # -> {kind: rounds run}

``TRAINED_KINDS`` names the kinds the shipped model was trained on; every other kind is unseen by it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: kinds whose recordings trained the shipped model (docs/MODEL.md); the others are held back from it
TRAINED_KINDS = ("dev",)


def _have(*tools: str) -> str:
    """A shell guard: the step runs only when every tool is installed."""
    return " && ".join(f"command -v {t} >/dev/null" for t in tools) + " && "


# ---------------------------------------------------------------------------------------------------- dev
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


def dev(rng: random.Random, py: str) -> list[str]:
    """The workload the shipped model was trained on (scripts/record_benign.py's original rounds)."""
    n = rng.randint(50, 500)
    cmds = [
        f"cat > prog.c <<'EOF'\n{C_SOURCE}\nEOF",
        f"printf '{MAKEFILE.encode('unicode_escape').decode()}' > Makefile && make -s && ./prog {n} && make -s clean",
        f"cc -O{rng.randint(0, 2)} -o p2 prog.c && ./p2 {n * 3} >/dev/null && strip p2 && ls -la p2 && rm -f p2",
        "git init -q repo && cd repo && git config user.email t@example.org && git config user.name t"
        f" && for i in $(seq 1 {rng.randint(2, 6)}); do echo line$i >> f.txt; git add f.txt;"
        " git commit -qm c$i; done && git log --oneline | wc -l && git branch feature && git checkout -q feature"
        " && echo x >> f.txt && git commit -qam x && git checkout -q - && git merge -q feature"
        " && git diff HEAD~1 --stat && git status --short && git gc -q && cd .. && git clone -q repo clone"
        " && git -C clone log -1 --format=%H && rm -rf repo clone",
        f"mkdir -p tree/a tree/b && seq 1 {n * 20} > tree/a/nums && cp /etc/hostname tree/b/ 2>/dev/null;"
        " tar czf t.tgz tree && tar tzf t.tgz >/dev/null && mkdir x && tar xzf t.tgz -C x"
        " && gzip -k tree/a/nums && gunzip -c tree/a/nums.gz | wc -l && xz -k tree/a/nums && xz -dc tree/a/nums.xz"
        " | tail -1 && rm -rf tree x t.tgz",
        f"{py} - <<'EOF'\n{PY_DATA.format(n=n)}\nEOF",
        f"{py} - <<'EOF'\n{PY_HTTP.format(n=rng.randint(1, 5))}\nEOF",
        f"cat > test_x.py <<'EOF'\n{UNITTEST.replace('{n}', str(n))}\nEOF\n{py} -m unittest -q test_x 2>&1 | tail -1",
        f"{py} -c 'import sys, platform; print(platform.platform(), sys.version_info[:2])'",
        f"{py} -m pip list 2>/dev/null | head -5",
        f"{py} -m pip show pip 2>/dev/null | head -2",
        "dpkg -l | head -20 | wc -l; dpkg -S /bin/ls | head -1; apt-cache policy bash | head -3",
        "ssh-keygen -q -t ed25519 -N '' -f key && ssh-keygen -l -f key.pub && rm -f key key.pub",
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


# ---------------------------------------------------------------------------------------------------- build
LIB_C = "#include \"util.h\"\nint add(int a, int b) { return a + b; }\nint mul(int a, int b) { return a * b; }\n"
UTIL_H = "#ifndef UTIL_H\n#define UTIL_H\nint add(int a, int b);\nint mul(int a, int b);\n#endif\n"
MAIN_C = ("#include <stdio.h>\n#include \"util.h\"\nint main(void) { int s = 0; for (int i = 0; i < N; i++)"
          " s = add(s, mul(i, 3)); printf(\"%d\\n\", s); return 0; }\n")
PROJECT_MK = """CFLAGS ?= -O2 -Wall
all: app
libutil.a: util.o
\tar rcs $@ $^
app: main.o libutil.a
\t$(CC) -o $@ main.o -L. -lutil
%.o: %.c util.h
\t$(CC) $(CFLAGS) -DN=$(N) -c $<
clean:
\trm -f *.o *.a app
.PHONY: all clean
"""
CMAKE_LISTS = "cmake_minimum_required(VERSION 3.10)\nproject(demo C)\nadd_executable(demo main.c util.c)\n" \
              "target_compile_definitions(demo PRIVATE N=7)\n"
PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
[project]
name = "ravn-bench-pkg{v}"
version = "1.{v}.0"
[tool.setuptools]
packages = ["ravn_bench_pkg{v}"]
"""


def build(rng: random.Random, py: str) -> list[str]:
    v = rng.randint(0, 9)
    n = rng.randint(5, 500)
    return [
        f"mkdir -p proj && cd proj && printf '%s' '{LIB_C}' > util.c && printf '%s' '{UTIL_H}' > util.h"
        f" && cat > main.c <<'EOF'\n{MAIN_C}EOF\ncat > Makefile <<'EOF'\n{PROJECT_MK}EOF\n"
        f"make -s -j2 N={n} && ./app && touch util.c && make -s N={n} && ./app && make -s clean"
        f" && make -s -j2 N={n + 1} CFLAGS=-O{rng.randint(0, 3)} && nm app | wc -l && objdump -h app | tail -3"
        " && size app; cd ..",
        _have("cmake") + "mkdir -p cm && cp proj/main.c proj/util.c proj/util.h cm/ && cd cm"
        f" && printf '%s' '{CMAKE_LISTS}' > CMakeLists.txt && cmake -S . -B out >/dev/null"
        " && cmake --build out -j 2 >/dev/null && ./out/demo; cd ..",
        f"mkdir -p pkg/ravn_bench_pkg{v} && cd pkg && cat > pyproject.toml <<'EOF'\n{PYPROJECT.format(v=v)}EOF\n"
        f"printf 'VALUE = {n}\\ndef f(x):\\n    return x * VALUE\\n' > ravn_bench_pkg{v}/__init__.py"
        f" && {py} -m pip wheel -q --no-index --no-build-isolation --no-deps -w dist . 2>&1 | tail -2"
        f" && ls dist && {py} -m compileall -q ravn_bench_pkg{v} && {py} -m zipfile -l dist/*.whl; cd ..",
        f"{py} -c 'import sysconfig; print(sysconfig.get_paths()[\"include\"])'",
        "rm -rf proj cm pkg",
    ]


# ---------------------------------------------------------------------------------------------------- packages
def packages(rng: random.Random, py: str) -> list[str]:
    v = rng.randint(0, 9)
    deb = rng.choice(["hello", "tree", "jq", "cowsay"])
    steps = [
        f"mkdir -p src/ravn_pkg_{v} && cd src && cat > pyproject.toml <<'EOF'\n"
        f"{PYPROJECT.format(v=v).replace('ravn-bench-pkg', 'ravn-pkg-').replace('ravn_bench_pkg', 'ravn_pkg_')}"
        f"EOF\necho 'X = {v}' > ravn_pkg_{v}/__init__.py"
        f" && {py} -m pip wheel -q --no-index --no-build-isolation --no-deps -w ../dist . 2>&1 | tail -1;"
        f" {py} -c 'from setuptools import build_meta as b; print(b.build_sdist(\"../dist\"))' 2>/dev/null | tail -1;"
        " cd ..",
        f"{py} -m venv --system-site-packages venv && venv/bin/python -m pip install -q --no-index"
        f" --find-links dist ravn-pkg-{v} && venv/bin/python -c 'import ravn_pkg_{v} as m; print(m.X)'"
        f" && venv/bin/python -m pip list 2>/dev/null | tail -3 && venv/bin/python -m pip show ravn-pkg-{v}"
        f" && venv/bin/python -m pip freeze | head -3 && venv/bin/python -m pip uninstall -y -q ravn-pkg-{v}"
        f" && venv/bin/python -m pip install -q --no-index --no-build-isolation dist/*.tar.gz 2>&1 | tail -1;"
        " venv/bin/python -m pip check | tail -1; rm -rf venv",
        _have("apt-get", "dpkg-deb") + f"timeout 60 apt-get download -q {deb} >/dev/null 2>&1"
        " && dpkg-deb -c ./*.deb | head -5 && dpkg-deb -I ./*.deb | head -8 && mkdir -p x && dpkg-deb -x ./*.deb x"
        " && find x -type f | head -5; rm -rf x ./*.deb",
        f"apt-cache show {deb} 2>/dev/null | head -5; apt-cache depends bash | head -5;"
        f" apt-cache search --names-only '^{deb}' | head -3; apt-cache policy {deb} coreutils | head -6",
        "dpkg -L coreutils | head -20 | wc -l; dpkg -S /usr/bin/find; dpkg -l | grep -c '^ii';"
        " dpkg-query -W -f '${Package} ${Version}\\n' bash dpkg 2>/dev/null",
        f"{py} -m pip list --format=freeze 2>/dev/null | wc -l; {py} -m pip cache dir 2>/dev/null; true",
    ]
    head, rest = steps[:2], steps[2:]
    rng.shuffle(rest)
    return head + rest + ["rm -rf src dist"]


# ---------------------------------------------------------------------------------------------------- admin
def admin(rng: random.Random, py: str) -> list[str]:
    bits = rng.choice([2048, 3072])
    steps = [
        "ps aux --sort=-%cpu | head -8; ps -eo pid,ppid,user,comm --forest | head -20; pgrep -a sshd | head -3; true",
        _have("ss") + "ss -tanp | head -10; ss -s; ss -ltnu | head -10",
        _have("ip") + "ip -br addr; ip route | head -5; ip -s link show lo | head -6",
        _have("lsof") + "lsof -nP -i 2>/dev/null | head -10; lsof -p $$ | head -10",
        "journalctl -n 50 --no-pager 2>/dev/null | tail -5; journalctl -u ssh --since '-1h' --no-pager 2>/dev/null"
        " | tail -3; systemctl status --no-pager 2>/dev/null | head -10; systemctl list-units --type=service"
        " --no-pager 2>/dev/null | head -10; true",
        "df -h; df -i / | tail -1; du -sh /usr/share/doc 2>/dev/null; du -xh --max-depth=1 /var 2>/dev/null"
        " | sort -h | tail -5; free -m; uptime; w | head -5; true",
        f"find /etc -maxdepth 2 -name '*.conf' -newer /etc/hostname 2>/dev/null | head -10;"
        f" find /usr/bin -maxdepth 1 -size +{rng.randint(100, 900)}k | head -5; find / -xdev -maxdepth 2 -type d"
        " -name 'log*' 2>/dev/null | head -5",
        "grep -rn 'PermitRootLogin\\|Port ' /etc/ssh/sshd_config 2>/dev/null | head; grep -ril 'localhost'"
        " /etc/hosts /etc/ssh 2>/dev/null | head; grep -c . /etc/services",
        "cp /etc/hosts hosts.edit && sed -i 's/localhost/localhost.localdomain localhost/' hosts.edit"
        " && printf '/localdomain/\\ns/localdomain/example/\\nw\\nq\\n' | ed -s hosts.edit; diff /etc/hosts"
        " hosts.edit; vim -Nu NONE -es -c '%s/example/test/g' -c 'wq' hosts.edit 2>/dev/null; cat hosts.edit",
        "less -FX /etc/os-release </dev/null | head -5; less -FX hosts.edit </dev/null >/dev/null; more /etc/shells"
        " | head -3; head -5 /etc/passwd | cut -d: -f1,7; getent passwd root; getent group sudo; id; true",
        "mkdir -p bk && cp -r /etc/ssh/ssh_config /etc/hosts /etc/os-release bk/ 2>/dev/null;"
        " tar czf backup.tgz bk && tar tvzf backup.tgz && gzip -t backup.tgz && zstd -q -f bk/hosts 2>/dev/null;"
        " rm -rf bk backup.tgz",
        f"ssh-keygen -q -t rsa -b {bits} -N '' -f admkey -C admin@test && ssh-keygen -l -f admkey.pub"
        " && ssh-keygen -y -f admkey >/dev/null && rm -f admkey admkey.pub",
        f"openssl genrsa -out k.pem {bits} 2>/dev/null && openssl req -x509 -new -key k.pem -days 30 -subj"
        " /CN=test.local -out c.pem && openssl x509 -in c.pem -noout -subject -dates && openssl dgst -sha256"
        " c.pem && openssl rand -hex 16 && rm -f k.pem c.pem",
        f"uname -a; hostname; date; cat /proc/loadavg; nproc; sleep 0.{rng.randint(1, 5)}",
    ]
    rng.shuffle(steps)
    return [*steps, "rm -f hosts.edit*"]


# ---------------------------------------------------------------------------------------------------- web
def web(rng: random.Random, py: str) -> list[str]:
    port = 18000 + rng.randint(0, 9999)
    n = rng.randint(5, 25)
    url = f"http://127.0.0.1:{port}"
    return [
        "mkdir -p site/static && echo '<h1>ok</h1>' > site/index.html && seq 1 5000 > site/static/data.txt"
        " && printf '{\"ok\": true}' > site/health.json",
        f"({py} -m http.server {port} --bind 127.0.0.1 --directory site >server.log 2>&1 & echo $! > server.pid)",
        f"for i in $(seq 1 50); do curl -s -o /dev/null {url}/ && break; sleep 0.1; done",
        f"for i in $(seq 1 {n}); do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}\\n' {url}/; done | tail -2",
        f"for i in $(seq 1 {n}); do curl -s {url}/health.json >/dev/null; curl -sI {url}/static/data.txt"
        " | head -1; done | sort | uniq -c",
        _have("wget") + f"for i in $(seq 1 {max(2, n // 3)}); do wget -q -O /dev/null {url}/static/data.txt; done;"
        f" wget -q -O page.html {url}/ && wc -c page.html",
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' {url}/missing; curl -s -X POST -d 'a=1' -o /dev/null"
        f" -w '%{{http_code}}\\n' {url}/; curl -s -r 0-99 {url}/static/data.txt | wc -c",
        _have("ss") + f"ss -tn state established '( dport = :{port} or sport = :{port} )' | head -3;"
        f" ss -ltn 'sport = :{port}'",
        f"seq 1 {n} | xargs -P 4 -I{{}} curl -s -o /dev/null {url}/static/data.txt",
        "kill $(cat server.pid) 2>/dev/null; sleep 0.2; tail -3 server.log; rm -rf site page.html server.*",
    ]


# ---------------------------------------------------------------------------------------------------- cron
LOGROTATE_CONF = """{d}/logs/*.log {{
    rotate 3
    size 1
    compress
    delaycompress
    missingok
    notifempty
    create 0640 root root
    postrotate
        echo rotated >> {d}/logs/hook.out
    endscript
}}
"""


def cron(rng: random.Random, py: str) -> list[str]:
    n = rng.randint(50, 2000)
    return [
        f"mkdir -p logs jobs.d old && for f in app web worker; do seq 1 {n} | sed 's/^/event /' > logs/$f.log; done",
        _have("logrotate") + f"cat > lr.conf <<EOF\n{LOGROTATE_CONF.format(d='$PWD')}EOF\n"
        "logrotate -d -s lr.state lr.conf 2>&1 | tail -3; logrotate -f -s lr.state lr.conf; ls logs;"
        " echo more >> logs/app.log; logrotate -f -s lr.state lr.conf; cat lr.state | head -3",
        "printf '#!/bin/sh\\ndate >> \"$(dirname $0)/../cron.log\"\\n' > jobs.d/10-stamp"
        f" && printf '#!/bin/bash\\ndf -P / | tail -1 >> cron.log\\n' > jobs.d/20-disk"
        f" && printf '#!{py}\\nimport os; print(len(os.listdir(\".\")))\\n' > jobs.d/30-count"
        " && chmod 755 jobs.d/* && run-parts --test jobs.d && run-parts --report jobs.d; run-parts --list jobs.d",
        f"for i in $(seq 1 {rng.randint(3, 12)}); do touch -d '{rng.randint(8, 40)} days ago' old/f$i.tmp; done;"
        " touch old/new.tmp; find old -type f -mtime +7 -print -delete | wc -l; find old -type f | wc -l;"
        " find . -name '*.gz' -mtime +30 -delete",
        "flock -n job.lock sh -c 'echo job $$ >> cron.log; sleep 0.1' && flock -w 2 job.lock true;"
        " tail -3 cron.log 2>/dev/null; wc -l cron.log 2>/dev/null; true",
        "rm -rf logs jobs.d old lr.* job.lock cron.log",
    ]


#: kind name -> its round's shell steps
KINDS: dict[str, Callable[[random.Random, str], list[str]]] = {
    "dev": dev, "build": build, "packages": packages, "admin": admin, "web": web, "cron": cron,
}


def parse_kinds(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of kind names; raises ValueError naming an unknown kind."""
    kinds = list(KINDS) if text == "all" else [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown benign workload kind(s) {unknown or text!r}; known: {', '.join(KINDS)}")
    return kinds


def script(kind: str, rng: random.Random, py: str = sys.executable) -> str:
    """One round of ``kind`` as a bash script (``set +e``: a failing step does not stop the round)."""
    return "set +e\n" + "\n".join(KINDS[kind](rng, py)) + "\n"


def run(work: Path, kinds: Sequence[str] = tuple(KINDS), rounds: int = 1, seconds: float | None = None,
        seed: int = 0, py: str = sys.executable, timeout: float = 180.0,
        preexec_fn: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run rounds of the given kinds, each in a fresh directory under ``work`` (removed afterwards).

    Kinds alternate within a round (``kinds`` order). With ``seconds``, rounds repeat until that much time has
    passed (at least one round); otherwise ``rounds`` rounds run. ``preexec_fn`` runs in each shell before it
    starts (e.g. to enter a cgroup). Returns how many rounds of each kind ran.
    """
    kinds = list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown benign workload kind {k!r}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    done = dict.fromkeys(kinds, 0)
    end = time.monotonic() + seconds if seconds is not None else None
    r = 0
    while True:
        r += 1
        for kind in kinds:
            d = Path(tempfile.mkdtemp(prefix=f"{kind}{r}-", dir=work))
            t0 = time.monotonic()
            try:
                subprocess.run(["bash", "-c", script(kind, rng, py)], cwd=d, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn,
                               timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                if log:
                    log(f"benign: {kind} round {r} timed out after {timeout:g} s")
            finally:
                shutil.rmtree(d, ignore_errors=True)
            done[kind] += 1
            if log:
                log(f"benign: {kind} round {r} in {time.monotonic() - t0:.1f} s")
        if (r >= rounds) if end is None else (time.monotonic() >= end):
            return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", help="directory for the rounds' files (each round in a fresh subdirectory)")
    ap.add_argument("--kinds", default="all", help=f"comma-separated, or 'all': {', '.join(KINDS)}")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every kind (ignored with --seconds)")
    ap.add_argument("--seconds", type=float, default=None, help="repeat rounds for this long instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=sys.executable, help="the interpreter the workload's Python steps use")
    ap.add_argument("--verbose", action="store_true", help="a line per round on stderr")
    args = ap.parse_args(argv)
    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as exc:
        ap.error(str(exc))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    done = run(work, kinds, args.rounds, args.seconds, args.seed, args.python,
               log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    print(", ".join(f"{k}: {n} rounds" for k, n in done.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
