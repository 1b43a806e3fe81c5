"""Stats, Prometheus and the access trace of a real mount, replayed offline."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from typing import Any, Callable

import pyarrow.parquet as pq

from mounting import Mounted, tierfs_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_trace_and_replay(src: str, make_mount: Callable[..., Mounted],
                                     tmp_path: Any) -> None:
    with open(os.path.join(src, "data.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    port = free_port()
    trace = os.path.join(tmp_path, "trace.parquet")
    cfg = os.path.join(tmp_path, "t.toml")
    with open(cfg, "w") as f:
        f.write(f'[stats]\nprometheus = "127.0.0.1:{port}"\ntrace = "{trace}"\n')
    with make_mount(src, config=cfg) as m:
        with open(os.path.join(m.mountpoint, "data.bin"), "rb") as f:
            assert len(f.read()) == 1 << 20
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        text = body.decode()
        assert "tierfs_read_requests_total" in text
        assert "tierfs_dram_capacity_pages" in text
        human = subprocess.run(tierfs_cmd("stats", m.mountpoint), capture_output=True,
                               text=True, check=True).stdout
        assert "capacity" in human and "latency" in human
    table = pq.read_table(trace)
    assert table.num_rows > 0
    assert set(table.column("file").to_pylist()) == {"data.bin"}
    assert set(table.column("op").to_pylist()) == {"read"}
    out = subprocess.run(tierfs_cmd("replay", trace, "--policy", "lru", "--cache-size", "256KiB"),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "miss" in out.stdout.lower()


def test_bad_prometheus_address_is_a_config_error(src: str, tmp_path: Any) -> None:
    cfg = os.path.join(tmp_path, "t.toml")
    with open(cfg, "w") as f:
        f.write('[stats]\nprometheus = "nowhere"\n')
    mnt = os.path.join(tmp_path, "m")
    os.mkdir(mnt)
    res = subprocess.run(tierfs_cmd("mount", src, mnt, "--config", cfg), capture_output=True,
                         text=True)
    assert res.returncode == 3
    assert "t.toml:2: stats.prometheus: expected host:port" in res.stderr
