"""No kernel needed: ABI of the mirrors, decoders on hand-built records, config and plugin registration."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest
from pydantic import ValidationError
from ravn_ebpf_security.config import ALL_EVENTS, SecurityConfig
from ravn_ebpf_security.decode import (
    CONSTANTS,
    EXEC_CWD,
    EXEC_EXE,
    EXEC_MIN_SIZE,
    MIRRORS,
    ExecEvent,
    ExeLookups,
    MountEvent,
    SecEvent,
    decoders,
)
from ravn_ebpf_security.names import BPF_COMMANDS, CAPABILITIES, PTRACE_REQUESTS
from ravn_ebpf_security.source import SecuritySource

from ravn_core.bpf.abi import EVENT_TYPE_IDS, check_abi
from ravn_core.events import EVENT_TYPES, field_names


def test_abi_matches_c_header() -> None:
    assert check_abi(MIRRORS, enum_constants=CONSTANTS) == []


def test_every_security_event_type_has_a_decoder() -> None:
    ours = {t for t, et in EVENT_TYPES.items() if et.source == "ebpf_security"}
    assert ours == set(ALL_EVENTS)
    assert set(decoders(lambda v: {}, {})) == {EVENT_TYPE_IDS[t] for t in ours}


def _header(v: tuple) -> dict:  # type: ignore[type-arg]
    return {"evt.type": v[6], "proc.pid": v[1]}


def _hdr(type_id: int) -> dict:  # type: ignore[type-arg]
    return {"ts_ns": 1, "pid": 42, "tid": 43, "ppid": 1, "uid": 0, "gid": 0, "type": type_id, "cgroup_id": 7,
            "comm": b"x"}


def _fill(obj: ctypes.Structure, type_id: int) -> None:
    for k, v in _hdr(type_id).items():
        setattr(obj.hdr, k, v)


def test_exec_decoder() -> None:
    e = ExecEvent()
    _fill(e, EVENT_TYPE_IDS["exec"])
    e.ret, e.flags, e.argc, e.fd = -2, 0x3, 3, 4
    e.filename = b"/dev/fd/4"
    argv = bytearray(16 * 128)
    for i, a in enumerate([b"a", b"bb", b"c c"]):
        argv[i * 128:i * 128 + len(a)] = a
    argv[3 * 128:3 * 128 + 5] = b"stale"  # beyond argc: ignored
    ctypes.memmove(ctypes.addressof(e) + ExecEvent.argv.offset, bytes(argv), len(argv))
    ev = decoders(_header, {})[EVENT_TYPE_IDS["exec"]](bytes(e))
    assert ev["exec.filename"] == "/dev/fd/4"
    assert ev["exec.argv"] == ["a", "bb", "c c"]
    assert ev["exec.ret"] == -2
    assert ev["exec.memfd"] is True
    assert ev["exec.argv_truncated"] is False
    e.flags = 0x4  # RAVN_EXEC_ARGV_TRUNC
    trunc = decoders(_header, {})[EVENT_TYPE_IDS["exec"]](bytes(e))
    assert trunc["exec.argv_truncated"] is True and trunc["exec.memfd"] is False
    ld = {"exec.ld_preload", "exec.ld_library_path", "exec.ld_audit"}  # present only when the environment sets them
    assert set(ev) - {"evt.type", "proc.pid"} == {f.name for f in EVENT_TYPES["exec"].fields} - ld
    # RAVN_EXEC_LD_ENV: the loader variables the kernel found, by name; a short record (no env) has none
    e.flags, e.envc = 0x10, 2
    env = bytearray(3 * 128)
    for i, a in enumerate([b"LD_AUDIT=/tmp/a.so", b"LD_PRELOAD=/dev/shm/x.so", b"LD_LIBRARY_PATH=stale"]):
        env[i * 128:i * 128 + len(a)] = a
    ctypes.memmove(ctypes.addressof(e) + ExecEvent.env.offset, bytes(env), len(env))
    full = decoders(_header, {})[EVENT_TYPE_IDS["exec"]](bytes(e))
    assert (full["exec.ld_preload"], full["exec.ld_audit"]) == ("/dev/shm/x.so", "/tmp/a.so")
    assert "exec.ld_library_path" not in full  # beyond envc
    short = decoders(_header, {})[EVENT_TYPE_IDS["exec"]](bytes(e)[:ExecEvent.envc.offset])
    assert not ld & set(short)


@pytest.mark.parametrize(("etype", "args", "ret", "nr", "nargs", "s", "expect"), [
    ("fork", (10, 10), 0, 0, 2, b"", {"fork.child_pid": 10, "fork.child_tid": 10}),
    ("exit", (256,), 0, 0, 1, b"", {"exit.code": 256}),
    ("cred", (65534, 65534, 65534), 0, 117, 3, b"",
     {"cred.call": "setresuid", "cred.args": [65534, 65534, 65534], "cred.ret": 0}),
    ("ptrace", (16, 99, 0, 0), -1, 101, 4, b"",
     {"ptrace.request": 16, "ptrace.request_name": "PTRACE_ATTACH", "ptrace.target": 99, "ptrace.ret": -1}),
    ("module", (-1, 0), 0, 176, 2, b"nf_tables",
     {"module.call": "delete_module", "module.name": "nf_tables", "module.fd": -1}),
    ("capable", (21,), -1, 0, 1, b"", {"cap.id": 21, "cap.name": "CAP_SYS_ADMIN", "cap.ret": -1}),
    ("memfd_create", (1,), 5, 319, 1, b"x", {"memfd.name": "x", "memfd.flags": 1, "memfd.fd": 5}),
    ("bpf", (5,), 0, 321, 1, b"", {"bpf.cmd": 5, "bpf.cmd_name": "BPF_PROG_LOAD"}),
    ("unshare", (0x20000,), 0, 272, 1, b"", {"ns.flags": 0x20000, "ns.ret": 0}),
    ("setns", (3, 0x4000000), 0, 308, 2, b"", {"ns.fd": 3, "ns.flags": 0x4000000, "ns.ret": 0}),
    ("dup", (3, 1, 0), 1, 33, 3, b"", {"dup.oldfd": 3, "dup.newfd": 1, "dup.ret": 1}),
    ("setsid", (), 4242, 112, 0, b"", {"setsid.sid": 4242}),
    ("process_vm", (4242, 1, 2), 64, 310, 3, b"",
     {"process_vm.call": "process_vm_readv", "process_vm.target": 4242, "process_vm.ret": 64}),
    ("process_vm", (4242, 1, 1), -1, 311, 3, b"",
     {"process_vm.call": "process_vm_writev", "process_vm.target": 4242, "process_vm.ret": -1}),
    ("prctl", (15,), 0, 157, 1, b"kworker/0:1",
     {"prctl.option": "PR_SET_NAME", "prctl.name": "kworker/0:1", "prctl.arg": 0, "prctl.ret": 0}),
    ("socket", (17, 0x80003, 768), 5, 41, 3, b"", {"socket.family": "AF_PACKET", "socket.type": "SOCK_RAW",
                                                   "socket.protocol": 768, "socket.ret": 5}),
    ("prctl", (35, 8), -22, 157, 2, b"", {"prctl.option": "PR_SET_MM", "prctl.name": "", "prctl.arg": 8,
                                         "prctl.ret": -22}),
])
def test_sec_decoders(etype: str, args: tuple[int, ...], ret: int, nr: int, nargs: int, s: bytes,
                      expect: dict) -> None:  # type: ignore[type-arg]
    e = SecEvent()
    _fill(e, EVENT_TYPE_IDS[etype])
    for i, a in enumerate(args):
        e.args[i] = a
    e.args[5] = 12345  # garbage past nargs never shows
    e.ret, e.nr, e.nargs, e.str = ret, nr, nargs, s
    ev = decoders(_header, {})[EVENT_TYPE_IDS[etype]](bytes(e))
    for k, v in expect.items():
        assert ev[k] == v, k
    assert set(ev) - {"evt.type", "proc.pid"} == field_names(etype) - {
        f for f in field_names(etype) if f.startswith(("evt.", "proc."))}


def test_mount_decoder() -> None:
    e = MountEvent()
    _fill(e, EVENT_TYPE_IDS["mount"])
    e.ret, e.flags, e.source, e.target, e.fstype = -16, 0x44000, b"none", b"/mnt/x", b"tmpfs"
    ev = decoders(_header, {})[EVENT_TYPE_IDS["mount"]](bytes(e))
    assert (ev["mount.source"], ev["mount.target"], ev["mount.fstype"], ev["mount.flags"], ev["mount.ret"]) == (
        "none", "/mnt/x", "tmpfs", 0x44000, -16)


def test_exec_records_are_cut_after_the_last_argv_slot() -> None:
    e = ExecEvent()
    _fill(e, EVENT_TYPE_IDS["exec"])
    e.argc = 1
    e.filename = b"/bin/sh"
    ctypes.memmove(ctypes.addressof(e) + ExecEvent.argv.offset, b"sh", 2)
    decode = decoders(_header, {})[EVENT_TYPE_IDS["exec"]]
    cut = bytes(e)[:EXEC_MIN_SIZE + 128]
    assert decode(cut)["exec.argv"] == ["sh"]
    # the base hands decoders memoryview slices although its Decoder alias says bytes
    assert decode(memoryview(cut))["exec.argv"] == ["sh"]  # type: ignore[arg-type]
    assert decode(bytes(e)[:EXEC_MIN_SIZE])["exec.filename"] == "/bin/sh"  # argc 0 (argv empty) still decodes
    with pytest.raises(ValueError):
        decode(b"\0" * 100)
    with pytest.raises(struct.error):
        decoders(_header, {})[EVENT_TYPE_IDS["fork"]](b"\0" * 100)


def test_name_tables() -> None:
    assert CAPABILITIES[21] == "CAP_SYS_ADMIN" and CAPABILITIES[40] == "CAP_CHECKPOINT_RESTORE"
    assert BPF_COMMANDS[5] == "BPF_PROG_LOAD" and BPF_COMMANDS[28] == "BPF_LINK_CREATE"
    assert PTRACE_REQUESTS[16] == "PTRACE_ATTACH" and PTRACE_REQUESTS[0x4206] == "PTRACE_SEIZE"


# ------------------------------------------------------------------------------------------------------ config
def _source(cfg: SecurityConfig) -> SecuritySource:
    from ravn_core.testing import make_context

    return SecuritySource("ebpf_security", cfg, make_context("sec"))


def test_default_config_is_cheap() -> None:
    """Default: only specific tracepoints; no raw_syscalls hook (it costs every syscall)."""
    tps = [tp for _fn, tp in _source(SecurityConfig()).tracepoints()]
    assert not [tp for tp in tps if tp.startswith("raw_syscalls:")]
    assert len(tps) == len(set(tps))
    assert "capability:cap_capable" in tps and "sched:sched_process_exec" in tps


def test_module_hook_raw_adds_raw_syscalls() -> None:
    tps = [tp for _fn, tp in _source(SecurityConfig(module_hook="raw")).tracepoints()]
    assert "raw_syscalls:sys_enter" in tps
    tps = [tp for _fn, tp in _source(SecurityConfig(module_hook="raw", events=["exec"])).tracepoints()]
    assert "raw_syscalls:sys_enter" not in tps


def test_events_select_tracepoints() -> None:
    tps = {tp for _fn, tp in _source(SecurityConfig(events=["dup"])).tracepoints()}
    assert tps == {"syscalls:sys_enter_dup2", "syscalls:sys_exit_dup2", "syscalls:sys_enter_dup3",
                   "syscalls:sys_exit_dup3"}


def test_cflags_carry_masks() -> None:
    flags = _source(SecurityConfig(capabilities=["CAP_SYS_ADMIN", "CAP_NET_RAW"], bpf_commands=["BPF_PROG_LOAD"],
                                   capable_report="denied", events=["exec", "capable"])).probe_cflags()
    assert f"-DSEC_CAP_MASK={(1 << 21) | (1 << 13):#x}ULL" in flags
    assert f"-DSEC_BPF_CMD_MASK={1 << 5:#x}ULL" in flags
    assert "-DSEC_CAP_MODE=1" in flags and "-DSEC_FORK=0" in flags and "-DSEC_EXEC=1" in flags
    assert "-DSEC_EXEC_ENOENT=1" in flags and "-DSEC_CAP_SKIP_VM=1" in flags
    flags = _source(SecurityConfig(exec_enoent=False, capable_skip_overcommit=False)).probe_cflags()
    assert "-DSEC_EXEC_ENOENT=0" in flags and "-DSEC_CAP_SKIP_VM=0" in flags


@pytest.mark.parametrize("bad", [{"capabilities": ["CAP_NOPE"]}, {"bpf_commands": ["BPF_NOPE"]},
                                 {"module_hook": "kprobe"}, {"events": ["open"]}, {"nonsense": 1},
                                 {"filters": {"exclude_comms": ["x" * 16]}}])
def test_config_rejects(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        SecurityConfig(**bad)


def test_plugin_registers_through_the_host(ravn_host) -> None:  # type: ignore[no-untyped-def]
    """The entry point is found, and its hook registers the source with its config model."""
    reg = ravn_host.sources.get("ebpf_security")
    assert reg is not None
    assert reg.factory is SecuritySource and reg.config_model is SecurityConfig
    assert reg.distribution.startswith("ravn-ebpf-security")


def _exec_record(pid: int, filename: bytes, fd: int = -1, flags: int = 0) -> bytes:
    e = ExecEvent()
    _fill(e, EVENT_TYPE_IDS["exec"])
    e.hdr.pid, e.filename, e.fd, e.flags = pid, filename, fd, flags
    return bytes(e)[:EXEC_MIN_SIZE]


def test_relative_exec_filename_resolved_against_cwd_or_dirfd(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    counters: dict[str, int] = {}
    decode = decoders(_header, counters)[EVENT_TYPE_IDS["exec"]]
    me = os.getpid()
    ev = decode(_exec_record(me, b"./payload"))
    assert ev["exec.filename"] == f"{tmp_path}/payload"
    assert ev["exec.exe"] == os.readlink("/proc/self/exe")  # the running program, read when decoded
    assert decode(_exec_record(me, b"sub/../x"))["exec.filename"] == f"{tmp_path}/x"
    dirfd = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:  # execveat(dirfd, "y", ...)
        assert decode(_exec_record(me, b"y", fd=dirfd))["exec.filename"] == f"{tmp_path}/sub/y"
    finally:
        os.close(dirfd)
    assert counters == {"exec_relative_resolved": 3, "exec_relative_from_kernel_cwd": 0, "exec_relative_unresolved": 0,
                        "exec_exe_from_kernel": 0}
    # absolute names, fd execs and an empty name are left as they are (normalised), and not counted
    assert decode(_exec_record(me, b"/bin/true"))["exec.filename"] == "/bin/true"
    assert decode(_exec_record(me, b"/usr/..//dev/shm/./x"))["exec.filename"] == "/dev/shm/x"
    assert decode(_exec_record(me, b"/home/u/.local/bin/x"))["exec.filename"] == "/home/u/.local/bin/x"
    assert decode(_exec_record(me, b"", fd=3, flags=0x1))["exec.filename"] == ""
    assert counters["exec_relative_resolved"] == 3
    # a process gone before its record is decoded keeps the name as passed, counted
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    ev = decode(_exec_record(gone, b"./payload"))
    assert (ev["exec.filename"], ev["exec.exe"]) == ("./payload", "")
    assert counters["exec_relative_unresolved"] == 1
    # ... unless the kernel joined the name with the cwd it kept (RAVN_EXEC_CWD): normalised, counted apart
    ev = decode(_exec_record(gone, b"/tmp/./payload", flags=EXEC_CWD))
    assert ev["exec.filename"] == "/tmp/payload"
    assert counters == {"exec_relative_resolved": 3, "exec_relative_from_kernel_cwd": 1, "exec_relative_unresolved": 1,
                        "exec_exe_from_kernel": 0}


def test_exe_is_read_when_the_batch_is_decoded_unless_the_process_exited_in_it() -> None:
    counters: dict[str, int] = {}
    exes = ExeLookups(counters)
    dec = decoders(_header, counters, exes)
    me = os.getpid()
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    ok = dec[EVENT_TYPE_IDS["exec"]](_exec_record(me, b"/bin/true"))
    failed = bytearray(_exec_record(me, b"/bin/true"))
    struct.pack_into("<i", failed, ExecEvent.ret.offset, -13)
    failed_ev = dec[EVENT_TYPE_IDS["exec"]](bytes(failed))
    twice = [dec[EVENT_TYPE_IDS["exec"]](_exec_record(gone, b"/bin/true")) for _ in range(2)]
    assert ok["exec.exe"] == "" and exes.waiting.keys() == {me, gone}  # not read yet; the failure never is
    exit_rec = SecEvent()
    _fill(exit_rec, EVENT_TYPE_IDS["exit"])
    exit_rec.hdr.pid, exit_rec.args[0] = gone, 7 << 8
    assert dec[EVENT_TYPE_IDS["exit"]](bytes(exit_rec))["exit.code"] == 7 << 8
    exes.resolve()
    assert ok["exec.exe"] == os.readlink("/proc/self/exe")
    assert [e["exec.exe"] for e in twice] == ["", ""]  # its exit came in the batch: not read
    assert failed_ev["exec.exe"] == "" and exes.waiting == {}
    assert (counters["exec_exe_read"], counters["exec_exe_exited"]) == (1, 2)
    exes.resolve()  # nothing waiting: nothing read
    assert counters["exec_exe_read"] == 1


def test_exec_record_cut_short_or_too_long() -> None:
    """The kernel sends only the argv slots in use: slots counted in argc but not in the record read as empty
    (as the zeros of a full record would); a record longer than the struct is an error."""
    e = ExecEvent()
    _fill(e, EVENT_TYPE_IDS["exec"])
    e.argc, e.filename = 3, b"/bin/x"
    for i, a in enumerate([b"a", b"bb"]):
        ctypes.memmove(ctypes.addressof(e) + ExecEvent.argv.offset + i * 128, a, len(a))
    decode = decoders(_header, {})[EVENT_TYPE_IDS["exec"]]
    ev = decode(memoryview(bytes(e)[:EXEC_MIN_SIZE + 2 * 128]))
    assert ev["exec.argv"] == ["a", "bb", ""] and ev["exec.filename"] == "/bin/x"
    assert decode(bytes(e)[:EXEC_MIN_SIZE])["exec.argv"] == ["", "", ""]
    with pytest.raises(ValueError, match="exec record of"):
        decode(bytes(e) + b"\0" * 8)
    with pytest.raises(ValueError, match="exec record of"):
        decode(bytes(e)[:EXEC_MIN_SIZE - 1])


def test_exe_walked_by_the_kernel_is_taken_as_it_is() -> None:
    counters: dict[str, int] = {}
    exes = ExeLookups(counters)
    decode = decoders(_header, counters, exes)[EVENT_TYPE_IDS["exec"]]
    e = ExecEvent()
    _fill(e, EVENT_TYPE_IDS["exec"])
    e.hdr.pid, e.filename, e.exe, e.flags = os.getpid(), b"/bin/x", b"/usr/bin/x (deleted)", EXEC_EXE
    ev = decode(bytes(e)[:EXEC_MIN_SIZE])
    assert ev["exec.exe"] == "/usr/bin/x (deleted)" and exes.waiting == {}  # no /proc read waits for it
    assert counters["exec_exe_from_kernel"] == 1
    e.flags = 0  # not walked: read from /proc when the batch is decoded
    ev = decode(bytes(e)[:EXEC_MIN_SIZE])
    exes.resolve()
    assert ev["exec.exe"] == os.readlink("/proc/self/exe") and counters["exec_exe_from_kernel"] == 1
