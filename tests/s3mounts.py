"""Mounts of the loopback S3 servers (a pytest plugin, listed in conftest.py's
``pytest_plugins``, so its fixtures exist once for the whole run).

`config` writes a config file whose ``[source]`` carries a server's keys; the `mount_s3`
fixture mounts a server's bucket (a `s3server.bucket_view`) with one, directory markers
as the view says (``markers``: moto's), and bounds a loaded 2-core machine cannot reach.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mounting import Mounted
from s3server import S3Server


def config(tmp_path: Path, server: S3Server | None, *, name: str = "tierfs.toml",
           creds: bool = True, source: dict[str, Any] | None = None,
           extra: str = "") -> str:
    """A config file whose [source] carries the server's keys (unless ``creds=False``)."""
    lines = ["[source]"]
    if creds and server is not None:
        lines += [f'access_key = "{server.access_key}"', f'secret_key = "{server.secret_key}"']
    for k, v in (source or {}).items():
        lines.append(f"{k} = {json.dumps(v)}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return str(path)


@pytest.fixture
def mount_s3(make_mount: Callable[..., Mounted], tmp_path: Path) -> Callable[..., Mounted]:
    """Factory: a mount of ``server``'s bucket (or a prefix of it) with the keys in a
    config; ``source`` adds to its [source], ``extra`` to the rest of it; other keywords
    go to `Mounted` (``options``, ``config``, ...)."""

    def factory(server: S3Server, prefix: str = "", *, source: dict[str, Any] | None = None,
                extra: str = "", creds: bool = True, **kw: Any) -> Mounted:
        if "config" not in kw:
            n = len(list(tmp_path.glob("cfg*.toml")))
            # rclone stores a marker 'dir/' as a file 'dir': see s3server.py.
            # A loaded 2-core machine can keep rclone silent for seconds: that must
            # not look like an outage (tests of outages set their own bound).
            source = {"dir_markers": getattr(server, "markers", False), "read_timeout": "120s",
                      **(source or {})}
            kw["config"] = config(tmp_path, server, name=f"cfg{n}.toml", creds=creds,
                                  source=source, extra=extra)
        # A loaded 2-core machine can keep rclone silent for seconds: it must not
        # look like a dead server (the default request_timeout is 10 s).
        return make_mount(server.uri(prefix) + "&request_timeout=60", **kw)

    return factory
