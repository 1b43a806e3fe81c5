"""The AI-client examples run end to end at small scale against real tierfs mounts.

`examples/train_loader.py` (PyTorch DataLoader, 2 workers, tar shards),
`examples/parquet_scan.py` (pyarrow.dataset scan, with the training preset) and
`examples/kv_cache.py` (KV-cache blocks, with the serving preset) mount tierfs
themselves, as a user runs them; `examples/rag_retriever.py` (faiss IVF index + documents
by id) runs against a mount made by the `make_mount` fixture. Each also runs once against a
mount of a copy with changed bytes while verifying against the original, where it must
exit 1 (the Parquet and KV ones on a mount made with the mixed preset). Only outcomes and
the verification lines are asserted, never timings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from typing import Callable

import pytest

from mounting import REPO, Mounted, assert_clean_log, is_mounted

pytestmark = pytest.mark.mount

EXAMPLES = os.path.join(REPO, "examples")


def preset(name: str) -> str:
    return os.path.join(EXAMPLES, f"{name}.toml")


def run_example(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], text=True,
                         capture_output=True, timeout=timeout,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(res.stdout)
    print(res.stderr, file=sys.stderr)
    return res


def mounts_below(prefix: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def test_train_loader_mounts_reads_two_epochs_and_verifies(tmp_path: "os.PathLike[str]") -> None:
    source = os.path.join(tmp_path, "dataset")
    cache = os.path.join(tmp_path, "cache")
    before = set(mounts_below("/tmp/tierfs-example-"))
    res = run_example("train_loader.py", "--small", "--source", source, "--cache", cache)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "verified: 192 samples x 2 epochs, every member's sha256 matches the source" in out
    for epoch in (1, 2):
        assert f"epoch {epoch}: 192 samples" in out
    assert "hit ratio" in out and "capacity" in out
    assert "unmounted" in out
    assert "MISMATCH" not in res.stderr
    # The script unmounted what it mounted, and its daemon logged no error.
    assert set(mounts_below("/tmp/tierfs-example-")) <= before
    assert_clean_log(os.path.join(cache, "tierfs.log"))


@pytest.fixture(scope="module")
def rag_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The small corpus, written once by the example itself (``--prepare``); read only."""
    corpus = os.path.join(tmp_path_factory.mktemp("rag"), "corpus")
    prep = run_example("rag_retriever.py", "--small", "--source", corpus, "--prepare")
    assert prep.returncode == 0, prep.stderr
    assert os.path.exists(os.path.join(corpus, "index", "ivf.faiss"))
    return corpus


def test_rag_retriever_on_a_given_mount_verifies_and_reports_tiers(
        rag_corpus: str, make_mount: Callable[..., Mounted]) -> None:
    corpus = rag_corpus
    with make_mount(corpus) as m:
        res = run_example("rag_retriever.py", "--small", "--source", corpus,
                          "--mount", m.mountpoint)
        assert is_mounted(m.mountpoint)  # a given mount is left mounted
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "index loaded through the mount" in out
    for name in ("cold", "tierfs-warm", "kernel-warm"):
        assert f"{name}: 40 queries x top-10 documents: query+fetch p50" in out
    assert "verified: index sha256 and 1200 fetched documents" in out
    assert ("match the source byte for byte, and every search found the ids the source's "
            "index finds") in out
    assert "MISMATCH" not in res.stderr


def test_rag_retriever_exits_nonzero_when_a_document_differs(
        tmp_path: "os.PathLike[str]", rag_corpus: str,
        make_mount: Callable[..., Mounted]) -> None:
    corpus = rag_corpus
    # A copy in which every document has one byte changed, mounted in place of the corpus:
    # the retriever reads the copy through tierfs and compares with the corpus.
    changed = os.path.join(tmp_path, "changed")
    shutil.copytree(corpus, changed)
    for folder, _, files in os.walk(os.path.join(changed, "docs")):
        for name in files:
            with open(os.path.join(folder, name), "r+b") as f:
                f.seek(-1, os.SEEK_END)
                f.write(b"?")
    with make_mount(changed) as m:
        res = run_example("rag_retriever.py", "--small", "--source", corpus,
                          "--mount", m.mountpoint, "--queries", "3")
    assert res.returncode == 1
    assert "MISMATCH cold: document" in res.stderr
    assert "FAILED:" in res.stderr
    assert "verified:" not in res.stdout


def test_train_loader_exits_nonzero_when_a_sample_differs(
        tmp_path: "os.PathLike[str]", make_mount: Callable[..., Mounted]) -> None:
    source = os.path.join(tmp_path, "dataset")
    prep = run_example("train_loader.py", "--small", "--source", source, "--prepare")
    assert prep.returncode == 0, prep.stderr
    # A copy with one byte changed in the last float of the first sample's tensor (the tar
    # stays valid, the .npy still loads), mounted in place of the dataset.
    changed = os.path.join(tmp_path, "changed")
    shutil.copytree(source, changed)
    shard = os.path.join(changed, "shards", "shard-00000.tar")
    with tarfile.open(shard) as tar:
        first = next(m for m in tar if m.name.endswith(".npy"))
    with open(shard, "r+b") as f:
        f.seek(first.offset_data + first.size - 1)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    with make_mount(changed) as m:
        res = run_example("train_loader.py", "--small", "--source", source,
                          "--mount", m.mountpoint, "--epochs", "1")
    assert res.returncode == 1
    assert f"MISMATCH epoch 1 sample {first.name[:-4]}:" in res.stderr
    assert "FAILED: 1 samples differ from the source" in res.stderr
    assert "verified:" not in res.stdout


def test_parquet_scan_with_the_training_preset_verifies(tmp_path: "os.PathLike[str]") -> None:
    pytest.importorskip("numpy")
    source = os.path.join(tmp_path, "sales")
    cache = os.path.join(tmp_path, "cache")
    before = set(mounts_below("/tmp/tierfs-example-"))
    res = run_example("parquet_scan.py", "--small", "--source", source, "--cache", cache,
                      "--config", preset("training"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "wrote 96000 rows in 24 hive partitions" in out
    assert "config " + preset("training") in out
    for name in ("cold", "warm"):
        assert re.search(rf"^{name}: \d+ rows from 6 files .* rows/s; what tierfs did:$", out,
                         re.M), out
    assert "hit ratio" in out and "capacity" in out
    assert re.search(r"verified: both scans \(\d+ rows, columns id, region, day, qty, price, "
                     r"sku\) equal the same scan of the source, row for row", out)
    assert "unmounted" in out and "MISMATCH" not in res.stderr
    assert set(mounts_below("/tmp/tierfs-example-")) <= before
    assert_clean_log(os.path.join(cache, "tierfs.log"))


def test_parquet_scan_exits_nonzero_when_a_source_byte_differs(
        tmp_path: "os.PathLike[str]", make_mount: Callable[..., Mounted]) -> None:
    pytest.importorskip("numpy")
    import pyarrow.parquet as pq

    source = os.path.join(tmp_path, "sales")
    prep = run_example("parquet_scan.py", "--small", "--source", source, "--prepare")
    assert prep.returncode == 0, prep.stderr
    # A copy with one byte flipped in the middle of the price column of a file the scan
    # reads (region eu, the last day), mounted in place of the dataset.
    changed = os.path.join(tmp_path, "changed")
    shutil.copytree(source, changed)
    path = os.path.join(changed, "region=eu", "day=6", "part-0.parquet")
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(0).column(meta.schema.names.index("price"))
    start = col.dictionary_page_offset or col.data_page_offset
    with open(path, "r+b") as f:
        f.seek(start + col.total_compressed_size // 2)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0x01]))
    with make_mount(changed, config=preset("mixed")) as m:
        res = run_example("parquet_scan.py", "--small", "--source", source,
                          "--mount", m.mountpoint)
    assert res.returncode == 1
    assert "MISMATCH cold: the scan through the mount" in res.stderr
    assert "FAILED:" in res.stderr
    assert "verified:" not in res.stdout


def test_kv_cache_with_the_serving_preset_verifies(tmp_path: "os.PathLike[str]") -> None:
    source = os.path.join(tmp_path, "store")
    cache = os.path.join(tmp_path, "cache")
    before = set(mounts_below("/tmp/tierfs-example-"))
    res = run_example("kv_cache.py", "--small", "--source", source, "--cache", cache,
                      "--config", preset("serving"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "write: 256 blocks of 64 KiB through the mount" in out
    for name in ("first", "repeat"):
        assert re.search(rf"^{name}: 1024 random block reads \(\d+ distinct\) from 4 threads "
                         r"in .*: p50 [0-9.]+ ms, p99 [0-9.]+ ms", out, re.M), out
    assert "hit ratio" in out
    assert ("verified: 256 blocks in the source and 2048 block reads match what was written, "
            "byte for byte (sha256)") in out
    assert "unmounted" in out and "MISMATCH" not in res.stderr
    assert set(mounts_below("/tmp/tierfs-example-")) <= before
    assert_clean_log(os.path.join(cache, "tierfs.log"))
    assert len(os.listdir(os.path.join(source, "blocks", "000"))) == 256


def test_kv_cache_exits_nonzero_when_a_block_differs(
        tmp_path: "os.PathLike[str]", make_mount: Callable[..., Mounted]) -> None:
    source = os.path.join(tmp_path, "store")
    prep = run_example("kv_cache.py", "--small", "--source", source, "--prepare")
    assert prep.returncode == 0, prep.stderr
    assert "verified: 256 blocks in the source match what was written" in prep.stdout
    changed = os.path.join(tmp_path, "changed")
    shutil.copytree(source, changed)
    with open(os.path.join(changed, "blocks", "000", "00000007.kv"), "r+b") as f:
        f.seek(12345)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    with make_mount(changed, config=preset("mixed")) as m:
        res = run_example("kv_cache.py", "--small", "--source", changed, "--mount",
                          m.mountpoint, "--reuse")
    assert res.returncode == 1
    assert "MISMATCH first: block 7: differs from what was written at byte 12345" in res.stderr
    assert "FAILED:" in res.stderr
    assert "verified:" not in res.stdout
