"""Shared fixtures: temp dataset directories and real tierfs mounts."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mounting import Mounted  # noqa: E402

# The loopback servers' fixtures and the S3 mount factory, once for the whole run: a
# session server starts once however many modules use it (a fixture imported into a
# module would be that module's own, and start its own server).
pytest_plugins = ["s3server", "s3mounts", "gcsserver"]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_log_errors(*patterns): ERROR log records matching a pattern "
                   "are expected by this test")


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """In-process code under test must not log an ERROR (or a traceback) the test did not
    declare with ``@pytest.mark.allow_log_errors(pattern)``; mounts check their daemon's log
    in `mounting.Mounted`."""
    handler = _Errors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    allowed = [re.compile(p) for m in request.node.iter_markers("allow_log_errors")
               for p in m.args]
    bad = [r for r in handler.records
           if not any(p.search(r.getMessage()) for p in allowed)]
    if bad:
        pytest.fail("unexpected ERROR log records:\n" + "\n".join(
            f"  {r.name}: {r.getMessage()}" + (" (with traceback)" if r.exc_info else "")
            for r in bad[:10]), pytrace=False)


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
