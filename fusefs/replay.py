"""Offline replay of an access trace through a policy, next to Belady's optimum.

This module owns ``tierfs replay``: it feeds a Parquet trace (:mod:`fusefs.trace`) through
the classifier and one policy as the engine would, page by page, and reports the miss ratio
overall, per classifier label and per trace label, beside the miss ratio of Belady's
offline optimum (MIN) on the same page sequence.

How a request becomes policy calls: each read request is classified (unless the classifier
is off, in which case every request is ``unknown``), announced with ``Policy.on_read``, and
split into the pages it touches; each page is one :meth:`Policy.access` with key
``(file_id, page_index)``. Write requests insert their pages (write-back data lands on the
tier) and count in no ratio. A page that hits counts as a hit for the label of its request.

Belady here is the demand-paging MIN: every missed page is inserted, and the resident page
whose next use is furthest away (never used again first) is evicted. Its miss count is the
lower bound for every policy that admits on miss; a policy that rejects (as
``workload_aware`` does) may beat it on a trace where rejecting pays. It runs in
O(n log n) with next-use indexes and a lazily cleaned heap.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .classifier import Classifier, Label
from .policies import DEFAULT_POLICY, AccessInfo, PolicyError, Tier, get_policy
from .trace import iter_batches
from .units import format_size, parse_size

__all__ = ["ReplayResult", "belady_for_trace", "belady_miss_flags", "format_result", "main", "replay"]

_LABEL_BYTES = {"sequential": b"\x00", "random": b"\x01", "unknown": b"\x02"}
_CODE_LABELS = ("sequential", "random", "unknown", "other")
_PAGE_BITS = 40  # an int page key: file_id << 40 | page (pages of files up to 4 PiB at 4 KiB)


def belady_miss_flags(keys: Sequence[int], capacity: int) -> bytearray:
    """Replay ``keys`` (unit-size objects) through Belady's MIN with ``capacity`` slots.

    Args:
        keys: The object of each access, in order.
        capacity: Objects the cache holds.

    Returns:
        One byte per access: 1 for a miss, 0 for a hit.
    """
    n = len(keys)
    flags = bytearray(n)
    if capacity <= 0:
        flags[:] = b"\x01" * n
        return flags
    # next_use[i]: when keys[i] is used next; never again is encoded as n + i, which is
    # larger than any real index and still unique, so keys[code - n] recovers the key.
    next_use = array("q", bytes(8 * n))
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        k = keys[i]
        next_use[i] = last.get(k, n + i)
        last[k] = i
    del last
    resident: dict[int, int] = {}
    heap: list[int] = []  # -next_use; stale entries are skipped when popped
    push, pop = heapq.heappush, heapq.heappop
    for i in range(n):
        k = keys[i]
        nu = next_use[i]
        if k in resident:
            resident[k] = nu
            push(heap, -nu)
            continue
        flags[i] = 1
        if len(resident) >= capacity:
            while True:
                code = -pop(heap)
                victim = keys[code] if code < n else keys[code - n]
                if resident.get(victim) == code:
                    del resident[victim]
                    break
        resident[k] = nu
        push(heap, -nu)
        if len(heap) > 2 * len(resident) + 1024:
            # Drop the stale entries so memory follows the cache, not the trace.
            heap = [-v for v in resident.values()]
            heapq.heapify(heap)
    return flags


@dataclasses.dataclass
class ReplayResult:
    """What a replay measured. Ratios are misses / accesses, counted in pages."""

    policy: str
    cache_size: int
    page_size: int
    tier: str
    use_classifier: bool
    requests: int
    accesses: int
    misses: int
    per_label: dict[str, dict[str, float]]
    per_trace_label: dict[str, dict[str, float]]
    belady: dict[str, Any] | None
    confusion: dict[str, dict[str, int]]
    classifier: dict[str, int] | None
    policy_stats: dict[str, int]
    seconds: float

    @property
    def miss_ratio(self) -> float:
        """Misses / page accesses over all reads."""
        return self.misses / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``miss_ratio`` included)."""
        out = dataclasses.asdict(self)
        out["miss_ratio"] = self.miss_ratio
        return out


def _ratio_table(counts: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    return {
        label: {"accesses": acc, "misses": miss, "miss_ratio": (miss / acc if acc else 0.0)}
        for label, (acc, miss) in sorted(counts.items())
        if acc
    }


def _file_sizes(trace: str | os.PathLike[str] | pa.Table) -> dict[int, int]:
    # The engine knows file sizes from stat; a trace only shows how far each was read.
    if isinstance(trace, pa.Table):
        table = trace.select(["file_id", "offset", "size"])
    else:
        table = pq.read_table(os.fspath(trace), columns=["file_id", "offset", "size"])
    ends = pc.add(table["offset"].cast(pa.uint64()), table["size"].cast(pa.uint64()))
    grouped = pa.table({"file_id": table["file_id"], "end": ends}).group_by("file_id").aggregate([("end", "max")])
    return dict(zip(grouped["file_id"].to_pylist(), grouped["end_max"].to_pylist()))


def _page_sequence(trace: str | os.PathLike[str] | pa.Table, page_size: int) -> tuple[array, bytearray]:
    """The pages read by a trace, in order, as int keys, with each one's trace label code."""
    keys = array("q")
    labels = bytearray()
    for batch in iter_batches(trace):
        cols = batch.to_pydict()
        for fid, off, size, op, tlabel in zip(cols["file_id"], cols["offset"], cols["size"], cols["op"], cols["label"]):
            if op != "read" or size == 0:
                continue
            first = off // page_size
            last = (off + size - 1) // page_size
            base = fid << _PAGE_BITS
            keys.extend(range(base + first, base + last + 1))
            labels.extend(_LABEL_BYTES.get(tlabel, b"\x03") * (last - first + 1))
    return keys, labels


def belady_for_trace(
    trace: str | os.PathLike[str] | pa.Table, cache_size: int, page_size: int = 4096
) -> dict[str, Any]:
    """Belady's MIN on the pages a trace reads (writes are ignored).

    Returns:
        ``misses``, ``accesses``, ``miss_ratio`` and ``per_trace_label`` (a table like
        :attr:`ReplayResult.per_trace_label`).
    """
    keys, labels = _page_sequence(trace, page_size)
    flags = belady_miss_flags(keys, cache_size // page_size)
    del keys
    label_arr = pa.Array.from_buffers(pa.uint8(), len(labels), [None, pa.py_buffer(labels)])
    miss_arr = pa.Array.from_buffers(pa.uint8(), len(flags), [None, pa.py_buffer(flags)])
    per: dict[str, list[int]] = {}
    for code, name in enumerate(_CODE_LABELS):
        mask = pc.equal(label_arr, code)
        n_acc = pc.sum(mask.cast(pa.int64())).as_py() or 0
        if n_acc:
            n_miss = pc.sum(pc.filter(miss_arr, mask).cast(pa.int64())).as_py() or 0
            per[name] = [n_acc, n_miss]
    misses = flags.count(1)
    return {
        "accesses": len(flags),
        "misses": misses,
        "miss_ratio": misses / len(flags) if len(flags) else 0.0,
        "per_trace_label": _ratio_table(per),
    }


def replay(
    trace: str | os.PathLike[str] | pa.Table,
    policy_name: str,
    cache_size: int,
    page_size: int = 4096,
    use_classifier: bool = True,
    *,
    tier: Tier | str = Tier.FAST,
    belady: bool = True,
    sequential_cutoff: int = 256 * 1024,
    policy_options: dict[str, Any] | None = None,
) -> ReplayResult:
    """Replay a trace through a policy and, optionally, through Belady's MIN.

    Args:
        trace: A Parquet trace path or a table with the trace schema.
        policy_name: A name :func:`fusefs.policies.get_policy` knows.
        cache_size: Bytes of the simulated tier.
        page_size: Bytes per cache object; requests are split into pages.
        use_classifier: Label requests with the classifier; if off, every request is
            ``unknown`` to the policy.
        tier: The tier the policy believes it manages (admission may differ per tier).
        belady: Also compute Belady's miss ratio (costs memory proportional to the trace).
        sequential_cutoff: The classifier's cutoff.
        policy_options: Extra keyword options for the policy class.

    Returns:
        The measured :class:`ReplayResult`.
    """
    if page_size <= 0:
        raise ValueError("page_size must be positive")
    started = time.perf_counter()
    now = [0.0]
    classifier = Classifier(sequential_cutoff=sequential_cutoff, clock=lambda: now[0]) if use_classifier else None
    classify = classifier.classify if classifier is not None else None
    policy = get_policy(policy_name)(
        cache_size, tier=tier, clock=lambda: now[0], object_size=page_size, **(policy_options or {})
    )
    access = policy.access
    on_read = policy.on_read
    file_sizes = _file_sizes(trace)
    unknown = Label.UNKNOWN

    counts: dict[str, list[int]] = {}
    tcounts: dict[str, list[int]] = {}
    confusion: dict[str, dict[str, int]] = {}
    requests = 0
    for batch in iter_batches(trace):
        cols = batch.to_pydict()
        for t, pid, fid, off, size, op, tlabel in zip(
            cols["time"], cols["pid"], cols["file_id"], cols["offset"], cols["size"], cols["op"], cols["label"]
        ):
            now[0] = t
            if size == 0:
                continue
            first = off // page_size
            last = (off + size - 1) // page_size
            if op != "read":
                info = AccessInfo(file_id=fid, offset=off, size=size, pid=pid, file_size=file_sizes.get(fid), op=op)
                for page in range(first, last + 1):
                    key = (fid, page)
                    policy.on_write(key, page_size, info)
                    if key not in policy and page_size <= policy.capacity - policy.pinned_bytes:
                        policy.insert(key, page_size, info)
                continue
            requests += 1
            if classify is not None:
                label, stream_id, run = classify(fid, pid, off, size)
            else:
                label, stream_id, run = unknown, None, 0
            info = AccessInfo(label, fid, off, size, pid, stream_id, run, file_sizes.get(fid))
            on_read(info)
            name = label.value
            row = confusion.get(tlabel)
            if row is None:
                row = confusion[tlabel] = {}
            row[name] = row.get(name, 0) + 1
            c = counts.get(name)
            if c is None:
                c = counts[name] = [0, 0]
            tc = tcounts.get(tlabel)
            if tc is None:
                tc = tcounts[tlabel] = [0, 0]
            n = last - first + 1
            misses = 0
            for page in range(first, last + 1):
                if not access((fid, page), page_size, info):
                    misses += 1
            c[0] += n
            c[1] += misses
            tc[0] += n
            tc[1] += misses

    accesses = sum(c[0] for c in counts.values())
    total_misses = sum(c[1] for c in counts.values())
    belady_out = belady_for_trace(trace, cache_size, page_size) if belady else None
    return ReplayResult(
        policy=policy_name,
        cache_size=cache_size,
        page_size=page_size,
        tier=str(Tier(tier)),
        use_classifier=use_classifier,
        requests=requests,
        accesses=accesses,
        misses=total_misses,
        per_label=_ratio_table(counts),
        per_trace_label=_ratio_table(tcounts),
        belady=belady_out,
        confusion={k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
        classifier=classifier.stats() if classifier is not None else None,
        policy_stats=policy.statistics(),
        seconds=time.perf_counter() - started,
    )


def format_result(result: ReplayResult) -> str:
    """A short human-readable report of a replay."""
    lines = [
        f"policy {result.policy}  tier {result.tier}  cache {format_size(result.cache_size)}  "
        f"page {format_size(result.page_size)}  classifier {'on' if result.use_classifier else 'off'}",
        f"requests {result.requests}  page accesses {result.accesses}  time {result.seconds:.1f}s",
        f"{'':24}{'accesses':>12}{'misses':>12}{'miss ratio':>12}{'belady':>10}",
        f"{'all':24}{result.accesses:>12}{result.misses:>12}{result.miss_ratio:>12.4f}"
        + (f"{result.belady['miss_ratio']:>10.4f}" if result.belady else ""),
    ]
    for label, row in result.per_label.items():
        lines.append(f"{'label ' + label:24}{row['accesses']:>12}{row['misses']:>12}{row['miss_ratio']:>12.4f}")
    b_rows = result.belady["per_trace_label"] if result.belady else {}
    for label, row in result.per_trace_label.items():
        b = b_rows.get(label)
        lines.append(
            f"{'trace ' + label:24}{row['accesses']:>12}{row['misses']:>12}{row['miss_ratio']:>12.4f}"
            + (f"{b['miss_ratio']:>10.4f}" if b else "")
        )
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierfs replay",
        description="Replay an access trace (Parquet) through a tiering policy, next to Belady's optimum.",
    )
    parser.add_argument("trace", help="the Parquet trace to replay")
    parser.add_argument("--policy", default=DEFAULT_POLICY, help=f"policy name (default {DEFAULT_POLICY})")
    parser.add_argument("--cache-size", required=True, help="size of the simulated tier, e.g. 64MiB")
    parser.add_argument("--page-size", default="4KiB", help="bytes per cache object (default 4KiB)")
    parser.add_argument("--tier", choices=[t.value for t in Tier], default=Tier.FAST.value, help="tier simulated")
    parser.add_argument("--sequential-cutoff", default="256KiB", help="classifier cutoff (default 256KiB)")
    parser.add_argument("--no-classifier", action="store_true", help="label every request unknown")
    parser.add_argument("--no-belady", action="store_true", help="skip Belady's optimum (saves memory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tierfs replay``.

    Returns:
        0 on success, 1 if the trace or the policy cannot be used (a message on stderr),
        2 for bad arguments (from argparse).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        cache_size = parse_size(args.cache_size)
        page_size = parse_size(args.page_size)
        cutoff = parse_size(args.sequential_cutoff)
    except ValueError as exc:
        parser.error(str(exc))
    if page_size <= 0:
        parser.error("--page-size must be positive")
    try:
        result = replay(
            args.trace,
            args.policy,
            cache_size,
            page_size,
            not args.no_classifier,
            tier=args.tier,
            belady=not args.no_belady,
            sequential_cutoff=cutoff,
        )
    except (OSError, ValueError, LookupError, PolicyError, pa.ArrowException) as exc:
        print(f"tierfs replay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_result(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m fusefs.replay`
    sys.exit(main())
