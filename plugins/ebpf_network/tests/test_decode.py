"""ebpf_network decoding without the kernel: ABI of struct ravn_net_event, address text, per-type fields."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
from ravn_ebpf_network.decode import MIRRORS, NetEvent, format_addr, make_decoders

from ravn_core.bpf.abi import EVENT_TYPE_IDS, RavnHdr, check_abi
from ravn_core.events import field_names
from ravn_core.testing import require


def test_abi() -> None:
    assert check_abi(MIRRORS) == []
    assert ctypes.sizeof(NetEvent) == 112


def test_format_addr() -> None:
    assert format_addr(2, bytes([127, 0, 0, 1]) + bytes(12)) == "127.0.0.1"
    assert format_addr(10, bytes(15) + b"\x01") == "::1"
    assert format_addr(10, bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])) == "::ffff:10.1.2.3"
    assert format_addr(10, bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"
    assert format_addr(0, bytes(16)) == ""


def header(v: tuple) -> dict:  # type: ignore[type-arg]
    return {"evt.type": {3: "connect", 4: "accept", 5: "close", 6: "udp_send", 7: "bind", 8: "listen"}[v[6]],
            "proc.pid": v[1]}


def record(type_name: str, **kw: object) -> bytes:
    e = NetEvent()
    e.hdr = RavnHdr(ts_ns=1, pid=42, tid=42, type=EVENT_TYPE_IDS[type_name], comm=b"x")
    for k, v in kw.items():
        if k in ("saddr", "daddr"):
            getattr(e, k)[:] = list(v.ljust(16, b"\0"))  # type: ignore[attr-defined]
        else:
            setattr(e, k, v)
    return bytes(e)


@pytest.mark.parametrize("type_name", ["connect", "accept", "close", "udp_send", "bind", "listen"])
def test_fields_per_type(type_name: str) -> None:
    dec = make_decoders(header, resolve_peers=False)[EVENT_TYPE_IDS[type_name]]
    e = dec(record(type_name, saddr=bytes([10, 0, 0, 1]), daddr=bytes([10, 0, 0, 2]), sport=1234, dport=80,
                   family=2, proto=6, fd=3, ret=-111, backlog=5))
    schema = field_names(type_name) - {"evt.source", "evt.ts", "proc.tid", "proc.ppid", "proc.uid", "proc.gid",
                                       "proc.comm", "proc.cgroup"}
    assert set(e) == schema
    assert (e["net.family"], e["net.proto"], e["net.saddr"], e["net.sport"]) == ("ipv4", "tcp", "10.0.0.1", 1234)
    if "net.daddr" in e:
        assert (e["net.daddr"], e["net.dport"]) == ("10.0.0.2", 80)
    if "net.ret" in e:
        assert e["net.ret"] == -111


def test_flags_unknown_local_and_peer() -> None:
    decs = make_decoders(header, resolve_peers=False)
    c = decs[EVENT_TYPE_IDS["connect"]](record("connect", daddr=bytes([1, 1, 1, 1]), dport=53, family=2, proto=17,
                                               flags=2))
    assert (c["net.saddr"], c["net.sport"], c["net.daddr"], c["net.proto"]) == ("", 0, "1.1.1.1", "udp")
    a = decs[EVENT_TYPE_IDS["accept"]](record("accept", saddr=bytes([127, 0, 0, 1]), sport=80, family=2, proto=6,
                                              flags=1))
    assert (a["net.daddr"], a["net.dport"], a["net.saddr"]) == ("", 0, "127.0.0.1")


def test_bpf_arg_structs_match_tracepoint_formats() -> None:
    """The hand-written tracepoint arg structs of network.bpf.c agree with the running kernel's format files."""
    fmt_dir = Path("/sys/kernel/tracing/events")
    require(fmt_dir.is_dir(), "tracefs is not mounted at /sys/kernel/tracing")
    src = (Path(__file__).parents[3] / "bpf" / "network.bpf.c").read_text()
    for event, struct_name in (("sock/inet_sock_set_state", "net_set_state_args"),
                               ("sock/sock_send_length", "net_send_length_args")):
        fmt = (fmt_dir / event / "format").read_text()
        offsets = {m[1]: int(m[2]) for m in re.finditer(r"field:[^;]*?(\w+)(?:\[\d+\])?;\s*offset:(\d+);", fmt)}
        body = src[src.index(f"struct {struct_name} {{"):]
        body = body[:body.index("};")]
        for name, off in re.findall(r"(\w+)(?:\[\d+\])?;\s*/\* (\d+) \*/", body):
            assert offsets[name] == int(off), (event, name)
    for sc in ("connect", "accept4", "bind", "listen", "sendto", "sendmsg", "sendmmsg", "socket"):
        fmt = (fmt_dir / "syscalls" / f"sys_enter_{sc}" / "format").read_text()
        offs = [int(o) for o in re.findall(r"offset:(\d+);", fmt)][4:]  # after the common fields
        assert offs[0] == 8 and offs[1:] == [16 + 8 * i for i in range(len(offs) - 1)], sc


def test_only_specific_tracepoints() -> None:
    """Specific syscall and sock tracepoints only (raw_syscalls would tax every syscall of the host)."""
    from ravn_ebpf_network.source import NetworkConfig, NetworkSource

    from ravn_core.testing import make_context

    for udp in (True, False):
        tps = NetworkSource("n", NetworkConfig(udp=udp), make_context("n")).tracepoints()
        assert tps and all(tp.startswith(("syscalls:sys_enter_", "syscalls:sys_exit_", "sock:")) for _, tp in tps)
        assert any(tp == "sock:sock_send_length" for _, tp in tps) == udp
        assert all(Path("/sys/kernel/tracing/events", *tp.split(":")).is_dir() for _, tp in tps) or \
            not Path("/sys/kernel/tracing/events").is_dir()
