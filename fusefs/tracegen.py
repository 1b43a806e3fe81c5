"""Synthetic access traces: Zipf random reads, one-pass sequential scans, and mixtures.

This module owns the workloads the policies are measured on when no recorded trace is at
hand. Every generator is seeded (``random.Random``, no global state), returns a
``pyarrow.Table`` with the trace schema of :mod:`fusefs.trace`, and writes the ground truth
in the ``label`` column (``"random"`` for the Zipf reader, ``"sequential"`` for scans), so a
replay can score the classifier against it.

Shapes:

* :func:`zipf_trace`: a retrieval-style reader, ``object_size`` reads of ``n_objects``
  objects in one file, popularity Zipf(``alpha``); popular objects are scattered over the
  file (a random permutation), as embeddings of popular documents are.
* :func:`scan_trace`: training-loader workers, each streaming its own files once from start
  to end in ``request_size`` reads, their requests interleaved, with optional kernel-style
  reordering of neighbouring requests.
* :func:`interleave`: merges two traces, request by request at random or in bursts,
  keeping each one's own order; times are renumbered.
"""

from __future__ import annotations

import itertools
import random

import pyarrow as pa

from .trace import COLUMNS, SCHEMA

__all__ = ["interleave", "scan_trace", "zipf_trace"]


def _table(cols: dict[str, list[object]]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA)


def zipf_trace(
    *,
    n_objects: int,
    n_requests: int,
    alpha: float = 1.0,
    object_size: int = 4096,
    seed: int = 0,
    file: str = "index/emb.bin",
    file_id: int = 1,
    pid: int = 1000,
    interval: float = 1e-5,
    scatter: bool = True,
) -> pa.Table:
    """Random reads of equal-size objects with Zipf popularity.

    Args:
        n_objects: Distinct objects (object ``k`` of popularity rank ``k``).
        n_requests: Requests to generate.
        alpha: Zipf exponent (1.0: the classic skew of web and retrieval workloads).
        object_size: Bytes per object and per request.
        seed: Seed of the generator.
        file: Path recorded for the file holding the objects.
        file_id: Its id.
        pid: The reading process.
        interval: Seconds between two requests.
        scatter: Place objects at random slots of the file (else rank order).

    Returns:
        The trace; ``label`` is ``"random"``.
    """
    if n_objects <= 0 or n_requests < 0:
        raise ValueError("n_objects must be positive and n_requests not negative")
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (k + 1) ** alpha for k in range(n_objects)))
    ranks = rng.choices(range(n_objects), cum_weights=cum, k=n_requests)
    slots = list(range(n_objects))
    if scatter:
        rng.shuffle(slots)
    offsets = [slots[r] * object_size for r in ranks]
    return _table(
        {
            "time": [i * interval for i in range(n_requests)],
            "pid": [pid] * n_requests,
            "file": [file] * n_requests,
            "file_id": [file_id] * n_requests,
            "offset": offsets,
            "size": [object_size] * n_requests,
            "op": ["read"] * n_requests,
            "label": ["random"] * n_requests,
        }
    )


def scan_trace(
    *,
    n_requests: int,
    request_size: int = 128 * 1024,
    file_size: int = 256 * 1024 * 1024,
    workers: int = 4,
    reorder: float = 0.0,
    seed: int = 0,
    first_file_id: int = 100,
    first_pid: int = 2000,
    file_prefix: str = "shards/shard-",
    interval: float = 1e-5,
) -> pa.Table:
    """One-pass sequential scans by several workers, interleaved request by request.

    Worker ``w`` (pid ``first_pid + w``) reads files ``w``, ``w + workers``, ... once each,
    from start to end. At every step a random worker issues its next request. With
    ``reorder > 0`` a request is swapped with its worker's next one with that probability,
    as the kernel does when it splits read-ahead over several FUSE threads.

    Args:
        n_requests: Requests to generate.
        request_size: Bytes per request.
        file_size: Bytes per file (a multiple of ``request_size`` is tidiest).
        workers: Concurrent streams (processes).
        reorder: Probability of swapping a request with the worker's next one.
        seed: Seed of the generator.
        first_file_id: Id of the first file; the others follow.
        first_pid: Pid of worker 0.
        file_prefix: Path prefix of the files.
        interval: Seconds between two requests.

    Returns:
        The trace; ``label`` is ``"sequential"``.
    """
    if workers <= 0 or request_size <= 0 or file_size < request_size:
        raise ValueError("workers and request_size must be positive, file_size >= request_size")
    rng = random.Random(seed)
    per_file = -(-file_size // request_size)
    # Each worker's position: (file index, request index in file).
    pos = [(w, 0) for w in range(workers)]
    pending: list[tuple[int, int] | None] = [None] * workers  # a request held back by reordering
    pids: list[int] = []
    files: list[str] = []
    fids: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []

    def advance(w: int) -> tuple[int, int]:
        fidx, ridx = pos[w]
        nxt = (fidx, ridx + 1) if ridx + 1 < per_file else (fidx + workers, 0)
        pos[w] = nxt
        return fidx, ridx

    for _ in range(n_requests):
        w = rng.randrange(workers)
        held = pending[w]
        if held is not None:
            fidx, ridx = held
            pending[w] = None
        else:
            fidx, ridx = advance(w)
            if reorder > 0.0 and rng.random() < reorder:
                pending[w] = (fidx, ridx)
                fidx, ridx = advance(w)
        off = ridx * request_size
        pids.append(first_pid + w)
        files.append(f"{file_prefix}{fidx:05d}")
        fids.append(first_file_id + fidx)
        offsets.append(off)
        sizes.append(min(request_size, file_size - off))
    n = len(pids)
    return _table(
        {
            "time": [i * interval for i in range(n)],
            "pid": pids,
            "file": files,
            "file_id": fids,
            "offset": offsets,
            "size": sizes,
            "op": ["read"] * n,
            "label": ["sequential"] * n,
        }
    )


def interleave(
    a: pa.Table,
    b: pa.Table,
    *,
    mode: str = "request",
    share_b: float = 0.5,
    burst: int = 1000,
    seed: int = 0,
    interval: float = 1e-5,
) -> pa.Table:
    """Merge two traces, keeping the order of each; the result's times are renumbered.

    Args:
        a: First trace.
        b: Second trace.
        mode: ``"request"``: each request comes from ``b`` with probability ``share_b``;
            ``"burst"``: runs of requests from one trace or the other, each of a random
            length with mean about ``burst`` (exponential), from ``b`` with probability
            ``share_b``.
        share_b: Probability that the next request (or burst) comes from ``b``.
        burst: Mean run length in ``"burst"`` mode.
        seed: Seed of the generator.
        interval: Seconds between two requests of the result.

    Returns:
        All rows of both traces; when one runs out the rest of the other follows.
    """
    if mode not in ("request", "burst"):
        raise ValueError("mode must be 'request' or 'burst'")
    rng = random.Random(seed)
    na, nb = a.num_rows, b.num_rows
    ia, ib = 0, 0
    order: list[int] = []
    if mode == "request":
        rand = rng.random
        while ia < na and ib < nb:
            if rand() < share_b:
                order.append(na + ib)
                ib += 1
            else:
                order.append(ia)
                ia += 1
    else:
        rate = 1.0 / max(burst, 1)
        while ia < na and ib < nb:
            length = 1 + int(rng.expovariate(rate))
            if rng.random() < share_b:
                take = min(length, nb - ib)
                order.extend(range(na + ib, na + ib + take))
                ib += take
            else:
                take = min(length, na - ia)
                order.extend(range(ia, ia + take))
                ia += take
    order.extend(range(ia, na))
    order.extend(range(na + ib, na + nb))
    merged = pa.concat_tables([a.select(list(COLUMNS)).cast(SCHEMA), b.select(list(COLUMNS)).cast(SCHEMA)])
    merged = merged.take(pa.array(order, type=pa.int64()))
    times = pa.array([i * interval for i in range(len(order))], type=pa.float64())
    return merged.set_column(0, SCHEMA.field("time"), times)
