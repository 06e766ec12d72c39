"""Atomic Red Team's Linux atomics against one real RAVN daemon on the default config. Needs root.

    sudo .venv/bin/python bench/atomic.py [ART_DIR] [--only T1059.004 T1003.008-1 ...] [--list] [--markdown]

ART_DIR is a checkout of Red Canary's Atomic Red Team (MIT), or its ``atomics/`` folder; the default is
``$RAVN_ATOMIC_RED_TEAM``, else ``shared/data/atomic-red-team`` beside the checkout or one of its parent folders
(a missing folder is an error naming where it was looked for). Every atomic test whose ``supported_platforms`` list
``linux`` and whose executor is ``sh`` or ``bash`` is considered; each is run or skipped, with the reason:

- safety: the test's commands are matched against the host-safety patterns below (downloads and other network
  use, reboots, kernel modules or settings, firewalls and security tools, host logs, the host's auth stack,
  process killing, resource exhaustion), and a few tests are skipped by name (``SKIP``) for what no pattern sees;
- tools: a test whose main tool is not installed is skipped (nothing can be installed without the network);
- prerequisites: each dependency's ``prereq_command`` is run (also with ``--list``: they are checks); when it
  fails, its ``get_prereq_command`` is run only when it is local (no network, no package manager), else the test
  is skipped.

Input arguments take their defaults, and ``PathToAtomicsFolder`` (and ``/tmp/AtomicRedTeam/atomics``, which some
tests' arguments name instead) is a scratch copy of the atomics folder made for the run in the home directory (the
tests write next to their files). The daemon runs ``config/ravn.yaml``
unchanged but for its state directory, the jsonl sink's path and the HTTP listener (off). Each test runs once,
through the scenario harness's runner (outside this process's ancestry), as a session leader in its own cgroup,
with a timeout. Its alerts are those whose events carry that cgroup or whose ancestry holds the test's process
(the harness's attribution), triggered while it ran. When the test ends, the runner waits until the daemon
has analyzed every event it had taken in by then (its status socket's counters; at most ``--catch-up`` seconds):
the daemon sees the whole host, and on a busy one it may run behind. After a further ``--wait`` seconds (or the
first MEDIUM alert) the cgroup's leftovers are killed, the test's ``cleanup_command`` runs, and root's shell,
cron and profile files are put back if the test left them changed.

A test is detected when an alert of at least MEDIUM is attributed to it, or the incident its alerts belong to
reached MEDIUM. Latency is from the first such alert's triggering event to the line in the jsonl sink.
Prints one line per test (technique, test, detected, level, rules, latency), the skipped tests with their
reason, and as the LAST line one JSON object: total, ran, skipped, detected, rate, levels, missed, errors
(``detected_rules`` counts the tests detected by the rules alone: their alerts, and incidents scored from
them), and the daemon's lag and losses (``catch_up_max_s``, ``events_lost`` per test: a test that lost events
is not a clean measure). A host without sudo gets a shim for the tests (we are root: it runs the command line
as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.scenarios.harness import LEVELS, Daemon  # noqa: E402  (after the sys.path line above)

ART_ENV = "RAVN_ATOMIC_RED_TEAM"
ART_REL = Path("shared") / "data" / "atomic-red-team"
SHELLS = {"sh": "/bin/sh", "bash": "/bin/bash"}

# ------------------------------------------------------------------------------------------------- safety
# (pattern, reason): the first that matches a test's command (or, for the network, its command or the way to
# get a missing prerequisite) skips it. Word boundaries keep "ssh-keygen" from matching "ssh".
_W = r"(?<![\w./-])"
NETWORK = [
    (r"https?://|\bftp://", "downloads or talks to an internet host (no network here)"),
    (_W + r"(curl|wget|git clone|whois|dig|nslookup|host|ftp|tftp|telnet|ldapsearch|ldapdomaindump)(?![\w-])",
     "network client to a remote host (no network here)"),
    (_W + r"(ssh|scp|sftp|sshpass)\s", "ssh to another host (no network, and no ssh config changes)"),
    (r"\brsync\b[^\n]*\S+@|\brsync\b[^\n]*::", "rsync to a remote host (no network here)"),
    (_W + r"(apt|apt-get|yum|dnf|pkg|brew|snap)\s+(-\S+\s+)*(update|install|remove|purge)\b",
     "installs or removes packages (no network; no package changes on this host)"),
    (_W + r"(pip3?|npm|gem|cpanm)\s+install\b|\bgo (get|install)\b", "installs from a package registry"),
    (_W + r"(aws|az|gcloud|kubectl|stratus|terraform|docker|podman)\s", "needs a cloud or container control plane"),
    (r"\b169\.254\.169\.254\b", "queries a cloud metadata service"),
    (r"for ip in \$\(seq", "sweeps a subnet with ping (no network here; minutes of timeouts)"),
    (r"/dev/tcp/(?!127\.|localhost)", "connects to a LAN host (no network here)"),
    (r"\btor\b|proxychains|cloudflared|code tunnel|devtunnel", "opens a tunnel to the internet"),
]
DANGER = [
    (r"\b(reboot|shutdown|halt|poweroff)\b|\binit [06]\b|sysrq", "reboots or shuts down the host"),
    (r"\b(insmod|rmmod|modprobe|depmod)\b", "loads or removes kernel modules"),
    (r"\b(iptables|ip6tables|nft|ufw|firewall-cmd|pfctl)\b|/etc/ufw", "changes the host firewall"),
    (r"\b(setenforce|auditctl|augenrules)\b|/etc/selinux|/etc/audit/",
     "disables or reconfigures security tooling (auditd, SELinux)"),
    (r"(systemctl|service|kill|stop|rm)\b[^\n]*(falcon|cbagent|cb\.service|mdatp|carbonblack|crowdstrike)",
     "stops a security agent"),
    (r"\bmdatp\b", "reconfigures a security agent"),
    (r"\bdate\s+(-s\s|\"?\d{8,})|timedatectl\s+set|\bhwclock\b", "sets the system clock"),
    (r"\bmount\s+(-B|--bind|--rbind)", "bind-mounts over /proc, and its cleanup does not unmount"),
    (r"sysctl\s+-w|/proc/sys/|/etc/sysctl|\bswapoff\b", "changes kernel settings"),
    (r"\b(killall|pkill)\b|\bkill\s+-\d+\s+1\b|kill -9 -1", "kills host processes"),
    (r":\(\)\s*\{|\byes\b[^\n]*>\s*/dev/null", "resource exhaustion (fork bomb or CPU load)"),
    (r"(journald|rsyslog|syslog-ng)\.conf|systemd-journald|journalctl\s+--(vacuum|rotate)",
     "changes or clears the host's logging"),
    (r"(\brm\b|truncate|unlink|shred|\bdd\b|of=|sed -i|>)[^\n]*/var/(log|mail|spool/mail)/",
     "deletes or overwrites the host's logs or mail"),
    (r"(>>?|sed -i|\bcp\b|\bmv\b|\btee\b|\bln\b)[^\n]*/etc/pam\.d|pam_\w+\.so", "changes the host's PAM auth stack"),
    (r"/etc/ssh/|\bsshd\b", "changes the host's ssh daemon"),
    (r"/etc/sudoers", "changes sudoers for every user"),
    (r"ld\.so\.preload", "host-wide preload: every process on the host would load the library"),
    (r"\bmkfs|\bdd\b[^\n]*of=/dev/(sd|nvme|vd|xvd)|\brm\s+-\w*r\w*\s+(/|/\*|~|\$HOME)(\s|$)",
     "destroys file systems or the home directory"),
    (r"\bpasswd\s+(root|\$USER|\$\(whoami\))", "changes a real user's password"),
    (r"\bumount\b|\bmount\s+-o\s+remount", "remounts host file systems"),
]
# Tests skipped by id for what the patterns cannot see: key "Txxxx[.yyy]-N" (N: the test's number in its file).
SKIP = {
    "T1003.007-2": "FreeBSD only (/proc/<pid>/map)",
    "T1056.001-6": "changes the host's PAM and ssh daemon",
    "T1489-6": "kills a host service's process",
    "T1070.004-8": "deletes a file system",
    "T1078.003-11": "gives the real nobody account a password and a shell; the cleanup leaves the password",
    "T1553.004-3": "adds a root CA to the host's trust store and has no cleanup",
    "T1543.002-2": "FreeBSD rc.d service (rc.subr, sysrc)",
}
# Checked on the command only: a cleanup may stop the units its test created.
COMMAND_ONLY = [
    (r"systemctl\s+(stop|disable|mask|kill|restart)\s|(?<![\w.-])service[ \t]+\S+[ \t]+(stop|disable|restart)",
     "stops, restarts or disables host services"),
]
# When one of these is named in the command and not installed, the test cannot do its behaviour.
TOOLS = ["nmap", "tshark", "tcpdump", "7z", "ccrypt", "sshpass", "go", "upx", "xclip", "emacs", "busybox", "xwd",
         "at", "python2", "hping3", "masscan", "zip", "unzip", "rsync", "socat", "ncat", "nc", "gpg", "openssl",
         "gcc", "perl", "cpan", "xxd", "sqlite3", "lsof", "localectl", "systemd-run", "chsh", "setcap", "ed",
         "shred", "sockstat", "useradd", "logger", "strings", "bzip2", "tar", "gzip", "ping", "crontab", "lsmod",
         "clang", "clang++", "chflags", "update-ca-trust"]
# Tools a test's own script runs without its command naming them: test id -> tool.
SCRIPT_TOOLS = {"T1568.002-1": "dig"}
# A test that writes into one of these directories needs the program that owns it (the test does not create it).
NEEDS_DIR = [("/var/spool/cron/crontabs", "cron")]
# Runs a sudo command line as root (options dropped, -u USER through runuser) when the host has no sudo.
SUDO_SHIM = """#!/bin/sh
user=""
while [ $# -gt 0 ]; do
  case "$1" in
    -u) user="$2"; shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -eq 0 ] && exit 0
if [ -n "$user" ] && [ "$user" != root ]; then exec runuser -u "$user" -- "$@"; fi
exec "$@"
"""
# Root's files that tests append to; put back after the cleanup when a test left them changed.
GUARDED = ["/root/.bashrc", "/root/.bash_profile", "/root/.profile", "/root/.bash_logout", "/root/.shrc",
           "/root/.bash_history", "/root/.sh_history", "/root/.zsh_history", "/root/.ssh/authorized_keys",
           "/etc/profile", "/etc/bash.bashrc", "/etc/crontab", "/var/spool/cron/crontabs/root", "/etc/rc.local",
           "/etc/rc.common", "/etc/environment", "/etc/shells", "/etc/profile.d/bash_completion.sh"]

# Directories some tests create in root's home (cpan's first-run config); removed when a test created them.
NEW_DIRS = ["/root/.cpan", "/root/.local/share/.cpan"]


@dataclass
class Atomic:
    technique: str
    number: int
    name: str
    executor: str
    command: str
    cleanup: str
    dependencies: list[dict[str, Any]]
    dep_executor: str
    skip: str = ""
    # results
    pid: int = 0
    cgroup_id: int = 0
    window: tuple[float, float] = (0.0, 0.0)  # when its processes ran (wall clock)
    error: str = ""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    cleanup_error: str = ""
    catch_up_s: float = 0.0  # how long the daemon took, after the test ended, to analyze the events it had taken in
    drops: int = 0  # events the daemon lost (queue full, ring buffer overrun) while the test ran

    @property
    def id(self) -> str:
        return f"{self.technique}-{self.number}"

    def medium(self, analyzers: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Alerts at MEDIUM or above (by themselves or their incident), of ``analyzers`` when given (and then
        with the incident scored from those analyzers' alerts alone)."""
        return [a for a in self.alerts if _level(a, bool(analyzers)) >= LEVELS["MEDIUM"]
                and (not analyzers or a.get("analyzer") in analyzers)]

    @property
    def detected(self) -> bool:
        return bool(self.medium())

    @property
    def level(self) -> str:
        if not self.alerts:
            return "-"
        best = max(_level(a) for a in self.alerts)
        return next(k for k, v in LEVELS.items() if v == best)

    @property
    def latency_s(self) -> float | None:
        m = self.medium()
        if not m:
            return None
        first = min(m, key=lambda a: a["_seen"])
        return max(0.0, first["_seen"] - float(first["ts"]))


INCIDENT_LEVELS: dict[str, int] = {}  # incident id -> its level, scored from its alerts in the sink
RULES_INCIDENT_LEVELS: dict[str, int] = {}  # the same from the rules' alerts alone


def _level(alert: dict[str, Any], rules_only: bool = False) -> int:
    """The alert's level, or its incident's (``Alert.incident``) when that is higher."""
    lvl = LEVELS.get(alert.get("level", "LOW"), 0)
    inc = alert.get("incident")
    levels = RULES_INCIDENT_LEVELS if rules_only else INCIDENT_LEVELS
    return max(lvl, levels.get(inc, 0)) if isinstance(inc, str) and inc else lvl


def note_incidents(daemon: Daemon) -> None:
    """Scores each incident from all its alerts in the sink, as the core does (ravn_core.threat.incident_score:
    each (analyzer, rule) once at its best score): the level it reached, which a threat update does not report
    when another open incident already holds the host at that level."""
    from ravn_core.components import Alert
    from ravn_core.config import ThreatConfig
    from ravn_core.threat import Contribution, incident_score, level_for, tactic_of

    cfg = ThreatConfig()
    by_incident: dict[str, dict[tuple[str, str], Contribution]] = {}
    for a in daemon.alerts():
        inc = a.get("incident")
        if not isinstance(inc, str) or not inc:
            continue
        rules = by_incident.setdefault(inc, {})
        key = (str(a.get("analyzer")), str(a.get("rule")))
        score = float(a.get("score", 0))
        if key not in rules or score > rules[key].score:
            ts = float(a.get("ts", 0))
            rules[key] = Contribution(key[0], key[1], score, tactic_of(a.get("tags") or []),
                                      bool(a.get("corroboration")), ts, ts, Alert(key[0], key[1], int(score), ""))
    for inc, rules in by_incident.items():
        INCIDENT_LEVELS[inc] = LEVELS[level_for(incident_score(rules.values(), cfg), cfg)]
        own = [c for c in rules.values() if c.analyzer == "analyzer_rules"]
        RULES_INCIDENT_LEVELS[inc] = LEVELS[level_for(incident_score(own, cfg), cfg)] if own else 0


# ------------------------------------------------------------------------------------------------- loading
def default_art() -> Path | None:
    """``$RAVN_ATOMIC_RED_TEAM``, else ``shared/data/atomic-red-team`` next to the checkout or next to one of its
    parent folders (a git worktree under ``wt/<name>`` finds the folder its main checkout sits beside)."""
    env = os.environ.get(ART_ENV)
    if env:
        return Path(env)
    return next((d / ART_REL for d in REPO.parents if (d / ART_REL).is_dir()), None)


def _substitute(text: str, args: dict[str, Any], atomics: Path) -> str:
    for key, spec in args.items():
        default = (spec or {}).get("default")
        text = text.replace("#{" + key + "}", "" if default is None else str(default))
    # some tests' arguments name Atomic Red Team's usual Linux location instead of PathToAtomicsFolder
    return text.replace("PathToAtomicsFolder", str(atomics)).replace("/tmp/AtomicRedTeam/atomics", str(atomics))


def load(atomics: Path) -> list[Atomic]:
    out: list[Atomic] = []
    for path in sorted(atomics.glob("T*/T*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SystemExit(f"{path}: not valid YAML: {exc}") from exc
        for number, test in enumerate(doc.get("atomic_tests") or [], 1):
            ex = test.get("executor") or {}
            if "linux" not in (test.get("supported_platforms") or []) or ex.get("name") not in SHELLS:
                continue
            args = test.get("input_arguments") or {}
            deps = [{k: _substitute(str(v), args, atomics) if isinstance(v, str) else v for k, v in d.items()}
                    for d in test.get("dependencies") or []]
            out.append(Atomic(doc["attack_technique"], number, test["name"], ex["name"],
                              _substitute(ex.get("command") or "", args, atomics),
                              _substitute(ex.get("cleanup_command") or "", args, atomics), deps,
                              test.get("dependency_executor_name") or ex["name"]))
    return out


def _network(text: str) -> str:
    return next((reason for pat, reason in NETWORK if re.search(pat, text)), "")


def unsafe(t: Atomic) -> str:
    """Why ``t`` must not run on this host, or "" when its commands are safe."""
    if t.id in SKIP:
        return SKIP[t.id]
    if re.search(r"freebsd|macos", t.name, re.I) and not re.search(r"linux", t.name, re.I):
        return "written for FreeBSD/macOS"
    for text in (t.command, t.cleanup):
        reason = _network(text) or next((r for pat, r in DANGER if re.search(pat, text)), "")
        if reason:
            return reason
    reason = next((r for pat, r in COMMAND_ONLY if re.search(pat, t.command)), "")
    if reason:
        return reason
    for tool in [*TOOLS, SCRIPT_TOOLS.get(t.id, "")]:
        if tool and (tool == SCRIPT_TOOLS.get(t.id) or re.search(_W + re.escape(tool) + r"(?![\w+-])", t.command)) \
                and not shutil.which(tool):
            return f"needs {tool}, which is not installed (no network to install it)"
    for d, owner in NEEDS_DIR:
        if d in t.command and not os.path.isdir(d):
            return f"writes into {d}, which does not exist ({owner} is not installed)"
    return ""


def _sh(executor: str, script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHELLS.get(executor, "/bin/sh"), "-c", script], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", timeout=timeout,
                          start_new_session=True)


def prerequisites(t: Atomic, cwd: Path, fetch: bool) -> str:
    """Checks each dependency (runs its prereq_command); fetches a missing one when that is local and ``fetch``.
    Returns why the test cannot run, or ""."""
    for dep in t.dependencies:
        desc = " ".join(str(dep.get("description", "")).split())[:90]
        check = str(dep.get("prereq_command") or "")
        if not check.strip():
            continue
        try:
            if _sh(t.dep_executor, check, cwd, 20).returncode == 0:
                continue
        except subprocess.TimeoutExpired:
            return f"prerequisite check timed out: {desc}"
        get = str(dep.get("get_prereq_command") or "")
        why = _network(get) or next((r for pat, r in DANGER if re.search(pat, get)), "")
        if not get.strip() or why or re.search(r"must install|install\b.*manually|exit 1", get, re.I):
            return f"prerequisite not met: {desc}" + (f" ({why})" if why else "")
        if not fetch:
            continue  # --list: it would be fetched locally
        try:
            _sh(t.dep_executor, get, cwd, 120)
            if _sh(t.dep_executor, check, cwd, 20).returncode != 0:
                return f"prerequisite not met after its local set-up: {desc}"
        except subprocess.TimeoutExpired:
            return f"prerequisite set-up timed out: {desc}"
    return ""


def _restore_exec_bits(root: Path) -> None:
    """The data folder keeps no executable bits: programs (ELF files, #! scripts) get them back in the copy."""
    for f in root.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                head = fh.read(4)
            if head == b"\x7fELF" or head[:2] == b"#!":
                f.chmod(0o755)


def select(tests: list[Atomic], only: list[str] | None) -> list[Atomic]:
    if not only:
        return tests
    return [t for t in tests if any(t.id == o or t.technique == o for o in only)]


# ------------------------------------------------------------------------------------------------- running
def default_config(base: Path) -> dict[str, Any]:
    """config/ravn.yaml as shipped, with the state dir and the jsonl sink under ``base`` and no HTTP listener
    (other daemons on this host may hold its port)."""
    cfg = yaml.safe_load((REPO / "config" / "ravn.yaml").read_text())
    cfg["ravn"]["state_dir"] = str(base / "state")
    cfg["ravn"]["http_listen"] = ""
    for sink in cfg.get("sinks") or []:
        if sink.get("plugin") == "jsonl":
            sink["path"] = str(base / "alerts.jsonl")
    return cfg


def _restore(before: dict[str, Any]) -> list[str]:
    """Puts back each guarded file that differs from ``before`` (content, mode, or now a symlink/missing/new)."""
    changed = []
    for p, old in before.items():
        now = _snapshot_one(p)
        if now == old:
            continue
        changed.append(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
        if old is not None:
            data, mode, uid, gid = old
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o7777)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chown(p, uid, gid)
            os.chmod(p, mode & 0o7777)
    return changed


def _snapshot_one(p: str) -> tuple[bytes, int, int, int] | str | None:
    try:
        if os.path.islink(p):
            return "symlink"
        st = os.stat(p)
        return (Path(p).read_bytes(), st.st_mode, st.st_uid, st.st_gid)
    except OSError:
        return None


def attributed(daemon: Daemon, t: Atomic) -> list[dict[str, Any]]:
    """The harness's attribution (the test's cgroup, or its process in the alert's ancestry or events), kept to
    alerts whose triggering event happened while the test's processes ran: pids and cgroup ids are reused
    over a run of hundreds of tests on a busy host."""
    lo, hi = t.window
    note_incidents(daemon)
    return [a for a in daemon.attributed(t.pid, t.cgroup_id) if lo - 0.5 <= float(a.get("ts", 0)) <= hi + 0.5]


def daemon_counters(daemon: Daemon) -> dict[str, int]:
    """The daemon's event counters from its status socket: taken in by the sources, lost (queue full, ring buffer
    overruns, publish failures), analyzed, and alerts still queued for the sinks."""
    from ravn_core.status import StatusReader

    st = StatusReader(str(daemon.base / "state"), timeout_s=10.0).read()["stats"]
    return {"accepted": int(st.get("accepted", 0)), "dropped": int(st.get("dropped", 0)),
            "kernel_drops": sum(int(s.get("kernel_drops", 0)) for s in (st.get("sources") or {}).values()),
            "publish_lost": int(st.get("publish_lost", 0)), "analyzed": int(st.get("analyzed", 0)),
            "pending": int(st.get("ingress_depth", 0)) + int(st.get("sink_depth", 0))}


def lost(c: dict[str, int]) -> int:
    return c["dropped"] + c["kernel_drops"] + c["publish_lost"]


def catch_up(daemon: Daemon, limit_s: float) -> tuple[float, dict[str, int]]:
    """Waits until the daemon has analyzed every event it had taken in when the test ended, and its sinks' queue
    is empty: a daemon behind a busy host (other jobs' events count too) must not turn late alerts into misses.
    Returns the seconds waited (``limit_s`` at most) and the counters then."""
    time.sleep(0.3)  # the test's last events leave the ring buffers (the sources poll every few ms)
    t0 = time.time()
    c = daemon_counters(daemon)
    target = c["accepted"] - c["dropped"] - c["publish_lost"]
    while time.time() - t0 < limit_s:
        c = daemon_counters(daemon)
        if c["analyzed"] >= target - c["publish_lost"] and c["pending"] == 0:
            break
        time.sleep(0.1)
    return time.time() - t0, c


def run_one(daemon: Daemon, t: Atomic, timeout_s: float, wait_s: float, catch_up_s: float = 120.0) -> None:
    work = daemon.base / "work" / t.id
    work.mkdir(mode=0o755)
    before = {p: _snapshot_one(p) for p in GUARDED}
    absent = [d for d in NEW_DIRS if not os.path.lexists(d)]
    cgroup, cgroup_id = daemon._cgroup(t.id)  # the harness's per-run cgroup (attribution by proc.cgroup)
    try:
        before_counters = daemon_counters(daemon)
        pid, started, ended, error = daemon.command([SHELLS[t.executor], "-c", t.command], cgroup, str(work),
                                                     timeout_s)
        t.pid, t.error, t.cgroup_id = pid, error, cgroup_id
        t.window = (started, ended + wait_s)  # events after the test's end + wait_s are not its own
        t.catch_up_s, after = catch_up(daemon, catch_up_s)
        t.drops = lost(after) - lost(before_counters)
        deadline = time.time() + wait_s
        while True:
            t.alerts = attributed(daemon, t)
            if t.detected or time.time() > deadline:
                break
            time.sleep(0.1)
    finally:
        if cgroup is not None:  # what the test left running in the background
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.kill").write_text("1")
        if t.cleanup.strip():
            try:
                res = _sh(t.executor, t.cleanup, work, 60)
                if res.returncode:
                    t.cleanup_error = f"exit {res.returncode}: {res.stderr.strip()[-200:]}"
            except subprocess.TimeoutExpired:
                t.cleanup_error = "cleanup timed out"
        t.restored = _restore({p: v for p, v in before.items() if not isinstance(v, str)})
        for d in absent:
            if os.path.lexists(d):
                shutil.rmtree(d, ignore_errors=True)
                t.restored.append(f"{d} (removed)")
        daemon._remove_cgroup(cgroup)
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- report
def _rules(t: Atomic) -> str:
    med = sorted({f"{a['rule']}" for a in t.medium()})
    low = sorted({a["rule"] for a in t.alerts} - set(med))
    return ", ".join(med + [f"({r})" for r in low]) or "-"


def table(rows: list[list[str]], cols: list[str], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    return ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
            *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("art", nargs="?", type=Path,
                    help=f"Atomic Red Team folder or its atomics/ (default: ${ART_ENV}, else {ART_REL} beside the "
                         "checkout or one of its parent folders)")
    ap.add_argument("--only", nargs="*", help="techniques (T1059.004) or tests (T1059.004-9)")
    ap.add_argument("--list", action="store_true", help="print the selection and skip reasons; run nothing")
    ap.add_argument("--markdown", action="store_true", help="tables as Markdown (docs/DETECTIONS.md)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a test may run before it is killed")
    ap.add_argument("--wait", type=float, default=3.0,
                    help="seconds to wait for alerts once the daemon has analyzed a test's events")
    ap.add_argument("--catch-up", type=float, default=120.0,
                    help="seconds the daemon may take, after a test ends, to analyze the events it took in")
    args = ap.parse_args()

    src = args.art or default_art()
    if src is None:
        ap.error(f"no Atomic Red Team folder: pass it, or set ${ART_ENV}, or put it at {ART_REL} beside the checkout "
                 f"({REPO}) or one of its parent folders (github:redcanaryco/atomic-red-team, MIT)")
    src = src / "atomics" if (src / "atomics").is_dir() else src
    if not src.is_dir():
        ap.error(f"{src}: Atomic Red Team folder not found" + (f" (from ${ART_ENV})" if not args.art else ""))
    if not any(src.glob("T*/T*.yaml")):
        ap.error(f"{src}: no atomics/T*/T*.yaml here")
    if os.geteuid() != 0:
        ap.error("needs root (real probes, and the tests change the host)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still cleans up (finally blocks)
    t0 = time.time()
    # where Atomic Red Team's own runner keeps it (~/AtomicRedTeam), not /tmp: a copy there would put every
    # program of the atomics under the exec-from-/tmp rules
    scratch = Path(tempfile.mkdtemp(prefix="AtomicRedTeam-ravn-", dir=Path.home()))
    atomics = scratch / "atomics"
    shutil.copytree(src, atomics)
    subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=True)
    _restore_exec_bits(atomics)
    if not shutil.which("sudo"):  # we are root: sudo would run its command as root; without it, run it directly
        (scratch / "bin").mkdir()
        (scratch / "bin" / "sudo").write_text(SUDO_SHIM)
        (scratch / "bin" / "sudo").chmod(0o755)
        os.environ["PATH"] = f"{scratch / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    tests = select(load(atomics), args.only)
    if not tests:
        ap.error(f"no linux sh/bash atomic matches {args.only}")
    for t in tests:
        t.skip = unsafe(t) or prerequisites(t, scratch, fetch=False)
    to_run = [t for t in tests if not t.skip]

    rc = None
    if not args.list and to_run:
        daemon = Daemon(make_config=default_config)
        try:
            daemon.warm_up()
            for i, t in enumerate(to_run, 1):
                t.skip = prerequisites(t, scratch, fetch=True)  # fetch local prerequisites just before the test
                if t.skip:
                    continue
                run_one(daemon, t, args.timeout, args.wait, args.catch_up)
                print(f"  [{i}/{len(to_run)}] {t.id}: {'detected' if t.detected else 'missed'} {t.level}"
                      + (f" (daemon behind {t.catch_up_s:.1f} s)" if t.catch_up_s >= 1.0 else "")
                      + (f" ({t.drops} events lost)" if t.drops else "")
                      + (f" (error: {t.error.splitlines()[-1][:80]})" if t.error else "")
                      + (f" (restored {', '.join(t.restored)})" if t.restored else ""), file=sys.stderr)
            time.sleep(max(args.wait, 5.0))  # late verdicts (the model scores a process at its exit)
            for t in to_run:
                if t.pid:
                    t.alerts = attributed(daemon, t)
        finally:
            rc = daemon.stop()
            daemon.cleanup()
    shutil.rmtree(scratch, ignore_errors=True)

    ran = [t for t in tests if not t.skip and (t.pid or args.list)]
    skipped = [t for t in tests if t.skip]
    if args.list:
        print(f"{len(ran)} to run, {len(skipped)} skipped of {len(tests)} linux sh/bash atomics")
        for line in table([[t.technique, t.id, t.name] for t in ran], ["technique", "test", "name"], args.markdown):
            print(line)
    else:
        rows = [[t.technique, t.id, t.name, "yes" if t.detected else "NO", t.level, _rules(t),
                 f"{t.latency_s * 1000:.0f} ms" if t.latency_s is not None else "-"] for t in ran]
        for line in table(rows, ["technique", "test", "name", "detected", "level", "rules", "latency"],
                          args.markdown):
            print(line)
    print(f"\nskipped ({len(skipped)}):")
    for line in table([[t.id, t.name, t.skip] for t in skipped], ["test", "name", "reason"], args.markdown):
        print(line)

    levels = {k: sum(1 for t in ran if t.level == k) for k in [*LEVELS, "-"]}
    summary: dict[str, Any] = {
        "bench": "atomic", "total": len(tests), "ran": len(ran), "skipped": len(skipped),
        "detected": sum(t.detected for t in ran) if not args.list else None,
        # without the model's own alerts: what the rules (and incidents built on them) detect
        "detected_rules": sum(bool(t.medium(("analyzer_rules",))) for t in ran) if not args.list else None,
        "rate": round(sum(t.detected for t in ran) / len(ran), 3) if ran and not args.list else None,
        "levels": {("NONE" if k == "-" else k): v for k, v in levels.items()} if not args.list else None,
        "missed": [t.id for t in ran if not t.detected] if not args.list else None,
        "test_errors": {t.id: t.error.strip().splitlines()[-1][:160] for t in ran if t.error.strip()},
        "cleanup_errors": {t.id: t.cleanup_error for t in ran if t.cleanup_error},
        "restored": {t.id: t.restored for t in ran if t.restored},
        # the daemon's lag behind the host and its losses: a run where tests lost events is not a clean measure
        "catch_up_max_s": round(max((t.catch_up_s for t in ran), default=0.0), 1),
        "catch_up_total_s": round(sum(t.catch_up_s for t in ran), 1),
        "events_lost": {t.id: t.drops for t in ran if t.drops},
        "daemon_exit": rc, "total_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
