"""Byte sizes and durations as people write them ("4GiB", "256KiB", "30s")."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)
_POW = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(text: str | int) -> int:
    """Parse "64MiB", "1.5G", "4096" into bytes; binary units ("KiB") and decimal ("KB").

    Raises:
        ValueError: the text is not a size.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 256KiB, 4GiB, 1.5GB)")
    num, unit, binary = m.groups()
    unit = unit.upper()
    # A bare "K/M/G" means binary units, as in most storage tools.
    base = 1000 if (unit and not binary and text.strip().upper().endswith("B")) else 1024
    return int(float(num) * base ** _POW[unit])


def format_size(n: float) -> str:
    """Format bytes with binary units ("1.5 GiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_duration(text: str | int | float) -> float:
    """Parse "30s", "500ms", "5m", or a number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30, 30s, 500ms, 5m)")
    return float(m.group(1)) * _SECONDS[m.group(2)]
