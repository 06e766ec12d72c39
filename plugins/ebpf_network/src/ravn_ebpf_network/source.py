"""The ebpf_network source: loads bpf/network.bpf.c through ravn_core.bpf.probe.BccProbe and decodes its records."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from ravn_core.bpf.config import BccProbeConfig
from ravn_core.bpf.probe import BccProbe
from ravn_core.events import Event
from ravn_ebpf_network.decode import make_decoders


class NetworkConfig(BccProbeConfig):
    """Config of the ebpf_network source (YAML: ``sources: [{plugin: ebpf_network, ...}]``)."""

    udp: bool = Field(True, description="report the first UDP datagram of each process to each new destination "
                                        "(attaches the send tracepoints; false saves their per-send cost)")
    max_sockets: int = Field(65536, ge=256, description="sockets tracked at once (owner, protocol, pending "
                                                        "accepts; LRU maps)")
    max_udp_destinations: int = Field(65536, ge=256, description="(process, UDP destination) pairs remembered; "
                                                                 "an evicted pair is reported again")
    max_inflight: int = Field(10240, ge=64, description="concurrent connect/accept/bind/listen/send syscalls "
                                                        "followed from enter to exit")
    resolve_unknown_peers: bool = Field(True, description="for accept(fd, NULL, NULL) read the peer from "
                                                          "/proc/<pid>/net/tcp{,6} (best effort)")


#: (program in network.bpf.c, tracepoint); UDP ones only when config.udp
TCP_TRACEPOINTS: tuple[tuple[str, str], ...] = (
    ("ravn_net_enter_socket", "syscalls:sys_enter_socket"),
    ("ravn_net_exit_socket", "syscalls:sys_exit_socket"),
    ("ravn_net_enter_connect", "syscalls:sys_enter_connect"),
    ("ravn_net_exit_connect", "syscalls:sys_exit_connect"),
    ("ravn_net_enter_accept", "syscalls:sys_enter_accept4"),
    ("ravn_net_exit_accept", "syscalls:sys_exit_accept4"),
    ("ravn_net_enter_accept", "syscalls:sys_enter_accept"),
    ("ravn_net_exit_accept", "syscalls:sys_exit_accept"),
    ("ravn_net_enter_bind", "syscalls:sys_enter_bind"),
    ("ravn_net_exit_bind", "syscalls:sys_exit_bind"),
    ("ravn_net_enter_listen", "syscalls:sys_enter_listen"),
    ("ravn_net_exit_listen", "syscalls:sys_exit_listen"),
    ("ravn_net_set_state", "sock:inet_sock_set_state"),
)
UDP_TRACEPOINTS: tuple[tuple[str, str], ...] = (
    ("ravn_net_enter_sendto", "syscalls:sys_enter_sendto"),
    ("ravn_net_exit_send", "syscalls:sys_exit_sendto"),
    ("ravn_net_enter_sendmsg", "syscalls:sys_enter_sendmsg"),
    ("ravn_net_exit_send", "syscalls:sys_exit_sendmsg"),
    ("ravn_net_enter_sendmmsg", "syscalls:sys_enter_sendmmsg"),
    ("ravn_net_exit_send", "syscalls:sys_exit_sendmmsg"),
    ("ravn_net_send_length", "sock:sock_send_length"),
)


class NetworkSource(BccProbe):
    """TCP connect/accept/close, UDP sends to new destinations, bind and listen, with the owning process."""

    plugin: ClassVar[str] = "ebpf_network"
    package: ClassVar[str] = "ravn_ebpf_network"
    bpf_file: ClassVar[str] = "network.bpf.c"

    config: NetworkConfig

    def tracepoints(self) -> list[tuple[str, str]]:
        return [*TCP_TRACEPOINTS, *(UDP_TRACEPOINTS if self.config.udp else ())]

    def probe_cflags(self) -> list[str]:
        c = self.config
        return [
            f"-DRAVN_NET_UDP={int(c.udp)}",
            f"-DRAVN_NET_MAX_SOCKS={c.max_sockets}",
            f"-DRAVN_NET_MAX_UDP_SEEN={c.max_udp_destinations}",
            f"-DRAVN_NET_MAX_INFLIGHT={c.max_inflight}",
        ]

    def decoders(self) -> dict[int, Callable[[bytes], Event]]:
        return make_decoders(self.event_header(), resolve_peers=self.config.resolve_unknown_peers)
