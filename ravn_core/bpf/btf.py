"""Member offsets of kernel structs, read from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The kernel headers BCC compiles against may be another version's (here 6.1 for a 6.18 kernel), so a struct read
through them has the wrong layout. A probe that must follow kernel pointers (the security probe's exe path) asks
this module for the offsets and passes them to its C as ``-D`` flags; when the BTF is missing or a member is not
found, the probe falls back to what it did without them.

The BTF format (Documentation/bpf/btf.rst): a header, then the type section (one record per type, ids from 1,
each a 12-byte ``btf_type`` followed by kind-specific data), then the string section.
"""

from __future__ import annotations

import struct

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 8, 9, 10, 11, 18
#: kind -> (bytes of data after the btf_type, and per vlen item)
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
          17: (4, 0), 19: (0, 12)}


class BtfError(Exception):
    """The BTF is unreadable, or does not have the struct or member asked for."""


class Btf:
    """The structs and unions of one BTF blob: name -> members, each (name, type id, bit offset)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF shorter than its header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        #: type id -> (kind, name offset, the type it refers to, members or ())
        self.types: list[tuple[int, int, int, tuple[tuple[int, int, int], ...]]] = [(0, 0, 0, ())]
        self.by_name: dict[str, int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, size_or_type = unpack(data, pos)
            pos += 12
            kind, vlen, bitfield_offsets = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            fixed, per = _EXTRA.get(kind, (0, 0))
            members: tuple[tuple[int, int, int], ...] = ()
            if kind in (_STRUCT, _UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack(data, pos + 12 * i)
                    ms.append((m_name, m_type, m_off & 0xFFFFFF if bitfield_offsets else m_off))
                members = tuple(ms)
                if name_off and vlen:  # a full definition, not a forward declaration
                    self.by_name.setdefault(self._str(name_off), len(self.types))
            self.types.append((kind, name_off, size_or_type, members))
            pos += fixed + per * vlen

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _resolve(self, type_id: int) -> int:
        """Through typedef, const, volatile, restrict and type tags to the type itself."""
        for _ in range(32):
            kind, _name, ref, _members = self.types[type_id]
            if kind not in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
                return type_id
            type_id = ref
        return type_id

    def _find(self, type_id: int, member: str) -> int | None:
        """Bit offset of ``member`` in the struct/union ``type_id``, looking into anonymous members too."""
        for name_off, m_type, bit_off in self.types[type_id][3]:
            if name_off and self._str(name_off) == member:
                return bit_off
            if not name_off:
                inner = self._resolve(m_type)
                if self.types[inner][0] in (_STRUCT, _UNION):
                    found = self._find(inner, member)
                    if found is not None:
                        return bit_off + found
        return None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name`` (members of anonymous unions/structs included)."""
        type_id = self.by_name.get(struct_name)
        if type_id is None:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        bits = self._find(type_id, member)
        if bits is None:
            raise BtfError(f"struct {struct_name} has no member {member} in the kernel's BTF")
        if bits % 8:
            raise BtfError(f"{struct_name}.{member} is a bit field")
        return bits // 8


def kernel_btf(path: str = VMLINUX) -> Btf:
    """The running kernel's BTF (BtfError when it cannot be read). Parsed on each call (0.1 s) and not kept: it
    holds ~28 MB of Python objects, and a caller needs a few offsets of it once per probe load."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BtfError(f"{path}: {exc.strerror}") from None
    return Btf(data)
