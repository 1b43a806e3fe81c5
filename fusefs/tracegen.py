"""Synthetic access traces: the workload families policies are measured on.

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
* :func:`drifting_zipf_trace`: the Zipf reader whose popularity ranking drifts: every
  ``drift_every`` requests a share of the ranks trade their objects (a RAG index whose hot
  documents change with the news).
* :func:`loop_trace`: the same scattered objects read over and over in one fixed order (an
  evaluation pass over a subset of an index), a loop that may be larger than the cache.
* :func:`multi_tenant_trace`: several Zipf readers (tenants) of their own files with their
  own sizes and skews, request by request at random by share.
* :func:`family_trace` builds the named families of :data:`FAMILIES` from these at a given
  scale, so the report, the tests and a user replay the very same shapes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import pyarrow as pa

from .trace import COLUMNS, SCHEMA

__all__ = [
    "FAMILIES",
    "drifting_zipf_trace",
    "family_trace",
    "interleave",
    "loop_trace",
    "multi_tenant_trace",
    "scan_trace",
    "zipf_trace",
]


def _table(cols: dict[str, list[object]]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA)


def _random_reads(offsets: list[int], *, object_size: int, file: str, file_id: int, pid: int,
                  interval: float) -> pa.Table:
    n = len(offsets)
    return _table(
        {
            "time": [i * interval for i in range(n)],
            "pid": [pid] * n,
            "file": [file] * n,
            "file_id": [file_id] * n,
            "offset": offsets,
            "size": [object_size] * n,
            "op": ["read"] * n,
            "label": ["random"] * n,
        }
    )


def _zipf_cum(n_objects: int, alpha: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** alpha for k in range(n_objects)))


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
    ranks = rng.choices(range(n_objects), cum_weights=_zipf_cum(n_objects, alpha), k=n_requests)
    slots = list(range(n_objects))
    if scatter:
        rng.shuffle(slots)
    offsets = [slots[r] * object_size for r in ranks]
    return _random_reads(offsets, object_size=object_size, file=file, file_id=file_id, pid=pid, interval=interval)


def drifting_zipf_trace(
    *,
    n_objects: int,
    n_requests: int,
    alpha: float = 0.9,
    drift_every: int = 150_000,
    drift_fraction: float = 0.15,
    mode: str = "rotate",
    object_size: int = 4096,
    seed: int = 0,
    file: str = "index/emb.bin",
    file_id: int = 1,
    pid: int = 1000,
    interval: float = 1e-5,
) -> pa.Table:
    """Zipf random reads whose popularity ranking drifts.

    Ranks are drawn as in :func:`zipf_trace`; rank ``r`` reads the object in slot
    ``slots[r]``. Every ``drift_every`` requests the ranking shifts:

    * ``mode="rotate"``: the ranking rotates by ``drift_fraction`` of the objects (rank
      ``r`` now reads the object rank ``r + shift`` read before): the whole hot set is
      replaced by objects that were lukewarm, and history misleads a frequency policy.
    * ``mode="shuffle"``: ``drift_fraction`` of the ranks, chosen at random over all of
      them, trade their objects among themselves: a share of the hot set changes.

    Args:
        n_objects: Distinct objects.
        n_requests: Requests to generate.
        alpha: Zipf exponent.
        drift_every: Requests between two shifts of the ranking.
        drift_fraction: Share of the objects the ranking moves by (``rotate``) or of the
            ranks reshuffled (``shuffle``) at each shift.
        mode: ``"rotate"`` or ``"shuffle"``.
        object_size: Bytes per object and per request.
        seed: Seed of the generator.
        file: Path recorded for the file holding the objects.
        file_id: Its id.
        pid: The reading process.
        interval: Seconds between two requests.

    Returns:
        The trace; ``label`` is ``"random"``.
    """
    if n_objects <= 0 or n_requests < 0 or drift_every <= 0 or not 0.0 <= drift_fraction <= 1.0:
        raise ValueError("n_objects and drift_every must be positive, drift_fraction in [0, 1]")
    if mode not in ("rotate", "shuffle"):
        raise ValueError("mode must be 'rotate' or 'shuffle'")
    rng = random.Random(seed)
    cum = _zipf_cum(n_objects, alpha)
    slots = list(range(n_objects))
    rng.shuffle(slots)
    n_moved = int(n_objects * drift_fraction)
    offsets: list[int] = []
    done = 0
    while done < n_requests:
        if done and mode == "rotate":
            slots = slots[n_moved:] + slots[:n_moved]
        elif done:
            moved = rng.sample(range(n_objects), n_moved)
            taken = [slots[r] for r in moved]
            rng.shuffle(taken)
            for r, slot in zip(moved, taken):
                slots[r] = slot
        k = min(drift_every, n_requests - done)
        offsets.extend(slots[r] * object_size for r in rng.choices(range(n_objects), cum_weights=cum, k=k))
        done += k
    return _random_reads(offsets, object_size=object_size, file=file, file_id=file_id, pid=pid, interval=interval)


def loop_trace(
    *,
    n_objects: int,
    n_requests: int,
    object_size: int = 4096,
    seed: int = 0,
    file: str = "index/emb.bin",
    file_id: int = 1,
    pid: int = 1000,
    interval: float = 1e-5,
) -> pa.Table:
    """The same ``n_objects`` scattered objects read again and again in one fixed order.

    The objects sit at random slots of a file of ``n_objects`` slots, so the reads look
    random to the classifier; the order never changes, so every object is reused exactly
    ``n_objects`` requests later. LRU and FIFO miss every read once the loop is larger than
    the cache; the optimum keeps a fixed part of the loop.

    Returns:
        The trace; ``label`` is ``"random"``.
    """
    if n_objects <= 0 or n_requests < 0:
        raise ValueError("n_objects must be positive and n_requests not negative")
    rng = random.Random(seed)
    slots = list(range(n_objects))
    rng.shuffle(slots)
    offsets = [slots[i % n_objects] * object_size for i in range(n_requests)]
    return _random_reads(offsets, object_size=object_size, file=file, file_id=file_id, pid=pid, interval=interval)


def multi_tenant_trace(
    *,
    tenants: Sequence[tuple[int, float, float]],
    n_requests: int,
    object_size: int = 4096,
    seed: int = 0,
    first_file_id: int = 1,
    first_pid: int = 1000,
    file_prefix: str = "tenant-",
    interval: float = 1e-5,
) -> pa.Table:
    """Several Zipf readers, each of its own file, interleaved request by request.

    Args:
        tenants: ``(n_objects, alpha, share)`` per tenant: its working set, its skew and
            its share of the requests (shares are normalised).
        n_requests: Requests to generate over all tenants.
        object_size: Bytes per object and per request.
        seed: Seed of the generator.
        first_file_id: File id of tenant 0; the others follow.
        first_pid: Pid of tenant 0; the others follow.
        file_prefix: Tenant ``t`` reads ``{file_prefix}{t}/emb.bin``.
        interval: Seconds between two requests.

    Returns:
        The trace; ``label`` is ``"random"``.
    """
    if not tenants or n_requests < 0 or any(n <= 0 or share <= 0 for n, _, share in tenants):
        raise ValueError("tenants need positive sizes and shares")
    rng = random.Random(seed)
    who = rng.choices(range(len(tenants)), weights=[t[2] for t in tenants], k=n_requests)
    # Each tenant's ranks are drawn in one go, then handed out in order.
    draws: list[Iterator[int]] = []
    for t, (n_obj, alpha, _) in enumerate(tenants):
        slots = list(range(n_obj))
        rng.shuffle(slots)
        count = who.count(t)
        ranks = rng.choices(range(n_obj), cum_weights=_zipf_cum(n_obj, alpha), k=count)
        draws.append(iter([slots[r] * object_size for r in ranks]))
    offsets = [next(draws[t]) for t in who]
    n = n_requests
    return _table(
        {
            "time": [i * interval for i in range(n)],
            "pid": [first_pid + t for t in who],
            "file": [f"{file_prefix}{t}/emb.bin" for t in who],
            "file_id": [first_file_id + t for t in who],
            "offset": offsets,
            "size": [object_size] * n,
            "op": ["read"] * n,
            "label": ["random"] * n,
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
    n_files: int | None = None,
) -> pa.Table:
    """Sequential scans by several workers, interleaved request by request.

    Worker ``w`` (pid ``first_pid + w``) reads files ``w``, ``w + workers``, ... once each,
    from start to end. With ``n_files`` the files are ``0 .. n_files - 1`` and a worker that
    has read its share starts over (a second epoch, a third, ...). At every step a random worker issues its next request. With
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
        n_files: Files in all (at least ``workers``); ``None``: a fresh file after each one,
            every file read once.

    Returns:
        The trace; ``label`` is ``"sequential"``.
    """
    if workers <= 0 or request_size <= 0 or file_size < request_size:
        raise ValueError("workers and request_size must be positive, file_size >= request_size")
    if n_files is not None and n_files < workers:
        raise ValueError("n_files must be at least workers")
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
        if ridx + 1 < per_file:
            nxt = (fidx, ridx + 1)
        else:
            nf = fidx + workers
            if n_files is not None and nf >= n_files:
                nf = w  # the worker's share is done: its next epoch
            nxt = (nf, 0)
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


FAMILIES: tuple[str, ...] = ("zipf", "drift", "loop", "scan", "tenants")
"""The named workload families of :func:`family_trace`, in report order."""


def family_trace(name: str, *, n_objects: int, n_requests: int, seed: int = 0, object_size: int = 4096,
                 drift_every: int | None = None) -> pa.Table:
    """One workload family at a scale: ``n_objects`` random-read objects (the working set
    caches are sized against) and ``n_requests`` random requests (scan requests come on top).

    Families:

    * ``zipf``: stationary Zipf(1.0), the shape of :func:`zipf_trace`.
    * ``drift``: Zipf(0.9) whose ranking shifts by 15% of the objects every
      ``drift_every`` requests (default ``0.6 * n_objects``), beside two streams reading
      four shards (each an eighth of the index) twice: issue 18's trace, scaled.
    * ``loop``: all ``n_objects`` read over and over in one scattered order.
    * ``scan``: Zipf(0.9) beside two streams reading four small shards (each 2.5% of the
      index) epoch after epoch, as many pages as the random reads; a shard fits in half of
      a 10% cache, so its second epoch is admitted there.
    * ``tenants``: three tenants: 15% of the objects at Zipf(1.2) with half the requests,
      60% at Zipf(0.8) with 35%, 25% at Zipf(0.5) with 15%.

    Returns:
        The trace; the random readers' rows are labelled ``"random"``, the streams'
        ``"sequential"``.
    """
    n, r, page = n_objects, n_requests, object_size
    if name == "zipf":
        return zipf_trace(n_objects=n, n_requests=r, alpha=1.0, object_size=page, seed=seed)
    if name == "loop":
        return loop_trace(n_objects=n, n_requests=r, object_size=page, seed=seed)
    if name == "tenants":
        tenants = [(max(n * 15 // 100, 1), 1.2, 0.5), (max(n * 60 // 100, 1), 0.8, 0.35), (max(n * 25 // 100, 1), 0.5, 0.15)]
        return multi_tenant_trace(tenants=tenants, n_requests=r, object_size=page, seed=seed)
    if name in ("drift", "scan"):
        if name == "drift":
            rand = drifting_zipf_trace(
                n_objects=n, n_requests=r, alpha=0.9,
                drift_every=drift_every if drift_every else max(n * 6 // 10, 1), drift_fraction=0.15,
                object_size=page, seed=seed,
            )
            shard_pages, epochs = max(n // 8, 16), 2
        else:
            rand = zipf_trace(n_objects=n, n_requests=r, alpha=0.9, object_size=page, seed=seed)
            shard_pages, epochs = max(n // 40, 16), 0
        request = 4 * page  # 16 KiB reads, as a loader's
        shard_pages = -(-shard_pages // 4) * 4
        per_epoch = 4 * shard_pages // 4  # requests of one pass over the four shards
        # Endless epochs take a fifth of the requests (as many pages as the random reads).
        n_scan = r // 4 if not epochs else epochs * per_epoch
        scans = scan_trace(
            n_requests=n_scan, request_size=request, file_size=shard_pages * page, workers=2, n_files=4,
            reorder=0.05, seed=seed + 1,
        )
        return interleave(rand, scans, mode="burst", burst=200, share_b=n_scan / (n_scan + r), seed=seed + 2)
    raise ValueError(f"unknown trace family {name!r}; families: {', '.join(FAMILIES)}")
