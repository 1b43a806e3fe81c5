"""`tierfs report` on a trace recorded through a real mount: HTML and PNG charts."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fusefs.policies import builtin_policies
from fusefs.trace import COLUMNS, EXTRA_FIELDS, SCHEMA, read_trace, read_trace_extended, write_trace
from mounting import Mounted, tierfs_cmd

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record_trace(src: str, make_mount: Callable[..., Mounted], tmp: Path) -> str:
    """A mixed workload through a real mount: a streamed file and random reads, twice."""
    rnd = random.Random(7)
    with open(os.path.join(src, "stream.bin"), "wb") as f:
        f.write(rnd.randbytes(4 << 20))
    with open(os.path.join(src, "table.bin"), "wb") as f:
        f.write(rnd.randbytes(1 << 20))
    trace = str(tmp / "trace.parquet")
    cfg = tmp / "t.toml"
    cfg.write_text(f'[stats]\ntrace = "{trace}"\n')
    with make_mount(src, config=str(cfg)) as m:
        for _ in range(2):
            # O_DIRECT-free, but each pass reopens; random reads go through DRAM / fast.
            with open(os.path.join(m.mountpoint, "stream.bin"), "rb", buffering=0) as f:
                while f.read(128 << 10):
                    pass
            fd = os.open(os.path.join(m.mountpoint, "table.bin"), os.O_RDONLY)
            try:
                for _ in range(300):
                    off = rnd.randrange(0, (1 << 20) - 4096) // 4096 * 4096
                    os.posix_fadvise(fd, off, 4096, os.POSIX_FADV_DONTNEED)
                    assert len(os.pread(fd, 4096, off)) == 4096
            finally:
                os.close(fd)
    return trace


def test_recorded_trace_has_tier_and_latency(src: str, make_mount: Callable[..., Mounted],
                                             tmp_path: Path) -> None:
    trace = _record_trace(src, make_mount, tmp_path)
    # The core schema is unchanged for replay; the recorder appends tier and latency.
    assert read_trace(trace).schema.equals(SCHEMA, check_metadata=False)
    t = read_trace_extended(trace)
    assert t.column_names == [*COLUMNS, *(f.name for f in EXTRA_FIELDS)]
    reads = t.filter(pc.equal(t["op"], "read"))
    tiers = set(reads["tier"].to_pylist())
    assert "capacity" in tiers, tiers
    assert tiers & {"dram", "fast", "capacity+dram", "dram+fast"}, tiers
    lat = reads["latency"].to_pylist()
    assert all(x is not None and 0 < x < 60 for x in lat)

    out = tmp_path / "report"
    res = subprocess.run(tierfs_cmd("report", trace, "-o", str(out)), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    page = (out / "index.html").read_text()
    for name, title in (("tiers", "Hit ratio over time per tier and access class"),
                        ("latency", "Latency distributions"),
                        ("classes", "Classification over time"),
                        ("replay", "Replay of the shipped policies against Belady")):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 20_000, (name, png.stat().st_size)
        assert f"src='{name}.png'" in page
        assert title in page
    table = page[page.index("id='replay-table'"):]
    table = table[:table.index("</table>")]
    rows = dict(re.findall(r"<tr><td>([a-z_0-9]+)</td>(.*?)</tr>", table))
    assert set(rows) == set(builtin_policies()) | {"belady"}
    for name, cells in rows.items():
        ratios = [float(x) for x in re.findall(r">([0-9.]+)</td>", cells)]
        assert len(ratios) >= 2 and all(0.0 <= r <= 1.0 for r in ratios), (name, cells)
    data = json.loads((out / "report.json").read_text())
    by = {(r["policy"], r["cache_size"]): r["miss_ratio"] for r in data["replay"]}
    for (policy, size), ratio in by.items():
        if policy not in ("belady", "workload_aware"):  # a rejecting policy may beat MIN
            assert ratio >= by[("belady", size)] - 1e-12, (policy, size)
    assert data["summary"]["reads"] == reads.num_rows


def test_report_of_a_trace_without_the_optional_columns(tmp_path: Path) -> None:
    """An older (or generated) trace: the charts it can support, and a note for the rest."""
    from fusefs import tracegen

    trace = tmp_path / "old.parquet"
    write_trace(tracegen.interleave(
        tracegen.zipf_trace(n_objects=200, n_requests=2000, seed=1),
        tracegen.scan_trace(n_requests=300, file_size=8 << 20, workers=2, seed=1)), trace)
    assert pq.read_schema(trace).names == list(COLUMNS)
    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "fusefs.report", str(trace), "-o", str(out),
                          "--cache-size", "64KiB", "--cache-size", "256KiB",
                          "--policy", "lru", "--policy", "s3fifo"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["classes.png", "replay.png"]
    page = (out / "index.html").read_text()
    assert "no tier column" in page and "no latency column" in page
    assert "no occupancy samples" in page


def test_report_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), bad)
    res = subprocess.run(tierfs_cmd("report", str(bad), "-o", str(tmp_path / "o")),
                         capture_output=True, text=True)
    assert res.returncode == 1 and "not a tierfs trace" in res.stderr
    res = subprocess.run(tierfs_cmd("report", str(bad)), capture_output=True, text=True)
    assert res.returncode == 2


def test_benchmark_chart_of_the_committed_results(tmp_path: Path) -> None:
    """benchmarks/chart.py draws run.py's headline table (here: the committed full run)."""
    repo = Path(__file__).resolve().parent.parent
    png = tmp_path / "fio.png"
    res = subprocess.run([sys.executable, str(repo / "benchmarks" / "chart.py"),
                          str(repo / "benchmarks" / "results" / "fio.json"), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 50_000
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"rows": []}))
    res = subprocess.run([sys.executable, str(repo / "benchmarks" / "chart.py"), str(empty)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no rows" in res.stderr
