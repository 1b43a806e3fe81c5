"""Block checksums of the fast tier: CRC-32C per 16 KiB piece of an extent.

The fast tier checks the bytes of *every* read against these (a cache file damaged while
mounted is caught on the next read of the damaged piece, not only after a remount), so a
read of a few KiB costs the checksum of the one or two 16 KiB pieces around it, never of
the whole extent. The arithmetic is in C (``csrc/crc32c.c``, SSE4.2 when the CPU has it);
this module owns the block size and the packed form kept in memory and in the catalog:
little-endian 32-bit words, one per piece, pieces counted from the extent's start.

Cost of the choice: 4 bytes of memory and catalog per 16 KiB cached (0.025%).
"""

from __future__ import annotations

from ._pagecache import ffi, lib

#: Bytes covered by one checksum. Fixed: the catalog stores checksums of this size.
BLOCK = 16 * 1024


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` (extending ``crc``)."""
    return int(lib.tierfs_crc32c(crc, ffi.from_buffer(data), len(data)))


def hardware() -> bool:
    """True if the CPU's crc32 instruction is used."""
    return bool(lib.tierfs_crc32c_hw())


def block_crcs(data: bytes | bytearray | memoryview) -> bytes:
    """The packed checksums of ``data``'s ``BLOCK``-byte pieces (the last may be short)."""
    n = -(-len(data) // BLOCK)
    out = bytearray(4 * n)
    lib.tierfs_crc32c_blocks(ffi.from_buffer(data), len(data), BLOCK, ffi.from_buffer(out))
    return bytes(out)


def first_bad(data: bytes | bytearray | memoryview, crcs: bytes, first: int = 0) -> int | None:
    """Check ``data``, which starts at piece ``first`` of the packed ``crcs``.

    Returns None if every piece matches, else the index (in ``crcs``) of the first piece
    that does not; also when ``crcs`` has fewer pieces than ``data`` spans.
    """
    n = -(-len(data) // BLOCK)
    if first < 0 or 4 * (first + n) > len(crcs):
        return first
    bad = lib.tierfs_crc32c_verify(ffi.from_buffer(data), len(data), BLOCK,
                                   ffi.from_buffer(crcs[4 * first:4 * (first + n)]))
    return None if bad < 0 else first + int(bad)


__all__ = ["BLOCK", "block_crcs", "crc32c", "first_bad", "hardware"]
