"""ebpf_file on the real kernel: a child (tests/filechild.py, /usr/bin/python3) works in temp dirs given as prefixes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ravn_ebpf_file.config import FileConfig
from ravn_ebpf_file.source import FileSource

from ravn_core.bpf import testing as bpf_testing
from ravn_core.bpf.paths import seed_cwds
from ravn_core.bpf.testing import collect_until_quiet, fresh_cgroup, run_child
from ravn_core.events import field_names
from ravn_core.testing import make_context, require_kernel

pytestmark = pytest.mark.kernel

CHILD = str(Path(__file__).with_name("filechild.py"))
NOBODY = 65534


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = tmp_path_factory.mktemp("ravnfile")
    for d in ("watch", "watch/skip", "secret", "outside", "grant"):
        (b / d).mkdir()
    (b / "secret" / "key").write_text("k")
    (b / "secret" / "cred").write_text("c")
    (b / "watch" / "owned").write_text("o")
    os.chmod(b, 0o755)
    for d in ("watch", "outside"):
        os.chmod(b / d, 0o777)
    return b


@pytest.fixture(scope="module")
def bystander() -> Iterator[int]:
    """An unrelated process used as ravn_pid, so the test process and its children are not excluded."""
    with bpf_testing.bystander() as pid:
        yield pid


def config(base: Path, **kw: Any) -> FileConfig:
    return FileConfig.model_validate({
        "read_prefixes": [f"{base}/secret/", f"{base}/secret/cred"],
        "write_prefixes": [f"{base}/watch/"],
        "exclude_prefixes": [f"{base}/watch/skip/"],
        "exec_grant_prefixes": [f"{base}/grant/"],
        **kw,
    })


@pytest.fixture(scope="module")
def probe(base: Path, bystander: int) -> Iterator[FileSource]:
    require_kernel()
    src = FileSource("ebpf_file", config(base, filters={"exclude_comms": ["ravn-fexcl"]}),
                     make_context("file", ravn_pid=bystander))
    src.start()
    try:
        yield src
    finally:
        src.stop()


def test_every_operation_decoded(probe: FileSource, base: Path) -> None:
    with fresh_cgroup() as cg:
        truth, events = run_child(probe, CHILD, "main", str(base), cgroup=str(cg))
        assert truth["cgroup"] == os.stat(cg).st_ino != 1
    w, s, o = f"{base}/watch", f"{base}/secret", f"{base}/outside"
    for e in events:
        assert (e["proc.pid"], e["proc.tid"], e["proc.ppid"]) == (truth["pid"], truth["pid"], os.getpid())
        assert (e["proc.uid"], e["proc.gid"], e["proc.comm"]) == (0, 0, "python3")
        assert e["proc.cgroup"] == truth["cgroup"]
        assert e["evt.source"] == "ebpf_file" and abs(e["evt.ts"] / 1e9 - time.time()) < 30
        assert set(e) == field_names(e["evt.type"]), e
    got = [(e["evt.type"], e["file.path"], e.get("file.newpath")) for e in events]
    cloexec = os.O_CLOEXEC
    assert got == [
        ("open", f"{s}/key", None),
        ("open", f"{w}/new", None),
        ("chmod", f"{w}/new", None),
        ("chmod", f"{o}/x", None),
        ("chmod", f"{o}/fx", None),
        ("chown", f"{w}/new", None),
        ("rename", f"{o}/x", f"{o}/x2"),
        ("rename", f"{w}/new", f"{w}/new2"),
        ("link", f"{w}/new2", f"{o}/hard"),
        ("symlink", f"{s}/key", f"{o}/sym"),
        ("truncate", f"{w}/new2", None),
        ("unlink", f"{w}/new2", None),
        ("unlink", f"{w}/dir", None),
        ("open", f"{w}/viaopen", None),
        ("open", f"{w}/viaopenat2", None),
        ("open", f"{w}/viacreat", None),
        ("open", f"{s}/missing", None),
        ("open", f"{w}/rel", None),
        ("open", f"{s}/cred", None),
    ], got
    ev = events
    # opens: flags, mode, result, write intent
    assert (ev[0]["file.flags"], ev[0]["file.mode"], ev[0]["file.ret"], ev[0]["file.write"]) == \
        (os.O_RDONLY | cloexec, 0, truth["read_fd"], False)
    assert (ev[1]["file.flags"], ev[1]["file.mode"], ev[1]["file.ret"], ev[1]["file.write"]) == \
        (truth["write_flags"], 0o640, truth["write_fd"], True)
    assert (ev[13]["file.flags"], ev[13]["file.mode"], ev[13]["file.ret"]) == \
        (os.O_WRONLY | os.O_CREAT, 0o600, truth["open2_fd"])
    assert (ev[14]["file.flags"], ev[14]["file.mode"], ev[14]["file.ret"]) == \
        (os.O_RDWR | os.O_CREAT, 0o600, truth["openat2_fd"])
    assert (ev[15]["file.flags"], ev[15]["file.mode"], ev[15]["file.ret"]) == \
        (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640, truth["creat_fd"])
    assert ev[16]["file.ret"] == truth["missing_ret"] == -2
    assert ev[17]["file.write"] and not ev[18]["file.write"]
    # chmod: the watched one, then setuid and setgid (fchmod: path read from /proc/<pid>/fd) outside prefixes
    assert [e["file.mode"] for e in ev[2:5]] == [0o600, 0o4755, 0o2755]
    assert stat.S_ISUID & ev[3]["file.mode"] and stat.S_ISGID & ev[4]["file.mode"]
    assert (ev[5]["file.uid"], ev[5]["file.gid"]) == (1, -1)
    assert ev[10]["file.size"] == 3
    assert all(e["file.ret"] == 0 for e in ev[2:13])


def test_paths_with_dot_components_are_normalised(probe: FileSource, base: Path) -> None:
    """/etc//shadow and /tmp/../etc/shadow must not slip past the prefixes: the kernel sends paths that are not
    normal to user space, which normalises them and applies the prefixes again (both ways: a path that matched
    only as passed is dropped, one that was excluded only as passed is reported)."""
    before = dict(probe.counters)
    _, events = run_child(probe, CHILD, "unnormal", str(base))
    w, s = f"{base}/watch", f"{base}/secret"
    assert [(e["evt.type"], e["file.path"], e["file.write"] if e["evt.type"] == "open" else None)
            for e in events] == [
        ("open", f"{s}/key", False),
        ("open", f"{s}/key", False),
        ("open", f"{w}/z", True),
        ("open", f"{w}/u", True),
        ("unlink", f"{w}/u", None),
    ]
    delta = {k: probe.counters[k] - before[k] for k in ("normalized", "normalized_filtered")}
    assert delta == {"normalized": 6, "normalized_filtered": 2}


def test_world_writable_chmod_and_relative_reads(probe: FileSource, base: Path) -> None:
    """chmod 777 / fchmod 666 are reported wherever the file is (not a sticky 1777, not 755); relative read opens
    are resolved when their last component or their parent directory is a read prefix's last component
    (issue 13: `cd /etc; cat ./shadow`, `cat .ssh/id_rsa` from $HOME, `cat ../etc/shadow`)."""
    _, events = run_child(probe, CHILD, "perm_relative", str(base))
    o, s = f"{base}/outside", f"{base}/secret"
    got = [(e["evt.type"], e["file.path"], e.get("file.mode")) for e in events]
    assert got == [
        ("chmod", f"{o}/ww", 0o777),
        ("chmod", f"{o}/fww", 0o666),
        ("open", f"{s}/cred", 0),
        ("open", f"{s}/key", 0),
        ("open", f"{s}/key", 0),
    ], got
    assert [e["file.ret"] for e in events[:2]] == [0, 0] and all(e["file.ret"] >= 0 for e in events[2:])
    assert oct(os.stat(f"{o}/ww").st_mode & 0o7777) == oct(0o777)  # ground truth of the mode reported


def test_relative_read_of_a_process_gone_before_decoding(probe: FileSource, base: Path) -> None:
    """`cd <dir> && cat ./key` is over long before its record is decoded, so /proc/<pid>/cwd is gone: the cwd the
    kernel kept (the shell's absolute chdir, inherited at fork; or seeded from /proc at start) resolves it."""
    s = f"{base}/secret"
    probe.poll(0)
    before = dict(probe.counters)
    subprocess.run(["sh", "-c", f"cd {s} && cat ./cred >/dev/null"], check=True)
    # started before a (re)seed, in the watched directory's parent: its cwd comes from /proc, not from a chdir
    waiting = subprocess.Popen(["sh", "-c", "read x && cat secret/key >/dev/null"], cwd=base, stdin=subprocess.PIPE)
    time.sleep(0.2)
    assert probe.bpf is not None
    seed_cwds(probe.bpf["ravn_file_cwd"])
    waiting.communicate(b"\n", timeout=10)
    time.sleep(0.3)  # both processes are gone before the first poll
    events = [e for e in collect_until_quiet(probe) if e["evt.type"] == "open" and e["file.path"].startswith(s)]
    assert sorted(e["file.path"] for e in events) == [f"{s}/cred", f"{s}/key"], (
        {k: v - before.get(k, 0) for k, v in probe.counters.items()})
    assert all(e["proc.comm"] == "cat" for e in events)
    assert probe.counters["relative_from_kernel_cwd"] - before.get("relative_from_kernel_cwd", 0) >= 2, (
        {k: v - before.get(k, 0) for k, v in probe.counters.items()})


def test_chmod_leaving_an_execute_bit_under_an_exec_grant_prefix(probe: FileSource, base: Path) -> None:
    """`cd <temp dir> && chmod 755 x && ./x`: only the chmods that leave an execute bit are reported there, the
    relative one resolved after chmod is gone; nothing else under the prefix is."""
    g = f"{base}/grant"
    probe.poll(0)
    subprocess.run(["sh", "-c", f"cd {g} && echo '#!/bin/sh' > x && chmod 755 x && chmod 644 x && chmod u+x {g}/x"
                    " && rm x"], check=True)
    time.sleep(0.3)  # chmod is gone before the first poll
    got = [(e["proc.comm"], e["evt.type"], e["file.path"], e["file.mode"]) for e in collect_until_quiet(probe)
           if e["file.path"].startswith(g)]
    assert got == [("chmod", "chmod", f"{g}/x", 0o755), ("chmod", "chmod", f"{g}/x", 0o744)], got


def test_result_and_uid_of_a_denied_change(probe: FileSource, base: Path) -> None:
    truth, events = run_child(probe, CHILD, "chown_denied", str(base), user=NOBODY)
    (e,) = events
    assert (e["evt.type"], e["file.path"], e["file.uid"], e["file.gid"]) == ("chown", f"{base}/watch/owned", 0, 0)
    assert e["file.ret"] == truth["ret"] and truth["ret"] in (-1, -13)  # EPERM, or EACCES on the way there
    assert (e["proc.uid"], e["proc.gid"]) == (NOBODY, NOBODY) == (truth["uid"], truth["gid"])


def test_excluded_comm_reports_nothing(probe: FileSource, base: Path) -> None:
    _, excluded = run_child(probe, CHILD, "write", str(base), "ravn-fexcl")
    truth, seen = run_child(probe, CHILD, "write", str(base))
    assert excluded == []
    assert [(e["evt.type"], e["file.path"]) for e in seen] == [("open", f"{base}/watch/by-{truth['pid']}")]


def test_nothing_attached_after_stop(base: Path, bystander: int) -> None:
    require_kernel()
    src = FileSource("ebpf_file", config(base, relative_paths=False, report_all=[]),
                     make_context("file", ravn_pid=bystander))
    src.start()
    try:
        assert src.bpf is not None
        ids = src.program_ids()
        h = src.health()
        assert h.state == "ok" and h.counters["programs_attached"] == h.counters["programs_expected"] == 52
        assert len(ids) == 6  # enter, exit, ioctl enter and exit + the base's fork/exit programs
    finally:
        src.stop()
    assert src.bpf is None and src.health().state == "stopped"
    shown = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    assert not {p["id"] for p in json.loads(shown)} & set(ids)
    run_child(None, CHILD, "write", str(base))
    assert src.poll(50) == []


def test_wildcard_component_and_kernel_agrees_with_path_rules(bystander: int) -> None:
    """'/root/*/.ssh/' in the kernel matches exactly what PathRules.classify says (one whole component)."""
    require_kernel()
    import tempfile

    root = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: the part before '*' is at most 30 bytes
    try:
        cfg = FileConfig(read_prefixes=[f"{root}/*/.ssh/"], write_prefixes=[f"{root}/"], report_all=[])
        src = FileSource("ebpf_file", cfg, make_context("file", ravn_pid=bystander))
        paths = [f"{root}/alice/.ssh/id", f"{root}/alice/notes", f"{root}/a/b/.ssh/k", f"{root}/bob/.sshx/k",
                 f"{root}/{'c' * 70}/.ssh/k", f"{root}/.ssh/k"]
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            Path(p).write_text("x")
        src.start()
        try:
            for p in paths:  # read opens, from this (not excluded) process
                os.close(os.open(p, os.O_RDONLY))
            os.close(os.open(f"{root}/alice/notes", os.O_WRONLY))
            events = [e for e in collect_until_quiet(src) if e["proc.pid"] == os.getpid()]
        finally:
            src.stop()
        got = [(e["file.path"], e["file.write"]) for e in events if e["file.path"].startswith(root)]
        assert got == [(f"{root}/alice/.ssh/id", False), (f"{root}/alice/notes", True)]
        rules = src.rules
        expected = [p for p in paths if rules.wanted("open", p, None, False, False)]
        assert expected == [f"{root}/alice/.ssh/id"]
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_suffixes_report_task_memory_environ_and_python_hooks(probe: FileSource, base: Path) -> None:
    """The default suffixes: /proc/<pid>/task/<tid>/mem and .../environ (two wildcards no prefix holds) and
    /proc/<pid>/environ are read opens reported wherever the path is; .pth, usercustomize.py and sitecustomize.py
    are reported when opened for writing only. Paths shorter than the 16-byte window (/proc/1/environ,
    /tmp/<x>.pth) take the kernel's shifted compare; what the kernel sent agrees with PathRules. An exec-grant
    prefix (a temp dir, where only chmods +x are reported) does not hide them: a venv's hook under it is reported,
    another file written there is not."""
    sleeper = subprocess.Popen(["sleep", "30"])
    site = base / "outside" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    grant_site = base / "grant" / "env" / "lib" / "python3.11" / "site-packages"
    grant_site.mkdir(parents=True, exist_ok=True)
    short = Path(f"/tmp/{os.getpid() % 1000}.pth")
    try:
        pid = sleeper.pid
        reads = [f"/proc/{pid}/task/{pid}/mem", f"/proc/{pid}/task/{pid}/environ", f"/proc/{pid}/environ",
                 "/proc/1/environ"]
        writes = [f"{site}/evil.pth", f"{site}/usercustomize.py", f"{site}/sitecustomize.py", str(short),
                  f"{grant_site}/atomic_hook.pth"]
        quiet = [f"/proc/{pid}/status", f"/proc/{pid}/task/{pid}/stat", f"{site}/evil.pth",  # a read of a .pth
                 f"{site}/x.pthx"]
        quiet_writes = [f"{grant_site}/mod.py", f"{base}/grant/run.sh"]
        probe.poll(0)
        for p in writes + quiet_writes:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        for p in reads + quiet:
            if not os.path.exists(p):
                Path(p).write_text("")
            try:
                os.close(os.open(p, os.O_RDONLY))
            except PermissionError:  # /proc/1/environ may be refused (ptrace access mode): reported all the same
                assert p == "/proc/1/environ"
        events = [e for e in collect_until_quiet(probe) if e["proc.pid"] == os.getpid() and e["evt.type"] == "open"]
    finally:
        sleeper.kill()
        sleeper.wait()
        short.unlink(missing_ok=True)
    got = [(e["file.path"], e["file.write"]) for e in events]
    assert got == [(p, True) for p in writes] + [(p, False) for p in reads], got
    assert all(e["file.ret"] >= 0 for e in events if e["file.path"] != "/proc/1/environ")
    rules = probe.rules
    assert [p for p in reads + quiet if rules.wanted("open", p, None, False, False)] == reads
    assert all(rules.wanted("open", p, None, True, False) for p in writes)
    assert not any(rules.wanted("open", p, None, True, False) for p in quiet_writes)


def test_chattr_ioctls_reported_by_fd_others_dropped(probe: FileSource, tmp_path: Path) -> None:
    """chattr +i / -i / +a (FS_IOC_SETFLAGS), the same through FS_IOC_FSSETXATTR by a program of its own, on a file
    outside every prefix: one chattr event each, the path from the fd, the attribute word and the result as the
    kernel returned them; the GETFLAGS/FSGETXATTR reads and other ioctls (a tty's) are not reported."""
    import fcntl
    import struct

    f = tmp_path / "attr"
    f.write_text("x")
    probe.poll(0)
    chattr_pids = []
    for flag in ("+i", "-i", "+a", "-a"):
        p = subprocess.Popen(["chattr", flag, str(f)])
        chattr_pids.append(p.pid)
        assert p.wait() == 0
    fd = os.open(f, os.O_RDONLY)
    try:
        raw = bytearray(28)
        fcntl.ioctl(fd, 0x801C581F, raw)  # FS_IOC_FSGETXATTR
        xflags = struct.unpack_from("I", raw)[0]
        struct.pack_into("I", raw, 0, xflags | 0x8)  # FS_XFLAG_IMMUTABLE
        fcntl.ioctl(fd, 0x401C5820, bytes(raw))  # FS_IOC_FSSETXATTR
        struct.pack_into("I", raw, 0, xflags)
        fcntl.ioctl(fd, 0x401C5820, bytes(raw))
        try:
            fcntl.ioctl(fd, 0x5401, bytes(64))  # TCGETS on a regular file: ENOTTY, not reported
        except OSError:
            pass
        collected = collect_until_quiet(probe)  # while the fd is open: the decoder reads its path
    finally:
        os.close(fd)
    # chattr has exited by the time its record is decoded, so its fd names nothing any more ("": the exec event's
    # argv holds the path); this process still has its fd open
    events = [e for e in collected if e["evt.type"] == "chattr" and e["file.path"] in ("", str(f))
              and e["proc.pid"] in (os.getpid(), *chattr_pids)]
    got = [(e["file.immutable"], e["file.append_only"], e["file.ret"]) for e in events]
    assert got == [(True, False, 0), (False, False, 0), (False, True, 0), (False, False, 0),
                   (True, False, 0), (False, False, 0)], got
    assert [e["proc.comm"] for e in events[:4]] == ["chattr"] * 4
    assert all(e["file.attr_flags"] & 0x10 for e in events if e["file.immutable"])
    assert [e["file.path"] for e in events[4:]] == [str(f)] * 2 and [e["proc.pid"] for e in events[4:]] == [
        os.getpid()] * 2
    assert not os.popen(f"lsattr {f}").read().split()[0].count("i")  # ground truth: left mutable
