"""ebpf_network on the real kernel: loopback only, children run by /usr/bin/python3 (tests/netchild.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ravn_ebpf_network.source import NetworkConfig, NetworkSource

from ravn_core.bpf import testing as bpf_testing
from ravn_core.bpf.testing import CHILD_PYTHON, collect_until_quiet, fresh_cgroup, run_child
from ravn_core.events import field_names
from ravn_core.testing import make_context, require_kernel

pytestmark = pytest.mark.kernel

CHILD = str(Path(__file__).with_name("netchild.py"))
NOBODY = 65534


@pytest.fixture(scope="module")
def bystander() -> Iterator[int]:
    """An unrelated process used as ravn_pid, so the test process and its children are not excluded."""
    with bpf_testing.bystander() as pid:
        yield pid


@pytest.fixture(scope="module")
def probe(bystander: int) -> Iterator[NetworkSource]:
    require_kernel()
    src = NetworkSource("ebpf_network", NetworkConfig(), make_context("net", ravn_pid=bystander))
    src.start()
    try:
        yield src
    finally:
        src.stop()


def by_type(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(e["evt.type"], []).append(e)
    return out


def check_common(e: dict[str, Any], truth: dict[str, Any]) -> None:
    assert e["proc.pid"] == truth["pid"] and e["proc.tid"] == truth["pid"]
    assert e["proc.ppid"] == truth["ppid"] == os.getpid()
    assert e["proc.uid"] == truth["uid"] and e["proc.gid"] == truth["uid"]
    assert e["proc.comm"] == "python3"
    assert e["proc.cgroup"] == truth["cgroup"]
    assert e["evt.source"] == "ebpf_network"
    assert abs(e["evt.ts"] / 1e9 - time.time()) < 30
    assert set(e) == field_names(e["evt.type"]), e  # exactly the schema's fields


@pytest.mark.parametrize(("scenario", "family", "loop"), [("tcp4", "ipv4", "127.0.0.1"), ("tcp6", "ipv6", "::1")])
def test_tcp_connect_accept_close_bind_listen(probe: NetworkSource, scenario: str, family: str, loop: str) -> None:
    truth, events = run_child(probe, CHILD, scenario, user=NOBODY)
    t = truth["tcp"]
    ev = by_type(events)
    for e in events:
        check_common(e, truth)
        assert e["net.family"] == family and e["net.proto"] == "tcp"
    port, cport = t["port"], t["client"][1]

    (bind,) = ev["bind"]
    assert (bind["net.saddr"], bind["net.sport"], bind["net.fd"], bind["net.ret"]) == (loop, 0, t["listen_fd"], 0)
    (listen,) = ev["listen"]
    assert (listen["net.saddr"], listen["net.sport"], listen["net.fd"], listen["net.backlog"]) == \
        (loop, port, t["listen_fd"], 7)
    (conn,) = ev["connect"]
    assert (conn["net.saddr"], conn["net.sport"], conn["net.daddr"], conn["net.dport"]) == (loop, cport, loop, port)
    assert (conn["net.fd"], conn["net.ret"]) == (t["client_fd"], 0)
    (acc,) = ev["accept"]
    assert t["peer"] == [loop, cport]
    assert (acc["net.saddr"], acc["net.sport"], acc["net.daddr"], acc["net.dport"]) == (loop, port, loop, cport)
    assert acc["net.fd"] == t["accepted_fd"]
    closes = sorted((e["net.sport"], e["net.dport"]) for e in ev["close"])
    assert closes == sorted([(cport, port), (port, cport)])  # client side, then server side (local first)
    assert all(e["net.saddr"] == loop and e["net.daddr"] == loop for e in ev["close"])
    assert set(ev) == {"bind", "listen", "connect", "accept", "close"}


def test_mapped_ipv4_in_ipv6(probe: NetworkSource) -> None:
    truth, events = run_child(probe, CHILD, "tcp_mapped")
    (conn,) = [e for e in events if e["evt.type"] == "connect" and e["net.family"] == "ipv6"]
    assert conn["net.family"] == "ipv6"
    assert conn["net.daddr"] == "::ffff:127.0.0.1" and conn["net.dport"] == truth["port"]
    assert conn["net.saddr"] == truth["client"][0] == "::ffff:127.0.0.1"
    assert conn["net.sport"] == truth["client"][1] and conn["net.fd"] == truth["client_fd"]
    (acc,) = [e for e in events if e["evt.type"] == "accept"]
    assert truth["ds_peer"] == ["::ffff:127.0.0.1", truth["c4"][1]]
    assert (acc["net.family"], acc["net.daddr"], acc["net.dport"]) == ("ipv6", "::ffff:127.0.0.1", truth["c4"][1])
    assert (acc["net.saddr"], acc["net.sport"], acc["net.fd"]) == ("::ffff:127.0.0.1", truth["ds_port"],
                                                                    truth["ds_fd"])
    v4 = [e for e in events if e["evt.type"] == "connect" and e["net.family"] == "ipv4"]
    assert [(e["net.daddr"], e["net.dport"], e["net.sport"]) for e in v4] == \
        [("127.0.0.1", truth["ds_port"], truth["c4"][1])]


def test_udp_send_new_destinations_only(probe: NetworkSource) -> None:
    with fresh_cgroup() as cg:
        truth, events = run_child(probe, CHILD, "udp", cgroup=str(cg))
        assert truth["cgroup"] == os.stat(cg).st_ino != 1
    sends = [e for e in events if e["evt.type"] == "udp_send"]
    for e in sends:
        check_common(e, {**truth, "uid": 0})
    # sendto twice to r1 -> one event; a connected IPv6 socket sending twice -> one event
    assert len(sends) == 2, sends
    v4 = next(e for e in sends if e["net.family"] == "ipv4")
    assert (v4["net.daddr"], v4["net.dport"]) == tuple(truth["r1"])
    assert (v4["net.saddr"], v4["net.sport"]) == tuple(truth["sender"])  # unbound: 0.0.0.0 and the autobound port
    assert v4["net.proto"] == "udp"
    v6 = next(e for e in sends if e["net.family"] == "ipv6")
    assert (v6["net.daddr"], v6["net.dport"]) == tuple(truth["r2"])
    assert (v6["net.saddr"], v6["net.sport"]) == tuple(truth["sender6"])
    (conn,) = [e for e in events if e["evt.type"] == "connect"]  # the UDP connect
    assert (conn["net.proto"], conn["net.daddr"], conn["net.dport"]) == ("udp", *truth["r2"])
    assert (conn["net.fd"], conn["net.ret"], conn["net.saddr"], conn["net.sport"]) == (truth["sender6_fd"], 0, "", 0)


def test_refused_nonblocking_and_null_accept(probe: NetworkSource) -> None:
    truth, events = run_child(probe, CHILD, "odd_connects")
    conns = [e for e in events if e["evt.type"] == "connect"]
    refused = next(e for e in conns if e["net.fd"] == truth["refused_fd"])
    assert refused["net.ret"] == -111 and refused["net.dport"] == 1 and refused["net.proto"] == "tcp"
    nb = next(e for e in conns if e["net.fd"] == truth["nb_fd"])
    assert nb["net.ret"] in (0, -115)  # loopback usually completes the handshake inside connect()
    assert (nb["net.saddr"], nb["net.sport"]) == tuple(truth["nb"])
    assert nb["net.dport"] == truth["nb_port"]
    accepts = [e for e in events if e["evt.type"] == "accept"]
    assert sorted(e["net.fd"] for e in accepts) == sorted(truth["null_accept_fds"])
    # the peers came from /proc (no peer buffer): the two client ports, local side the listener
    assert sorted(e["net.dport"] for e in accepts) == sorted([truth["nb"][1], truth["c"][1]])
    assert all(e["net.sport"] == truth["nb_port"] and e["net.daddr"] == "127.0.0.1" for e in accepts)


def test_connect_completing_after_the_syscall(probe: NetworkSource) -> None:
    """A non-blocking connect still in SYN_SENT at its exit is reported when the handshake ends, with the
    source port and the process of the syscall (the state change itself runs in softirq)."""
    truth, events = run_child(probe, CHILD, "backlog")
    conns = sorted((e["net.fd"], e["net.sport"], e["net.ret"], e["net.dport"], e["proc.comm"])
                   for e in events if e["evt.type"] == "connect")
    assert truth["rets"] == [-115, -115, -115] and truth["errs"] == [0, 0, 0]
    assert conns == sorted(zip(truth["fds"], truth["sports"], truth["rets"], [truth["port"]] * 3,
                               ["python3"] * 3, strict=True))


def test_filters_exclude_comm_and_pid(bystander: int) -> None:
    require_kernel()
    waiting = subprocess.Popen([CHILD_PYTHON, CHILD, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cfg = NetworkConfig.model_validate({"filters": {"exclude_comms": ["ravn-excl"], "exclude_pids": [waiting.pid]}})
    src = NetworkSource("ebpf_network", cfg, make_context("net", ravn_pid=bystander))
    src.start()
    try:
        excluded_comm, ev1 = run_child(src, CHILD, "tcp4", "ravn-excl")
        out, _ = waiting.communicate("", timeout=20)
        excluded_pid = json.loads(out)
        _, ev3 = run_child(src, CHILD, "tcp4")
        rest = collect_until_quiet(src, lambda e: e["proc.pid"] in (excluded_comm["pid"], excluded_pid["pid"]))
        assert ev1 == [] and rest == []
        assert len(ev3) == 6  # bind, listen, connect, accept, 2 closes: the probe did see the third child
    finally:
        src.stop()
        waiting.kill()


def prog_ids(src: NetworkSource) -> list[int]:
    assert src.bpf is not None
    return sorted(src.program_ids())


def test_nothing_attached_after_stop(bystander: int) -> None:
    require_kernel()
    src = NetworkSource("ebpf_network", NetworkConfig(udp=False), make_context("net", ravn_pid=bystander))
    src.start()
    try:
        ids = prog_ids(src)
        h = src.health()
        assert h.state == "ok" and h.counters["programs_attached"] == h.counters["programs_expected"] == 15
        assert len(ids) == 13  # 11 network programs (udp off) + the base's fork/exit programs
        assert src.bpf is not None and len(src.bpf.links) == 15
        assert all(Path(f"/proc/self/fd/{fd}").exists() for fd in src.bpf.links.values())
    finally:
        src.stop()
    assert src.bpf is None and src.health().state == "stopped"
    shown = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    live = {p["id"] for p in json.loads(shown)}
    assert not live & set(ids)
    truth, _ = run_child(None, CHILD, "tcp4")
    assert src.poll(50) == [] and truth["pid"] > 0
