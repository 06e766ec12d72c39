"""Decoding of ``struct ravn_net_event`` (bpf/include/ravn_events.h) into flat event dicts.

One record layout serves all six network event types; which keys an event carries follows
``ravn_core.events.EVENT_TYPES``. ``net.saddr``/``net.sport`` are always the local side and
``net.daddr``/``net.dport`` the remote side. Addresses are text (``ipaddress``); an IPv4-mapped IPv6 address
stays IPv6 and is written ``::ffff:a.b.c.d``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Callable
from typing import Any, Final

from ravn_core.bpf.abi import EVENT_TYPE_IDS, RavnHdr, unpacker
from ravn_core.events import Event

AF_INET: Final = 2
AF_INET6: Final = 10
F_PEER_UNKNOWN: Final = 1  # RAVN_NET_F_PEER_UNKNOWN
F_NO_LOCAL: Final = 2  # RAVN_NET_F_NO_LOCAL
FAMILIES: Final[dict[int, str]] = {AF_INET: "ipv4", AF_INET6: "ipv6"}
PROTOS: Final[dict[int, str]] = {6: "tcp", 17: "udp"}


class NetEvent(ctypes.Structure):
    """Mirror of ``struct ravn_net_event`` (112 bytes)."""

    _fields_ = [
        ("hdr", RavnHdr),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("ret", ctypes.c_int32),
        ("fd", ctypes.c_int32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("proto", ctypes.c_uint16),
        ("backlog", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {"ravn_net_event": NetEvent}
_NET: Final = unpacker(NetEvent)
# indexes in the unpacked tuple: 9 header values, then the fields in order
_SADDR, _DADDR, _RET, _FD, _SPORT, _DPORT, _FAMILY, _PROTO, _BACKLOG, _FLAGS = range(9, 19)

_addr_cache: dict[tuple[int, bytes], str] = {}


def format_addr(family: int, raw: bytes) -> str:
    """Text form of a 16-byte address field (IPv4 in its first 4 bytes); '' for an unknown family."""
    key = (family, raw)
    text = _addr_cache.get(key)
    if text is not None:
        return text
    if family == AF_INET:
        text = str(ipaddress.IPv4Address(raw[:4]))
    elif family == AF_INET6:
        a6 = ipaddress.IPv6Address(raw)
        text = f"::ffff:{a6.ipv4_mapped}" if a6.ipv4_mapped is not None else str(a6)
    else:
        text = ""
    if len(_addr_cache) > 8192:
        _addr_cache.clear()
    _addr_cache[key] = text
    return text


def _tcp_tables(pid: int) -> list[str]:
    return [f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"]


def _proc_hex_addr(text: str) -> tuple[int, str, int]:
    """(family, address text, port) from a /proc/net/tcp{,6} 'ADDR:PORT' column (addresses in host order words)."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    # the kernel prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = AF_INET if len(raw) == 4 else AF_INET6
    return family, format_addr(family, raw.ljust(16, b"\0")), int(port_hex, 16)


def resolve_socket(pid: int, fd: int) -> tuple[int, str, int, str, int] | None:
    """(family, local addr, local port, peer addr, peer port) of a TCP socket fd of ``pid`` read from /proc.

    Used for accepts whose caller passed no peer buffer. Best effort: None when the process, the fd or the
    connection is already gone.
    """
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not link.startswith("socket:["):
        return None
    inode = link[8:-1]
    for table in _tcp_tables(pid):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] == inode:
                        fam, laddr, lport = _proc_hex_addr(cols[1])
                        _, raddr, rport = _proc_hex_addr(cols[2])
                        return fam, laddr, lport, raddr, rport
        except OSError:
            continue
    return None


def make_decoders(header: Callable[[tuple[Any, ...]], Event], resolve_peers: bool = True
                  ) -> dict[int, Callable[[bytes], Event]]:
    """Event type id -> decoder(record bytes) -> event dict, for the six network event types."""
    unpack = _NET.unpack
    fmt = format_addr
    families, protos = FAMILIES, PROTOS

    def base(v: tuple[Any, ...], local_only: bool = False) -> Event:
        e = header(v)
        fam = v[_FAMILY]
        flags = v[_FLAGS]
        e["net.family"] = families.get(fam, "")
        e["net.proto"] = protos.get(v[_PROTO], "")
        if flags & F_NO_LOCAL:
            e["net.saddr"], e["net.sport"] = "", 0
        else:
            e["net.saddr"], e["net.sport"] = fmt(fam, v[_SADDR]), v[_SPORT]
        if not local_only:
            if flags & F_PEER_UNKNOWN:
                e["net.daddr"], e["net.dport"] = "", 0
            else:
                e["net.daddr"], e["net.dport"] = fmt(fam, v[_DADDR]), v[_DPORT]
        return e

    def connect(buf: bytes) -> Event:
        v = unpack(buf)
        e = base(v)
        e["net.fd"] = v[_FD]
        e["net.ret"] = v[_RET]
        return e

    def accept(buf: bytes) -> Event:
        v = unpack(buf)
        e = base(v)
        e["net.fd"] = v[_FD]
        if v[_FLAGS] & F_PEER_UNKNOWN and resolve_peers:
            found = resolve_socket(v[1], v[_FD])
            if found is not None:
                fam, laddr, lport, raddr, rport = found
                e["net.family"] = families[fam]
                e["net.saddr"], e["net.sport"], e["net.daddr"], e["net.dport"] = laddr, lport, raddr, rport
        return e

    def close(buf: bytes) -> Event:
        return base(unpack(buf))

    def bind(buf: bytes) -> Event:
        v = unpack(buf)
        e = base(v, local_only=True)
        e["net.fd"] = v[_FD]
        e["net.ret"] = v[_RET]
        return e

    def listen(buf: bytes) -> Event:
        v = unpack(buf)
        e = base(v, local_only=True)
        e["net.fd"] = v[_FD]
        e["net.backlog"] = v[_BACKLOG]
        return e

    ids = EVENT_TYPE_IDS
    return {ids["connect"]: connect, ids["accept"]: accept, ids["close"]: close, ids["udp_send"]: close,
            ids["bind"]: bind, ids["listen"]: listen}
