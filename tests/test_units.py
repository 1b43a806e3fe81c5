"""Byte sizes: parse and format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusefs.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("0", 0),
        ("64MiB", 64 * 2**20),
        ("64 MiB", 64 * 2**20),
        ("4GiB", 4 * 2**30),
        ("4gib", 4 * 2**30),
        ("256KiB", 256 * 1024),
        ("256K", 256 * 1024),
        ("1.5M", int(1.5 * 2**20)),
        ("2GB", 2 * 10**9),
        ("10kB", 10_000),
        ("1T", 2**40),
        ("12B", 12),
        (4096, 4096),
    ],
)
def test_parse(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "MiB", "-1", "4 XB", "1e3", "4GiBs", -5, True])
def test_parse_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0B"),
        (512, "512B"),
        (4096, "4KiB"),
        (64 * 2**20, "64MiB"),
        (int(1.5 * 2**20), "1536KiB"),
        (int(1.5 * 2**20) + 1, "1.5MiB"),
        (2**40, "1TiB"),
    ],
)
def test_format(value: int, text: str) -> None:
    assert format_size(value) == text


@given(st.integers(0, 2**50), st.sampled_from(["", "KiB", "MiB", "GiB"]))
def test_whole_units_round_trip(n: int, unit: str) -> None:
    value = parse_size(f"{n}{unit}")
    text = format_size(value)
    if value % 1024 == 0 or value < 1024:
        assert parse_size(text) == value
