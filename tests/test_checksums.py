"""Block checksums (`fusefs.checksums`, C in csrc/crc32c.c): known answers, the hardware
path against the table, and that a damaged piece is named."""

from __future__ import annotations

import random

import pytest

from fusefs import checksums
from fusefs._pagecache import lib

B = checksums.BLOCK


def test_known_answer() -> None:
    # RFC 3720 (iSCSI) check value of CRC-32C
    assert checksums.crc32c(b"123456789") == 0xE3069283
    assert checksums.crc32c(b"") == 0
    assert checksums.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 4096, B - 1, B, B + 1, 3 * B, 3 * B + 5,
                               48 * B, 49 * B + 3, 1 << 20])
def test_block_crcs_agree_with_the_table_and_find_each_damaged_piece(n: int) -> None:
    rng = random.Random(n)
    data = rng.randbytes(n)
    crcs = checksums.block_crcs(data)
    pieces = -(-n // B)
    assert len(crcs) == 4 * pieces
    for i in range(pieces):
        piece = data[i * B:(i + 1) * B]
        want = lib.tierfs_crc32c_sw(0, piece, len(piece))
        assert int.from_bytes(crcs[4 * i:4 * i + 4], "little") == want
    assert checksums.first_bad(data, crcs) is None
    for i in {0, pieces // 2, pieces - 1}:
        bad = bytearray(data)
        bad[min(n - 1, i * B + rng.randrange(B))] ^= 1 << rng.randrange(8)
        assert checksums.first_bad(bytes(bad), crcs) == min(i, (n - 1) // B)


def test_a_slice_of_pieces_is_checked_against_its_own_checksums() -> None:
    data = random.Random(1).randbytes(10 * B)
    crcs = checksums.block_crcs(data)
    assert checksums.first_bad(data[3 * B:6 * B], crcs, 3) is None
    assert checksums.first_bad(data[3 * B:6 * B], crcs, 4) is not None  # wrong pieces
    assert checksums.first_bad(data[8 * B:], crcs, 8) is None
    assert checksums.first_bad(data, crcs[:-4]) == 0, "too few checksums never passes"


def test_hardware_and_table_agree_on_unaligned_buffers() -> None:
    data = random.Random(2).randbytes(5000)
    for start in range(9):
        piece = memoryview(data)[start:]
        assert checksums.crc32c(piece) == lib.tierfs_crc32c_sw(0, bytes(piece), len(piece))
