"""ebpf_file without the kernel: ABI, prefix semantics, config validation, decoding and user-space resolution."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import pytest
from pydantic import ValidationError
from ravn_ebpf_file.config import (
    CLASS_EXCLUDE,
    CLASS_EXEC_GRANT,
    CLASS_READ,
    CLASS_WRITE,
    DEFAULT_READ,
    FileConfig,
    PathRules,
)
from ravn_ebpf_file.decode import (
    DROP,
    F_ALL,
    F_FD,
    F_MATCHED,
    F_RELATIVE,
    F_SETID,
    MIRRORS,
    FileEvent,
    make_decoders,
)

from ravn_core.bpf.abi import EVENT_TYPE_IDS, RavnHdr, check_abi
from ravn_core.bpf.paths import AT_FDCWD, normalize_path
from ravn_core.events import field_names


def test_abi() -> None:
    assert check_abi(MIRRORS) == []
    assert ctypes.sizeof(FileEvent) == 616


def test_defaults_validate_and_explain_themselves() -> None:
    cfg = FileConfig()
    rules = PathRules.from_config(cfg)
    assert set(rules.roots) == {"/home/", "/sys/fs/cgroup/", "/proc/"}
    assert rules.classify("/proc/4242/mem") == CLASS_READ  # another process's memory
    assert rules.classify("/proc/4242/comm") == rules.classify("/proc/self/comm") == CLASS_WRITE  # renames
    assert rules.classify("/proc/4242/stat") == 0  # what ps reads all the time
    assert {"shadow", ".ssh", "id_rsa", "mem"} <= set(rules.names)  # relative read opens worth resolving
    assert rules.classify("/etc/shadow") == CLASS_READ
    assert rules.classify("/etc/sudoers.d/90-cloud") == CLASS_READ
    assert rules.classify("/etc/passwd") == CLASS_WRITE
    assert rules.classify("/etc/ld.so.cache") == CLASS_WRITE  # so the loader's read is not reported
    assert rules.classify("/usr/lib/x86_64-linux-gnu/libc.so.6") == CLASS_WRITE
    assert rules.classify("/home/alice/.ssh/authorized_keys") == CLASS_READ
    assert rules.classify("/home/alice/.bash_history") == CLASS_READ
    assert rules.classify("/home/alice/src/x.c") == 0
    assert rules.classify("/sys/fs/cgroup/memory/release_agent") == CLASS_WRITE
    assert rules.classify("/tmp/x") == CLASS_EXEC_GRANT  # only a chmod leaving an execute bit is reported there
    assert rules.wanted("chmod", "/tmp/x", None, write=True, report_all=False, mode=0o755)
    assert not rules.wanted("chmod", "/tmp/x", None, write=True, report_all=False, mode=0o644)
    assert not rules.wanted("open", "/tmp/x", None, write=True, report_all=False)
    assert not rules.wanted("unlink", "/tmp/x", None, write=True, report_all=False)
    assert not rules.wanted("open", "/usr/lib/libc.so.6", None, write=False, report_all=False)
    assert rules.wanted("open", "/usr/lib/libc.so.6", None, write=True, report_all=False)
    assert rules.wanted("open", "/etc/shadow", None, write=False, report_all=False)
    assert "shadow" in rules.names and ".bash_history" in rules.names
    assert cfg.report_all == ["rename"]
    assert all(p.startswith("/") for p in DEFAULT_READ)
    for field in FileConfig.model_fields.values():
        assert field.description


def test_most_specific_prefix_wins() -> None:
    rules = PathRules.from_config(FileConfig(read_prefixes=["/srv/keys/"], write_prefixes=["/srv/"],
                                             exclude_prefixes=["/srv/cache/", "/srv/keys/public/"]))
    assert rules.classify("/srv/app.conf") == CLASS_WRITE
    assert rules.classify("/srv/cache/x") == CLASS_EXCLUDE
    assert rules.classify("/srv/keys/id") == CLASS_READ
    assert rules.classify("/srv/keys/public/id.pub") == CLASS_EXCLUDE
    assert not rules.wanted("unlink", "/srv/cache/x", None, True, False)
    # a change touching an excluded and a watched path is reported (rename out of the cache into /srv)
    assert rules.wanted("rename", "/srv/cache/x", "/srv/x", True, False)


def test_wildcard_is_one_whole_component() -> None:
    rules = PathRules.from_config(FileConfig(read_prefixes=["/home/*/.ssh/"], write_prefixes=[]))
    assert rules.classify("/home/a/.ssh/id") == CLASS_READ
    assert rules.classify("/home/a/b/.ssh/id") == 0
    assert rules.classify("/home/.ssh/id") == 0
    assert rules.classify("/home/" + "x" * 63 + "/.ssh/id") == CLASS_READ  # the longest component scanned
    assert rules.classify("/home/" + "x" * 64 + "/.ssh/id") == 0


@pytest.mark.parametrize(("prefixes", "message"), [
    (["etc/"], "absolute"),
    (["/a/*/b/*/"], "at most one"),
    (["/a*/b"], "whole path component"),
    (["/" + "r" * 40 + "/*/x"], "at most 30 bytes"),
    (["/a/*/", "/b/*/", "/c/*/", "/d/*/", "/e/*/"], "at most 4"),
    (["/" + "x" * 300], "longer than"),
])
def test_bad_prefixes_are_config_errors(prefixes: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FileConfig(read_prefixes=prefixes)
    with pytest.raises(ValidationError):
        FileConfig(report_all=["write"])  # type: ignore[list-item]


def header(v: tuple[Any, ...]) -> dict[str, Any]:
    names = {i: n for n, i in EVENT_TYPE_IDS.items()}
    return {"evt.type": names[v[6]], "proc.pid": v[1]}


def record(type_name: str, pid: int = 1, **kw: Any) -> bytes:
    e = FileEvent()
    e.hdr = RavnHdr(ts_ns=1, pid=pid, tid=pid, type=EVENT_TYPE_IDS[type_name], comm=b"x")
    e.dirfd = e.newdirfd = AT_FDCWD
    for k, v in kw.items():
        setattr(e, k, v.encode() if isinstance(v, str) else v)
    return bytes(e)


def decoders(**cfg: Any) -> tuple[dict[int, Any], dict[str, int]]:
    config = FileConfig(**cfg)
    counters: dict[str, int] = {}
    return make_decoders(header, PathRules.from_config(config), frozenset(config.report_all), counters), counters


COMMON = {"evt.source", "evt.ts", "proc.tid", "proc.ppid", "proc.uid", "proc.gid", "proc.comm", "proc.cgroup"}


@pytest.mark.parametrize("type_name", ["open", "unlink", "rename", "chmod", "chown", "link", "symlink", "truncate"])
def test_fields_per_type(type_name: str) -> None:
    decs, _ = decoders()
    e = decs[EVENT_TYPE_IDS[type_name]](record(type_name, path="/etc/x", newpath="/etc/y", why=F_MATCHED, ret=-2,
                                               flags=os.O_WRONLY, mode=0o644, uid=0xFFFFFFFF, gid=5, size=9))
    assert set(e) == field_names(type_name) - COMMON
    assert (e["file.path"], e["file.ret"]) == ("/etc/x", -2)
    if type_name == "chown":
        assert (e["file.uid"], e["file.gid"]) == (-1, 5)
    if type_name == "open":
        assert (e["file.flags"], e["file.mode"], e["file.write"]) == (os.O_WRONLY, 0o644, True)
    if "file.newpath" in e:
        assert e["file.newpath"] == "/etc/y"


def test_relative_paths_resolved_and_filtered_in_user_space(tmp_path: Any) -> None:
    decs, counters = decoders(write_prefixes=[f"{tmp_path}/w/"], read_prefixes=[])
    dec = decs[EVENT_TYPE_IDS["open"]]
    cwd = os.getcwd()
    os.makedirs(tmp_path / "w", exist_ok=True)
    try:
        os.chdir(tmp_path / "w")
        e = dec(record("open", pid=os.getpid(), path="sub/../f", why=F_RELATIVE, flags=os.O_WRONLY))
        assert e["file.path"] == f"{tmp_path}/w/f"
        os.chdir(tmp_path)
        assert dec(record("open", pid=os.getpid(), path="f", why=F_RELATIVE, flags=os.O_WRONLY)) is DROP
        # read open of a write-only prefix: dropped too
        os.chdir(tmp_path / "w")
        assert dec(record("open", pid=os.getpid(), path="f", why=F_RELATIVE, flags=os.O_RDONLY)) is DROP
    finally:
        os.chdir(cwd)
    # a dirfd instead of the cwd
    fd = os.open(tmp_path / "w", os.O_RDONLY)
    try:
        e = dec(record("open", pid=os.getpid(), path="g", why=F_RELATIVE, flags=os.O_CREAT, dirfd=fd))
        assert e["file.path"] == f"{tmp_path}/w/g"
    finally:
        os.close(fd)
    # a process that is gone cannot be resolved: dropped and counted (unless reported for another reason)
    assert dec(record("open", pid=2**22 + 1, path="x", why=F_RELATIVE, flags=os.O_WRONLY)) is DROP
    rename = decs[EVENT_TYPE_IDS["rename"]]
    e = rename(record("rename", pid=2**22 + 1, path="a", newpath="b", why=F_RELATIVE | F_ALL))
    assert (e["file.path"], e["file.newpath"]) == ("a", "b")
    assert counters["relative_resolved"] == 4 and counters["relative_unresolved"] == 2
    assert counters["relative_filtered"] == 2


def test_fchmod_path_from_proc(tmp_path: Any) -> None:
    decs, _ = decoders()
    p = tmp_path / "bin"
    p.write_text("")
    fd = os.open(p, os.O_RDONLY)
    try:
        e = decs[EVENT_TYPE_IDS["chmod"]](record("chmod", pid=os.getpid(), why=F_SETID | F_FD, dirfd=fd,
                                                 mode=0o4755))
    finally:
        os.close(fd)
    assert (e["file.path"], e["file.mode"]) == (str(p), 0o4755)


def test_short_records_without_newpath() -> None:
    """The kernel sends one-path events without the newpath field (RAVN_FILE_SHORT_SIZE bytes)."""
    from ravn_ebpf_file.decode import SHORT_SIZE

    assert SHORT_SIZE == 360
    decs, _ = decoders()
    full = record("unlink", path="/etc/x", why=F_MATCHED, ret=0)
    e = decs[EVENT_TYPE_IDS["unlink"]](memoryview(full)[:SHORT_SIZE])
    assert (e["file.path"], e["file.ret"]) == ("/etc/x", 0)


def test_only_specific_tracepoints() -> None:
    """Specific syscall tracepoints only (raw_syscalls would tax every syscall of the host)."""
    from pathlib import Path

    from ravn_ebpf_file.source import FileSource

    from ravn_core.testing import make_context

    tps = FileSource("f", FileConfig(), make_context("f")).tracepoints()
    assert len(tps) == 50 and all(tp.startswith(("syscalls:sys_enter_", "syscalls:sys_exit_")) for _, tp in tps)
    assert all(Path("/sys/kernel/tracing/events", *tp.split(":")).is_dir() for _, tp in tps) or \
        not Path("/sys/kernel/tracing/events").is_dir()
    assert ("ravn_file_ioctl_enter", "syscalls:sys_enter_ioctl") in tps  # chattr: ioctl filtered by command
    off = FileSource("f", FileConfig(report_chattr=False), make_context("f")).tracepoints()
    assert len(off) == 48 and not any("ioctl" in tp for _, tp in off)


@pytest.mark.parametrize(("raw", "normal"), [
    ("/etc//shadow", "/etc/shadow"), ("//etc/shadow", "/etc/shadow"), ("///etc/./shadow", "/etc/shadow"),
    ("/tmp/../etc/shadow", "/etc/shadow"), ("/../../etc/shadow", "/etc/shadow"), ("/etc/ssh/.", "/etc/ssh"),
    ("/root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
])
def test_normalize(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal
