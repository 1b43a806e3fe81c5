"""Byte sizes and durations as people write them: "64MiB", "500ms".

This module owns the one size syntax used by the config, the CLI and the replay tool, so
"4GiB" means the same thing everywhere.
"""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size", "parse_duration"]

# Binary units are what caches and page sizes are counted in; decimal units are accepted
# because disk vendors and object stores quote them, and the difference matters at 200 GB.
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "p": 1024**5,
    "pb": 1000**5,
    "pib": 1024**5,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a byte size such as ``"4GiB"``, ``"256 KiB"``, ``"1.5M"`` or ``"4096"``.

    Bare letters (``K``, ``M``, ``G``, ``T``, ``P``) and the ``*iB`` forms are powers of
    1024; ``kB``, ``MB``, ``GB``... are powers of 1000. Case does not matter.

    Args:
        text: The size to parse; an ``int`` is returned unchanged if it is not negative.

    Returns:
        The size in bytes (a fraction of a byte is truncated).

    Raises:
        ValueError: If the text is not a size, or the unit is unknown.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. '4096', '64MiB', '1.5GB')")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        known = ", ".join(u for u in ("KiB", "MiB", "GiB", "TiB", "PiB", "kB", "MB", "GB", "TB", "PB"))
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (known: B, {known})")
    if "." in number:
        return int(float(number) * factor)
    return int(number) * factor


def format_size(nbytes: int, *, precision: int = 1) -> str:
    """Format a byte count with a binary unit.

    A whole number of some unit prints exactly in the largest such unit
    (``format_size(64 * 2**20) == "64MiB"``, ``format_size(1025 * 1024) == "1025KiB"``), so
    it parses back to the same number; anything else is rounded in the largest unit that
    keeps it at least 1 (``"1.5MiB"``).

    Args:
        nbytes: The size in bytes.
        precision: Decimals shown when the value is not a whole number of units.

    Returns:
        A string such as ``"4GiB"``, ``"1.5MiB"`` or ``"512B"``.
    """
    sign = "-" if nbytes < 0 else ""
    value = abs(int(nbytes))
    units = (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
    # The largest unit that divides exactly keeps the text exact ("1025KiB", not "1.0MiB").
    for unit, factor in units:
        if value >= factor and value % factor == 0:
            return f"{sign}{value // factor}{unit}"
    for unit, factor in units:
        if value >= factor:
            return f"{sign}{value / factor:.{precision}f}{unit}"
    return f"{sign}{value}B"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | int | float) -> float:
    """Parse a duration such as ``"30s"``, ``"500ms"``, ``"5m"`` or a number of seconds.

    Raises:
        ValueError: If the text is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30, '30s', '500ms', '5m')")
    return float(match.group(1)) * _SECONDS[match.group(2)]
