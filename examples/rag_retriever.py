#!/usr/bin/env python3
"""A RAG retriever with faiss-cpu whose index and documents are read through a tierfs mount.

One command: ``python examples/rag_retriever.py`` writes a small corpus in a temporary
folder (``--source DIR`` to keep it, or to use one written before): random embeddings
(numpy), a faiss IVF index over them (``index/ivf.faiss``) and one small text file per
document (``docs/ID/ID.txt``, by id). It mounts the folder with ``tierfs mount`` (or uses
``--mount MNT``), loads the index through the mount, and for each query searches it and
fetches the top-10 documents by id, as a retriever feeding an LLM would.

Passes over the same queries:
  cold         right after the mount: every byte comes from the capacity tier
  tierfs-warm  the kernel's page cache of the fetched files is dropped first
               (posix_fadvise DONTNEED on each file), so tierfs's own tiers answer
  kernel-warm  nothing dropped: the kernel's page cache answers most reads

Every fetched document is compared with the source file (read directly, not through the
mount), the index file's sha256 with the source's, and every search's ids with those of
the index read from the source; any difference exits 1. It prints
p50/p99 of query+fetch latency per pass and what each tier served (``tierfs stats --json``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time

import faiss
import numpy as np

import _tierfs

TOP_K = 10
WORDS = ("vector", "shard", "tensor", "cache", "tier", "query", "token", "model", "page",
         "index", "prompt", "layer", "batch", "graph", "epoch")


def scale(small: bool) -> dict[str, int]:
    if small:
        return {"docs": 2000, "dim": 64, "nlist": 32, "queries": 40}
    return {"docs": 50000, "dim": 128, "nlist": 256, "queries": 500}


def doc_path(root: str, i: int) -> str:
    """Documents by id, 1,000 to a folder: ``docs/000/000123.txt``."""
    return os.path.join(root, "docs", f"{i // 1000:03d}", f"{i:06d}.txt")


def write_corpus(root: str, docs: int, dim: int, nlist: int) -> None:
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((docs, dim), dtype=np.float32)
    faiss.normalize_L2(emb)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(emb)
    index.add(emb)  # ids 0..docs-1: the document ids
    os.makedirs(os.path.join(root, "index"), exist_ok=True)
    faiss.write_index(index, os.path.join(root, "index", "ivf.faiss.part"))
    for i in range(docs):
        path = doc_path(root, i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        words = rng.choice(WORDS, size=int(rng.integers(30, 400)))
        with open(path, "w") as f:
            f.write(f"document {i}\n" + " ".join(words) + "\n")
    # The index last: its presence says the corpus is complete.
    os.rename(os.path.join(root, "index", "ivf.faiss.part"),
              os.path.join(root, "index", "ivf.faiss"))


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="corpus folder (written here if it has no index; "
                                     "default: a temporary folder)")
    ap.add_argument("--mount", help="an existing tierfs mount of --source (default: mount "
                                    "it here and unmount at the end)")
    ap.add_argument("--cache", help="cache directory when this script mounts (default: temp)")
    ap.add_argument("--small", action="store_true", help="test scale (2,000 documents)")
    ap.add_argument("--prepare", action="store_true", help="only write the corpus")
    ap.add_argument("--queries", type=int, help="queries per pass (default: by scale)")
    ap.add_argument("--nprobe", type=int, default=8, help="IVF lists searched per query")
    args = ap.parse_args()
    if args.mount and not args.source:
        ap.error("--mount needs --source (the folder it mounts) to verify against")
    _tierfs.exit_on_sigterm()
    faiss.omp_set_num_threads(1)  # one query at a time: latency, not throughput

    tmp = None if args.source else tempfile.mkdtemp(prefix="tierfs-rag-")
    source = os.path.abspath(args.source or os.path.join(tmp, "corpus"))
    try:
        sc = scale(args.small)
        if not os.path.exists(os.path.join(source, "index", "ivf.faiss")):
            t = time.perf_counter()
            write_corpus(source, sc["docs"], sc["dim"], sc["nlist"])
            print(f"wrote an IVF index over {sc['docs']} embeddings (dim {sc['dim']}) and "
                  f"{sc['docs']} documents to {source} in {time.perf_counter() - t:.1f}s",
                  flush=True)
        if args.prepare:
            return 0
        return run(args, source, args.queries or sc["queries"])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, source: str, n_queries: int) -> int:
    bad = 0
    want_index = sha256(os.path.join(source, "index", "ivf.faiss"))
    with _tierfs.mounted(source, args.mount, args.cache) as mnt:
        index_path = os.path.join(mnt, "index", "ivf.faiss")
        before = _tierfs.stats(mnt)
        t = time.perf_counter()
        index = faiss.read_index(index_path)
        load_s = time.perf_counter() - t
        index.nprobe = args.nprobe
        index_bytes = os.path.getsize(index_path)
        last = _tierfs.stats(mnt)
        print(f"index loaded through the mount in {load_s * 1000:.0f} ms: {index.ntotal} "
              f"vectors, {index.nlist} lists, {index_bytes / 2**20:.1f} MiB; what tierfs did:")
        print(_tierfs.describe(_tierfs.delta(before, last), index_bytes))

        rng = np.random.default_rng(99)
        queries = rng.standard_normal((n_queries, index.d), dtype=np.float32)
        faiss.normalize_L2(queries)
        # The answers the index read from the source gives (read directly, not via the mount).
        truth = faiss.read_index(os.path.join(source, "index", "ivf.faiss"))
        truth.nprobe = args.nprobe
        want_ids = truth.search(queries, TOP_K)[1]
        del truth
        fetched: set[str] = set()
        checked = 0
        for name in ("cold", "tierfs-warm", "kernel-warm"):
            if name == "tierfs-warm":
                for path in fetched:
                    _tierfs.drop_kernel_cache(path)
                last = _tierfs.stats(mnt)  # the opens above are not the pass's
            before = last
            lat, nbytes = [], 0
            for qi, q in enumerate(queries):
                t = time.perf_counter()
                _, ids = index.search(q[None, :], TOP_K)
                docs = []
                for i in ids[0]:
                    if i < 0:
                        continue
                    path = doc_path(mnt, int(i))
                    with open(path, "rb") as f:
                        docs.append((int(i), path, f.read()))
                lat.append(time.perf_counter() - t)
                if not np.array_equal(ids[0], want_ids[qi]):
                    bad += 1
                    print(f"MISMATCH {name}: query {qi} found {ids[0].tolist()}, the source's "
                          f"index {want_ids[qi].tolist()}", file=sys.stderr)
                for i, path, data in docs:
                    fetched.add(path)
                    nbytes += len(data)
                    with open(doc_path(source, i), "rb") as f:
                        if data != f.read():
                            bad += 1
                            print(f"MISMATCH {name}: document {i} differs from the source",
                                  file=sys.stderr)
                    checked += 1
            after = last = _tierfs.stats(mnt)
            print(f"{name}: {n_queries} queries x top-{TOP_K} documents: query+fetch "
                  f"p50 {_tierfs.percentile(lat, 50) * 1e3:.2f} ms, p99 {_tierfs.percentile(lat, 99) * 1e3:.2f} "
                  f"ms; what tierfs did:")
            print(_tierfs.describe(_tierfs.delta(before, after), nbytes))
        snap = last
        print(_tierfs.holdings(snap))
        if sha256(index_path) != want_index:
            bad += 1
            print("MISMATCH: the index read through the mount differs from the source",
                  file=sys.stderr)
    if bad:
        print(f"FAILED: {bad} mismatches with the source", file=sys.stderr)
        return 1
    print(f"verified: index sha256 and {checked} fetched documents "
          f"({len(fetched)} distinct) match the source byte for byte, and every search "
          f"found the ids the source's index finds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
