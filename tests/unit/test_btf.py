"""ravn_core.bpf.btf: member offsets from BTF, on a hand-built blob and on the running kernel's."""

from __future__ import annotations

import os
import struct

import pytest

from ravn_core.bpf.btf import VMLINUX, Btf, BtfError, kernel_btf


def _blob() -> bytes:
    """struct outer { int a; union { long b; struct { int c; int d; }; }; int e : 3; } via typedef and const."""
    strings = b"\0int\0outer\0a\0b\0c\0d\0e\0long\0t_inner\0"
    def s(name: str) -> int:
        return strings.index(name.encode() + b"\0")
    types = b""
    def t(name_off: int, kind: int, vlen: int, size: int, extra: bytes = b"", kflag: int = 0) -> None:
        nonlocal types
        types += struct.pack("<III", name_off, (kflag << 31) | (kind << 24) | vlen, size) + extra
    t(s("int"), 1, 0, 4, struct.pack("<I", 32))                     # 1 int
    t(s("long"), 1, 0, 8, struct.pack("<I", 64))                    # 2 long
    t(0, 4, 2, 8, struct.pack("<III", s("c"), 1, 0) + struct.pack("<III", s("d"), 1, 32))  # 3 anon struct
    t(s("t_inner"), 8, 0, 3)                                        # 4 typedef -> 3
    t(0, 10, 0, 4)                                                  # 5 const -> 4
    t(0, 5, 2, 8, struct.pack("<III", s("b"), 2, 0) + struct.pack("<III", 0, 5, 0))  # 6 anon union
    t(s("outer"), 4, 3, 24, struct.pack("<III", s("a"), 1, 0) + struct.pack("<III", 0, 6, 64)
      + struct.pack("<III", s("e"), 1, (3 << 24) | 130), kflag=1)   # 7 outer (bit-field offsets)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_offsets_through_anonymous_members_typedefs_and_consts() -> None:
    btf = Btf(_blob())
    assert btf.offset("outer", "a") == 0
    assert btf.offset("outer", "b") == 8
    assert btf.offset("outer", "c") == 8 and btf.offset("outer", "d") == 12  # union -> const -> typedef -> struct
    with pytest.raises(BtfError, match=r"outer\.e is a bit field"):
        btf.offset("outer", "e")
    with pytest.raises(BtfError, match="struct outer has no member f"):
        btf.offset("outer", "f")
    with pytest.raises(BtfError, match="struct nope is not in"):
        btf.offset("nope", "a")


def test_bad_blobs_are_errors() -> None:
    with pytest.raises(BtfError, match="not BTF"):
        Btf(b"\0" * 32)
    with pytest.raises(BtfError, match="shorter than its header"):
        Btf(b"\x9f\xeb")
    with pytest.raises(BtfError, match="No such file"):
        kernel_btf("/nonexistent/vmlinux")


def test_the_running_kernels_btf_has_the_layouts_that_never_change() -> None:
    assert os.path.exists(VMLINUX)  # the machines RAVN is tested on have BTF (the exe walk needs it)
    btf = kernel_btf()
    assert btf.offset("list_head", "next") == 0 and btf.offset("list_head", "prev") == 8
    assert btf.offset("path", "mnt") == 0 and btf.offset("path", "dentry") == 8
    assert btf.offset("qstr", "len") == 4 and btf.offset("qstr", "name") == 8  # len inside an anonymous struct
    assert btf.offset("dentry", "d_name") > btf.offset("dentry", "d_parent") > 0
