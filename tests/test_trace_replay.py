"""Traces on disk, the generators, Belady, and replaying through policies (API and CLI)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusefs import tracegen
from fusefs.replay import belady_for_trace, belady_miss_flags, main, replay
from fusefs.trace import (
    COLUMNS,
    SCHEMA,
    TraceWriter,
    iter_batches,
    read_trace,
    write_trace,
)

PAGE = 4096


def test_schema_is_the_documented_one() -> None:
    assert COLUMNS == ("time", "pid", "file", "file_id", "offset", "size", "op", "label")
    types = {f.name: f.type for f in SCHEMA}
    assert types["time"] == pa.float64() and types["pid"] == pa.int32()
    assert types["file_id"] == pa.uint64() and types["offset"] == pa.uint64() and types["size"] == pa.uint32()


def test_writer_flushes_row_groups_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    with TraceWriter(path, row_group_size=100) as w:
        for i in range(250):
            w.write(time=i * 0.5, pid=7, file="a/b", file_id=3, offset=i * PAGE, size=PAGE, label="sequential")
        w.write_row((200.0, 8, "c", 4, 0, 10, "write", "unknown"))
        assert w.rows_written == 251
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 251 and meta.num_row_groups == 3
    t = read_trace(path)
    assert t.schema.equals(SCHEMA, check_metadata=False)
    assert t["offset"].to_pylist()[:3] == [0, PAGE, 2 * PAGE]
    assert t["op"].to_pylist()[-1] == "write"
    assert sum(b.num_rows for b in iter_batches(path, batch_size=64)) == 251


def test_writer_refuses_after_close(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "t.parquet")
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.write(time=0.0, pid=1, file="x", file_id=1, offset=0, size=1)


def test_read_trace_rejects_other_parquet(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(ValueError, match="missing columns"):
        read_trace(path)


def test_generators_are_seeded_and_labelled() -> None:
    a = tracegen.zipf_trace(n_objects=100, n_requests=500, seed=3)
    b = tracegen.zipf_trace(n_objects=100, n_requests=500, seed=3)
    assert a.equals(b)
    assert set(a["label"].to_pylist()) == {"random"}
    assert max(a["offset"].to_pylist()) < 100 * PAGE
    s = tracegen.scan_trace(n_requests=1000, request_size=PAGE, file_size=64 * PAGE, workers=2, seed=1)
    assert set(s["label"].to_pylist()) == {"sequential"}
    # Each worker reads its files in order, each file once.
    for pid in (2000, 2001):
        rows = [
            (f, o)
            for p, f, o in zip(s["pid"].to_pylist(), s["file_id"].to_pylist(), s["offset"].to_pylist())
            if p == pid
        ]
        assert rows == sorted(rows)
        assert len(rows) == len(set(rows))


def test_scan_reorder_swaps_neighbours_only() -> None:
    s = tracegen.scan_trace(n_requests=2000, request_size=PAGE, file_size=10_000 * PAGE, workers=1, reorder=0.2, seed=2)
    offs = s["offset"].to_pylist()
    assert offs != sorted(offs)
    # a permutation of the in-order offsets: nothing lost, nothing read twice
    assert sorted(offs) == [i * PAGE for i in range(len(offs))]
    assert all(abs(o - i * PAGE) <= PAGE for i, o in enumerate(offs))


@pytest.mark.parametrize("mode", ["request", "burst"])
def test_interleave_keeps_each_order(mode: str) -> None:
    a = tracegen.zipf_trace(n_objects=50, n_requests=3000, seed=1)
    b = tracegen.scan_trace(n_requests=3000, request_size=PAGE, file_size=100 * PAGE, seed=2)
    m = tracegen.interleave(a, b, mode=mode, burst=50, seed=4)
    assert m.num_rows == 6000
    labels = m["label"].to_pylist()
    offs = m["offset"].to_pylist()
    assert [o for o, lab in zip(offs, labels) if lab == "random"] == a["offset"].to_pylist()
    assert [o for o, lab in zip(offs, labels) if lab == "sequential"] == b["offset"].to_pylist()
    times = m["time"].to_pylist()
    assert times == sorted(times)
    if mode == "burst":
        switches = sum(1 for x, y in zip(labels, labels[1:]) if x != y)
        assert switches < 6000 / 10


def test_belady_small_case_by_hand() -> None:
    # Capacity 2, keys 1 2 3 1 2: the miss on 3 evicts 2 (next used at 4, after 1 at 3),
    # so 1 hits and 2 misses.
    assert list(belady_miss_flags([1, 2, 3, 1, 2], 2)) == [1, 1, 1, 0, 1]
    assert belady_miss_flags([1, 1, 1], 0).count(1) == 3
    assert belady_miss_flags([], 3) == bytearray()


def brute_force_opt(keys: list[int], capacity: int) -> int:
    cache: set[int] = set()
    misses = 0
    for i, k in enumerate(keys):
        if k in cache:
            continue
        misses += 1
        if len(cache) >= capacity:

            def next_use(x: int, i: int = i) -> int:
                for j in range(i + 1, len(keys)):
                    if keys[j] == x:
                        return j
                return len(keys) + 1

            cache.remove(max(cache, key=next_use))
        cache.add(k)
    return misses


def test_belady_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(30):
        keys = [rng.randrange(12) for _ in range(80)]
        cap = rng.randrange(1, 8)
        assert belady_miss_flags(keys, cap).count(1) == brute_force_opt(keys, cap)


def test_belady_never_loses_to_a_policy() -> None:
    z = tracegen.zipf_trace(n_objects=500, n_requests=8000, seed=5)
    opt = belady_for_trace(z, 50 * PAGE, PAGE)
    for name in ("lru", "s3fifo", "arc"):
        r = replay(z, name, 50 * PAGE, use_classifier=False, belady=False)
        assert opt["misses"] <= r.misses


def test_replay_splits_requests_into_pages() -> None:
    t = pa.table(
        {
            "time": [0.0, 1.0, 2.0],
            "pid": [1, 1, 1],
            "file": ["f"] * 3,
            "file_id": [9, 9, 9],
            "offset": [0, 100, 4 * PAGE],
            "size": [2 * PAGE, 10, PAGE],
            "op": ["read", "read", "write"],
            "label": ["random"] * 3,
        }
    )
    r = replay(t, "lru", 10 * PAGE, use_classifier=False)
    assert r.requests == 2
    assert r.accesses == 3  # pages 0, 1, then page 0 again
    assert r.misses == 2
    assert r.per_label["unknown"]["accesses"] == 3
    assert r.belady is not None and r.belady["misses"] == 2
    assert r.policy_stats["objects"] == 3  # the write inserted page 4


def test_replay_workload_aware_ignores_scans() -> None:
    z = tracegen.zipf_trace(n_objects=2000, n_requests=20_000, seed=1)
    s = tracegen.scan_trace(n_requests=20_000, request_size=16 * 1024, file_size=1 << 24, workers=2, seed=2)
    mix = tracegen.interleave(z, s, seed=3)
    cache = 200 * PAGE
    pure = replay(z, "workload_aware", cache, tier="dram", belady=False)
    mixed = replay(mix, "workload_aware", cache, tier="dram", belady=False)
    lru_mixed = replay(mix, "lru", cache, use_classifier=False, belady=False)
    rand_pure = pure.per_trace_label["random"]["miss_ratio"]
    rand_mixed = mixed.per_trace_label["random"]["miss_ratio"]
    assert rand_mixed <= rand_pure * 1.03
    assert lru_mixed.per_trace_label["random"]["miss_ratio"] > rand_mixed * 1.2
    seq = mixed.confusion["sequential"]
    assert seq.get("sequential", 0) / sum(seq.values()) >= 0.99
    assert mixed.confusion["random"].get("sequential", 0) == 0


def test_replay_unknown_policy_is_an_error() -> None:
    z = tracegen.zipf_trace(n_objects=10, n_requests=10, seed=1)
    with pytest.raises(LookupError, match="available"):
        replay(z, "nope", 10 * PAGE)


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "z.parquet"
    write_trace(tracegen.zipf_trace(n_objects=300, n_requests=3000, seed=1), path)
    assert main([str(path), "--policy", "s3fifo", "--cache-size", "120KiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "s3fifo" and out["cache_size"] == 120 * 1024
    assert 0.0 < out["miss_ratio"] < 1.0
    assert out["belady"]["miss_ratio"] <= out["miss_ratio"]
    assert main([str(path), "--cache-size", "64KiB", "--page-size", "8KiB", "--no-classifier", "--no-belady"]) == 0
    text = capsys.readouterr().out
    assert "workload_aware" in text and "classifier off" in text


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.parquet"), "--cache-size", "1MiB"]) == 1
    assert "tierfs replay:" in capsys.readouterr().err
    path = tmp_path / "z.parquet"
    write_trace(tracegen.zipf_trace(n_objects=10, n_requests=10, seed=1), path)
    assert main([str(path), "--cache-size", "1MiB", "--policy", "nope"]) == 1
    assert "available" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--cache-size", "lots"])
    assert exc.value.code == 2
