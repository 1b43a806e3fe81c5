"""Shared fixtures: temp dataset directories and real tierfs mounts."""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mounting import Mounted  # noqa: E402


@pytest.fixture
def src(tmp_path: "os.PathLike[str]") -> str:
    """An empty source directory."""
    p = os.path.join(tmp_path, "src")
    os.mkdir(p)
    return p


@pytest.fixture
def make_mount(tmp_path: "os.PathLike[str]") -> Iterator[Callable[..., Mounted]]:
    """Factory for mounts that are always unmounted at teardown."""
    live: list[Mounted] = []
    counter = [0]

    def factory(source: str, **kw: object) -> Mounted:
        counter[0] += 1
        n = counter[0]
        kw.setdefault("cache", os.path.join(tmp_path, f"cache{n}"))
        kw.setdefault("log", os.path.join(tmp_path, f"tierfs{n}.log"))
        mnt = kw.pop("mountpoint", None) or os.path.join(tmp_path, f"mnt{n}")
        m = Mounted(source, str(mnt), **kw)  # type: ignore[arg-type]
        live.append(m)
        return m

    yield factory
    for m in live:
        m.unmount()


@pytest.fixture
def mnt(src: str, make_mount: Callable[..., Mounted]) -> Iterator[str]:
    """A tierfs mount of ``src``; yields the mount point."""
    with make_mount(src) as m:
        yield m.mountpoint
