"""The benchmark harness (benchmarks/): fio JSON parsing, job files, ratios, cleanup.

Fast and timing-independent: no benchmark runs here, and no assertion is about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import targets  # noqa: E402
import workloads  # noqa: E402
from dataset import Dataset, DatasetSpec  # noqa: E402

SPEC = DatasetSpec(shards=3, shard_size=1 << 20, emb_size=1 << 20, small_files=5, small_per_dir=2)


def _job(name: str, bw_kib: int, iops: float, p: dict[str, int]) -> dict:
    return {"jobname": name, "error": 0,
            "read": {"bw": bw_kib, "iops": iops, "io_bytes": bw_kib * 1024, "runtime": 1000,
                     "clat_ns": {"mean": 1500.0, "percentile": {k: v for k, v in p.items()}}}}


def test_parse_fio_skips_notes_and_converts_units() -> None:
    doc = {"jobs": [_job("stream", 2048, 2.0, {"50.000000": 1000, "99.000000": 5000,
                                               "99.900000": 9000}),
                    _job("random", 400, 100.0, {"50.000000": 2000, "99.000000": 8000,
                                                "99.900000": 12000})]}
    text = "note: both iodepth >= 1 and synchronous I/O engine are selected\n" + json.dumps(doc)
    jobs = workloads.parse_fio(text)
    assert jobs["stream"]["bw_MiBps"] == 2.0
    assert jobs["random"]["p99_us"] == 8.0 and jobs["random"]["p999_us"] == 12.0
    m = workloads.fio_metrics("mixed", jobs)
    assert m["rand_p99_us"] == 8.0 and m["stream_MiBps"] == 2.0


def test_parse_fio_without_json_is_an_error() -> None:
    with pytest.raises(ValueError):
        workloads.parse_fio("fio: some error\n")


def test_jobfiles(tmp_path: Path) -> None:
    ds = Dataset(SPEC, tmp_path)
    timing = workloads.Timing(runtime=3, seq_cap=7)
    mixed = workloads.fio_jobfile("mixed", ds, Path("/mnt/x"), timing)
    assert "[stream]" in mixed and "[random]" in mixed
    assert "random_distribution=zipf:1.1" in mixed and "invalidate=0" in mixed
    assert "filename=shards/shard-000.bin:shards/shard-001.bin:shards/shard-002.bin" in mixed
    seq = workloads.fio_jobfile("seq", ds, Path("/mnt/x"), timing)
    assert "time_based" not in seq and "runtime=7" in seq
    with pytest.raises(ValueError):
        workloads.fio_jobfile("seq", ds, Path("/mnt/a:b"), timing)


def _cells(values: dict[tuple[str, str, str, str], dict]) -> dict:
    return {k: {"metrics": v, "error": None} for k, v in values.items()}


def test_ratios_and_checks() -> None:
    U = "unconstrained"
    cells = _cells({
        (U, "mixed", "warm", "direct"): {"rand_p99_us": 10.0, "stream_MiBps": 1000.0},
        (U, "mixed", "warm", "tierfs"): {"rand_p99_us": 15.0, "stream_MiBps": 700.0},
        (U, "rand", "warm", "direct"): {"iops": 100.0},
        (U, "rand", "warm", "tierfs"): {"iops": 95.0},
        (U, "lsR", "cold", "tierfs-s3"): {"seconds": 1.0},
        (U, "lsR", "cold", "rclone"): {"seconds": 2.0},
        (U, "lsR", "cold", "s3fs"): {"seconds": 0.5},
    })
    checks = {(c.name, c.pair): c for c in report.check_targets(cells, ["mixed", "rand", "lsR"])}
    p99 = checks[("mixed warm: random p99 within 2x direct", ("tierfs", "direct"))]
    assert p99.ratio == 1.5 and p99.met is True
    assert checks[("mixed warm: stream >= 0.8x direct", ("tierfs", "direct"))].met is False
    assert checks[("warm random 4k IOPS >= 0.9x direct", ("tierfs", "direct"))].met is True
    assert checks[("mixed mem-limited: random p99 no worse than direct",
                   ("tierfs", "direct"))].met is None
    lsr = [c for c in report.check_targets(cells, ["lsR"]) if c.row[2] == "cold"]
    assert {c.pair[1]: c.met for c in lsr} == {"rclone": True, "s3fs": False}
    only_local = report.check_targets(cells, ["lsR"], ["direct", "tierfs"])
    assert all("tierfs-s3" not in c.pair for c in only_local)
    table = report.rows(cells, [U], ["mixed"], ["direct", "tierfs"])
    assert table[0]["ratios"]["tierfs/direct"] == 1.5
    md = report.markdown_table(table, ["direct", "tierfs"], report.check_targets(cells, ["mixed"]))
    assert "MISSED" in md and "met" in md


def test_failed_cell_has_no_value() -> None:
    cells = {("unconstrained", "rand", "warm", "tierfs"): {"metrics": {"iops": 5.0},
                                                           "error": "boom"}}
    assert report.rows(cells, ["unconstrained"], ["rand"], ["tierfs"]) == []


class _Exits(targets.Target):
    """A "FUSE daemon" that exits at once without mounting."""

    name = "exits"

    def argv(self, ctx: targets.RunContext, mnt: Path) -> list[str]:
        ctx.fresh_dir(f"{self.name}-cache")
        return [sys.executable, "-c", "import sys; print('no mount'); sys.exit(3)"]


def test_mount_failure_is_reported_and_cleaned(tmp_path: Path) -> None:
    ctx = targets.RunContext(dataset=Dataset(SPEC, tmp_path / "ds"), work=tmp_path / "work")
    ctx.work.mkdir()
    with pytest.raises(RuntimeError, match="exited with 3"):
        with _Exits().mounted(ctx):
            pass
    assert not list(ctx.work.glob("exits-cache-*"))  # fresh caches are removed


@pytest.mark.mount
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bindfs") is None,
                    reason="needs root and bindfs")
def test_unmounts_when_the_body_raises(tmp_path: Path) -> None:
    ds = Dataset(SPEC, tmp_path / "ds")
    ds.root.mkdir(parents=True)
    (ds.root / "f").write_text("x")
    ctx = targets.RunContext(dataset=ds, work=tmp_path / "work")
    ctx.work.mkdir()
    seen = None
    with pytest.raises(KeyboardInterrupt):
        with targets.Bindfs().mounted(ctx) as root:
            seen = root
            assert (root / "f").read_text() == "x"
            raise KeyboardInterrupt
    assert seen is not None and not targets.is_mounted(seen)
    assert subprocess.run(["pgrep", "-f", f"bindfs -f {ds.root}"],
                          capture_output=True).returncode != 0
