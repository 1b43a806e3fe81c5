"""``tierfs report``: an HTML page with PNG charts drawn from an access trace.

From a Parquet trace (:mod:`fusefs.trace`) recorded by a mount (``[stats] trace``), this
writes into an output directory:

``tiers.png``
    Per access class (the recorder's label), the share of read bytes each tier served in
    each time bin, and the hit ratio (bytes not fetched from the capacity tier). Needs the
    trace's ``tier`` column (recorded by mounts since it was added; older traces lack it).
``latency.png``
    Distributions (CDFs) of the daemon's answer time per class and per serving tier, with
    p50 and p99. Needs the ``latency`` column.
``classes.png``
    Classification over time: read requests and read bytes per second in each class.
``occupancy.png``
    Bytes the DRAM tier and the fast tier held over time, and the fast tier's pinned bytes.
    Needs the trace's occupancy columns (sampled at most once a second, with the requests;
    older traces lack them).
``replay.png``
    The shipped policies replayed on the trace's reads (:func:`fusefs.replay.replay`) at
    several cache sizes, beside Belady's offline bound.
``index.html``
    The charts, the numbers behind them (tables) and notes on what a trace cannot show.

Reads answered by the kernel's page cache never reach the daemon and so are not in the
trace, nor is what the kernel's page cache holds; occupancy samples come with requests, so
an idle stretch has none.

matplotlib is imported only here, lazily, with the Agg backend: the daemon never loads it.
It is the ``report`` extra (``pip install 'tierfs[report]'``).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .policies import PolicyError, builtin_policies
from .replay import belady_for_trace, replay
from .trace import read_trace_extended
from .units import format_size, parse_size

__all__ = ["Report", "build_report", "main"]

CLASSES = ("sequential", "random", "unknown")
TIERS = ("dram", "fast", "ahead", "capacity")
TIER_COLORS = {"dram": "#2b8a3e", "fast": "#1c7ed6", "ahead": "#9c36b5", "capacity": "#e8590c",
               "unrecorded": "#adb5bd"}
CLASS_COLORS = {"sequential": "#1c7ed6", "random": "#e8590c", "unknown": "#868e96"}
TIER_TEXT = {"dram": "DRAM page cache", "fast": "fast tier (NVMe)",
             "ahead": "walk-ahead buffer", "capacity": "capacity tier (the source)",
             "unrecorded": "tier not recorded"}


@dataclass
class Report:
    """What `build_report` wrote and measured."""

    output: str
    charts: dict[str, str] = field(default_factory=dict)  # name -> PNG path
    replay: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def html(self) -> str:
        return os.path.join(self.output, "index.html")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _bins(t: list[float], nbins: int) -> tuple[list[int], list[float], float]:
    """Bin index of each time, bin centres (seconds from the start), bin width."""
    t0, t1 = min(t), max(t)
    span = max(t1 - t0, 1e-6)
    width = span / nbins
    idx = [min(int((x - t0) / width), nbins - 1) for x in t]
    centres = [(i + 0.5) * width for i in range(nbins)]
    return idx, centres, width


def _time_label(span: float) -> tuple[str, float]:
    if span >= 600:
        return "minutes since the trace began", 60.0
    if span >= 2:
        return "seconds since the trace began", 1.0
    return "milliseconds since the trace began", 1e-3


def _quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


def _fmt_lat(s: float) -> str:
    if math.isnan(s):
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _tier_chart(plt: Any, reads: dict[str, list[Any]], nbins: int, path: str) -> dict[str, Any]:
    """Share of read bytes per serving tier over time, one panel per class."""
    times = reads["time"]
    idx, centres, _ = _bins(times, nbins)
    span = max(times) - min(times)
    xlabel, scale = _time_label(span)
    xs = [c / scale for c in centres]
    present = [c for c in CLASSES if c in set(reads["label"])]
    # per class: per tier: bytes per bin
    per: dict[str, dict[str, list[float]]] = {c: {} for c in present}
    totals: dict[str, dict[str, float]] = {c: {} for c in present}
    for b, label, size, tier in zip(idx, reads["label"], reads["size"], reads["tier"]):
        if label not in per:
            continue
        parts = tier.split("+") if tier else ["unrecorded"]
        share = size / len(parts)
        for t in parts:
            row = per[label].setdefault(t, [0.0] * nbins)
            row[b] += share
            totals[label][t] = totals[label].get(t, 0.0) + share
    order = [t for t in (*TIERS, "unrecorded")]
    fig, axes = plt.subplots(len(present), 1, figsize=(9, 2.9 * len(present) + 0.6), sharex=True,
                             squeeze=False)
    for ax, label in zip(axes[:, 0], present):
        rows = per[label]
        tiers = [t for t in order if t in rows] + sorted(t for t in rows if t not in order)
        bin_total = [sum(rows[t][i] for t in tiers) for i in range(nbins)]
        keep = [i for i in range(nbins) if bin_total[i] > 0]
        x = [xs[i] for i in keep]
        ys = [[rows[t][i] / bin_total[i] for i in keep] for t in tiers]
        ax.stackplot(x, ys, labels=[TIER_TEXT.get(t, t) for t in tiers],
                     colors=[TIER_COLORS.get(t, "#495057") for t in tiers], alpha=0.85, step=None)
        hit = [1 - rows.get("capacity", [0.0] * nbins)[i] / bin_total[i] for i in keep]
        if "unrecorded" not in rows:
            ax.plot(x, hit, color="black", lw=1.6, label="hit ratio (not from capacity)")
        total = sum(totals[label].values())
        overall = 1 - totals[label].get("capacity", 0.0) / total if total else 0.0
        ax.set_title(f"{label} reads: share of bytes by serving tier "
                     f"({format_size(int(total))} read, hit ratio {overall:.0%})", loc="left")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("share of read bytes")
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {label: {t: int(v) for t, v in totals[label].items()} for label in present}


def _latency_chart(plt: Any, reads: dict[str, list[Any]], path: str) -> dict[str, dict[str, float]]:
    """CDFs of latency per class and per (single) serving tier."""
    groups: dict[str, dict[str, list[float]]] = {"class": {}, "tier": {}}
    for label, tier, lat in zip(reads["label"], reads["tier"], reads["latency"]):
        if lat is None or lat <= 0:
            continue
        groups["class"].setdefault(label, []).append(lat)
        groups["tier"].setdefault(tier or "unrecorded", []).append(lat)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    table: dict[str, dict[str, float]] = {}
    for ax, (kind, by) in zip(axes, groups.items()):
        colors = CLASS_COLORS if kind == "class" else TIER_COLORS
        for name in sorted(by, key=lambda n: -len(by[n])):
            vals = sorted(by[name])
            n = len(vals)
            p50, p99 = _quantile(vals, 0.5), _quantile(vals, 0.99)
            table[f"{kind} {name}"] = {"requests": n, "p50": p50, "p99": p99, "max": vals[-1]}
            ax.step([v * 1e3 for v in vals], [(i + 1) / n for i in range(n)], where="post",
                    color=colors.get(name, "#495057"), lw=1.8,
                    label=f"{name}: n={n}, p50 {_fmt_lat(p50)}, p99 {_fmt_lat(p99)}")
        ax.set_xscale("log")
        ax.set_xlabel("read latency in the daemon (ms, log scale)")
        ax.set_title(f"by {'access class' if kind == 'class' else 'serving tier'}", loc="left")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("fraction of reads at most this slow")
    axes[0].set_ylim(0, 1.02)
    fig.suptitle("Read latency distributions (CDF)", x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return table


def _class_chart(plt: Any, reads: dict[str, list[Any]], nbins: int, path: str) -> dict[str, Any]:
    """Read requests/s and MiB/s per class over time."""
    times = reads["time"]
    idx, centres, width = _bins(times, nbins)
    xlabel, scale = _time_label(max(times) - min(times))
    xs = [c / scale for c in centres]
    present = [c for c in CLASSES if c in set(reads["label"])]
    present += sorted(set(reads["label"]) - set(present))
    reqs = {c: [0.0] * nbins for c in present}
    nbytes = {c: [0.0] * nbins for c in present}
    for b, label, size in zip(idx, reads["label"], reads["size"]):
        reqs[label][b] += 1
        nbytes[label][b] += size
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    colors = [CLASS_COLORS.get(c, "#495057") for c in present]
    a1.stackplot(xs, [[v / width for v in reqs[c]] for c in present], labels=present,
                 colors=colors, alpha=0.85)
    a1.set_ylabel("read requests / s")
    a1.set_title("Classification over time: what the classifier called each read", loc="left")
    a1.legend(loc="upper right", fontsize=8)
    a2.stackplot(xs, [[v / width / 2**20 for v in nbytes[c]] for c in present], labels=present,
                 colors=colors, alpha=0.85)
    a2.set_ylabel("read MiB / s")
    a2.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {c: {"requests": int(sum(reqs[c])), "bytes": int(sum(nbytes[c]))} for c in present}


def _occupancy_chart(plt: Any, occ: dict[str, list[Any]], t0: float, t1: float,
                     path: str) -> dict[str, Any]:
    """Bytes held by the DRAM and fast tiers (and pinned) over time, as steps: each sample
    holds until the next one, the last until the trace ends (``t1``)."""
    span = max(t1 - t0, 1e-6)
    xlabel, scale = _time_label(span)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    out: dict[str, Any] = {}
    series = (("dram_bytes", "DRAM page cache", TIER_COLORS["dram"], "-"),
              ("fast_bytes", "fast tier (NVMe)", TIER_COLORS["fast"], "-"),
              ("fast_pinned", "fast tier, pinned", TIER_COLORS["fast"], "--"))
    biggest = max((v for col, *_ in series for v in occ[col] if v is not None), default=0)
    unit, div = next(((u, f) for u, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
                      if biggest >= f), ("bytes", 1))
    for col, label, color, style in series:
        pts = [(t, v) for t, v in zip(occ["time"], occ[col]) if v is not None]
        if not pts:
            continue
        xs = [(t - t0) / scale for t, _ in pts] + [span / scale]
        ys = [v / div for _, v in pts]
        ax.step(xs, ys + ys[-1:], where="post", color=color, ls=style, lw=1.8, label=label)
        ax.plot(xs[:-1], ys, ls="none", marker="o", ms=3, color=color)
        vals = [v for _, v in pts]
        out[col] = {"samples": len(vals), "first": vals[0], "last": vals[-1], "max": max(vals)}
    ax.set_ylim(bottom=0, top=max(biggest / div * 1.1, 1.0))
    ax.set_xlim(0, span / scale)
    ax.set_ylabel(f"bytes held ({unit})")
    ax.set_xlabel(xlabel)
    ax.set_title("Tier occupancy over time (dots: samples, at most one a second)", loc="left")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return out


def _replay_chart(plt: Any, rows: list[dict[str, Any]], sizes: list[int], path: str) -> None:
    """Miss ratio against cache size per policy, with Belady's bound."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = sorted({r["policy"] for r in rows if r["policy"] != "belady"})
    markers = "osD^v<>ph*"
    for i, name in enumerate(names):
        pts = sorted((r["cache_size"], r["miss_ratio"]) for r in rows if r["policy"] == name)
        ax.plot([p[0] / 2**20 for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                lw=1.5, ms=5, label=name)
    b = sorted((r["cache_size"], r["miss_ratio"]) for r in rows if r["policy"] == "belady")
    ax.plot([p[0] / 2**20 for p in b], [p[1] for p in b], color="black", ls="--", lw=2.2,
            marker="x", label="Belady (offline optimum)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([s / 2**20 for s in sizes])
    ax.set_xticklabels([format_size(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("simulated cache size")
    ax.set_ylabel("page miss ratio (lower is better)")
    ax.set_ylim(0, max(1e-9, max(r["miss_ratio"] for r in rows)) * 1.08)
    ax.set_title("Shipped policies replayed on this trace's reads, beside Belady's bound", loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _default_sizes(table: pa.Table, page_size: int) -> list[int]:
    """Cache sizes at 5%, 10%, 25% and 50% of the pages the trace reads (its working set)."""
    reads = table.filter(pc.equal(table["op"], "read"))
    pages: set[tuple[int, int]] = set()
    for fid, off, size in zip(reads["file_id"].to_pylist(), reads["offset"].to_pylist(),
                              reads["size"].to_pylist()):
        if size:
            pages.update((fid, p) for p in range(off // page_size, (off + size - 1) // page_size + 1))
    ws = len(pages) * page_size
    out = sorted({max(page_size, int(ws * f) // page_size * page_size) for f in (0.05, 0.1, 0.25, 0.5)})
    return out


def build_report(trace: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 cache_sizes: Sequence[int] | None = None, page_size: int = 4096,
                 policies: Sequence[str] | None = None, bins: int = 40) -> Report:
    """Read a trace and write ``index.html`` and the PNG charts into ``output``.

    Args:
        trace: The Parquet trace.
        output: Directory to write into (created).
        cache_sizes: Sizes to replay at; default 5/10/25/50% of the trace's working set.
        page_size: Bytes per cache object in the replay.
        policies: Policy names to replay; default every shipped policy.
        bins: Time bins of the over-time charts.

    Raises:
        ValueError: If the trace is not a trace or holds no reads.
    """
    started = time.perf_counter()
    out = os.fspath(output)
    os.makedirs(out, exist_ok=True)
    table = read_trace_extended(trace)
    rep = Report(output=out)
    reads_t = table.filter(pc.equal(table["op"], "read"))
    if reads_t.num_rows == 0:
        raise ValueError(f"{os.fspath(trace)} holds no reads")
    reads = reads_t.select(["time", "label", "size", "tier", "latency"]).to_pydict()
    reads["tier"] = [t or "" for t in reads["tier"]]
    has_tier = any(reads["tier"])
    has_latency = any(v is not None for v in reads["latency"])
    nbins = max(1, min(bins, reads_t.num_rows // 4 or 1))
    plt = _plt()

    rep.summary = {
        "trace": os.path.abspath(os.fspath(trace)),
        "requests": table.num_rows,
        "reads": reads_t.num_rows,
        "writes": table.num_rows - reads_t.num_rows,
        "read_bytes": int(sum(reads["size"])),
        "files": len(set(table["file_id"].to_pylist())),
        "duration_s": max(reads["time"]) - min(reads["time"]),
    }
    if has_tier:
        p = os.path.join(out, "tiers.png")
        rep.summary["bytes_by_class_and_tier"] = _tier_chart(plt, reads, nbins, p)
        rep.charts["tiers"] = p
    else:
        rep.notes.append("This trace has no tier column (recorded by an older tierfs, or "
                         "generated): the per-tier hit-ratio chart is left out.")
    if has_latency:
        p = os.path.join(out, "latency.png")
        rep.summary["latency"] = _latency_chart(plt, reads, p)
        rep.charts["latency"] = p
    else:
        rep.notes.append("This trace has no latency column: the latency chart is left out.")
    p = os.path.join(out, "classes.png")
    rep.summary["classes"] = _class_chart(plt, reads, nbins, p)
    rep.charts["classes"] = p
    sampled = table.filter(pc.or_(pc.is_valid(table["dram_bytes"]),
                                  pc.is_valid(table["fast_bytes"])))
    if sampled.num_rows:
        p = os.path.join(out, "occupancy.png")
        occ = sampled.select(["time", "dram_bytes", "fast_bytes", "fast_pinned"]).to_pydict()
        times = table["time"].to_pylist()
        rep.summary["occupancy"] = _occupancy_chart(plt, occ, min(times), max(times), p)
        rep.charts["occupancy"] = p
    else:
        rep.notes.append("This trace has no occupancy samples (recorded by an older tierfs, "
                         "or generated): the tier occupancy chart is left out; `tierfs stats` "
                         "shows occupancy live.")

    sizes = sorted(set(cache_sizes)) if cache_sizes else _default_sizes(table, page_size)
    names = list(policies) if policies else sorted(builtin_policies())
    for size in sizes:
        b = belady_for_trace(table, size, page_size)
        rep.replay.append({"policy": "belady", "cache_size": size, "accesses": b["accesses"],
                           "misses": b["misses"], "miss_ratio": b["miss_ratio"]})
        for name in names:
            r = replay(table, name, size, page_size, belady=False)
            rep.replay.append({"policy": name, "cache_size": size, "accesses": r.accesses,
                               "misses": r.misses, "miss_ratio": r.miss_ratio})
    p = os.path.join(out, "replay.png")
    _replay_chart(plt, rep.replay, sizes, p)
    rep.charts["replay"] = p
    rep.notes.append("Reads the kernel's page cache answered never reach the daemon, so they "
                     "are not in the trace: the ratios here are of the reads tierfs saw.")
    rep.notes.append("What the kernel's page cache holds is not recorded (the daemon cannot "
                     "see it); occupancy is sampled with requests, at most once a second, so "
                     "an idle stretch has no samples and a change shows at the next request.")
    rep.summary["seconds"] = time.perf_counter() - started
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"summary": rep.summary, "replay": rep.replay, "notes": rep.notes}, f, indent=2)
    with open(rep.html, "w") as f:
        f.write(_html(rep, sizes, names, page_size))
    return rep


_CAPTIONS = {
    "tiers": ("Hit ratio over time per tier and access class",
              "For each class, the share of read bytes each tier served per time bin; the black "
              "line is the hit ratio (bytes not fetched from the capacity tier). A read served "
              "by two tiers counts half to each."),
    "latency": ("Latency distributions",
                "How long the daemon took to answer each read, as a cumulative distribution, "
                "by access class and by the tier(s) that served it."),
    "classes": ("Classification over time",
                "Read requests and bytes per second in each access class."),
    "occupancy": ("Tier occupancy over time",
                  "Bytes the DRAM page cache and the fast tier held (and the fast tier's "
                  "pinned bytes), sampled at most once a second with the requests."),
    "replay": ("Replay of the shipped policies against Belady's bound",
               "Each shipped policy replayed offline on this trace's reads (tierfs replay), at "
               "several cache sizes; the dashed line is Belady's offline optimum."),
}


def _html(rep: Report, sizes: list[int], names: list[str], page_size: int) -> str:
    e = html.escape
    s = rep.summary
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tierfs report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#212529}img{max-width:100%;border:1px solid #dee2e6}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #dee2e6;"
        "padding:.25em .6em;text-align:right}th{background:#f1f3f5}td:first-child,"
        "th:first-child{text-align:left}.best{font-weight:bold}</style></head><body>",
        "<h1>tierfs report</h1>",
        f"<p>Trace <code>{e(s['trace'])}</code>: {s['requests']} requests ({s['reads']} reads, "
        f"{s['writes']} writes) on {s['files']} files over {s['duration_s']:.2f} s; "
        f"{e(format_size(s['read_bytes']))} read.</p>",
    ]
    for name in ("tiers", "latency", "classes", "occupancy", "replay"):
        if name not in rep.charts:
            continue
        title, caption = _CAPTIONS[name]
        parts.append(f"<h2 id='{name}'>{e(title)}</h2><p>{e(caption)}</p>"
                     f"<img src='{e(os.path.basename(rep.charts[name]))}' alt='{e(title)}'>")
        if name == "tiers":
            parts.append("<table><tr><th>class</th>" + "".join(
                f"<th>{t}</th>" for t in (*TIERS, "hit ratio")) + "</tr>")
            for label, by in s["bytes_by_class_and_tier"].items():
                total = sum(by.values()) or 1
                parts.append(f"<tr><td>{e(label)}</td>" + "".join(
                    f"<td>{e(format_size(by.get(t, 0)))}</td>" for t in TIERS)
                    + f"<td>{1 - by.get('capacity', 0) / total:.1%}</td></tr>")
            parts.append("</table>")
        elif name == "latency":
            parts.append("<table><tr><th>group</th><th>reads</th><th>p50</th><th>p99</th>"
                         "<th>max</th></tr>")
            for group, row in s["latency"].items():
                parts.append(f"<tr><td>{e(group)}</td><td>{row['requests']}</td>"
                             f"<td>{_fmt_lat(row['p50'])}</td><td>{_fmt_lat(row['p99'])}</td>"
                             f"<td>{_fmt_lat(row['max'])}</td></tr>")
            parts.append("</table>")
        elif name == "classes":
            parts.append("<table><tr><th>class</th><th>reads</th><th>bytes</th></tr>")
            for label, row in s["classes"].items():
                parts.append(f"<tr><td>{e(label)}</td><td>{row['requests']}</td>"
                             f"<td>{e(format_size(row['bytes']))}</td></tr>")
            parts.append("</table>")
        elif name == "occupancy":
            parts.append("<table><tr><th>series</th><th>samples</th><th>first</th>"
                         "<th>last</th><th>max</th></tr>")
            for col, row in s["occupancy"].items():
                parts.append(f"<tr><td>{e(col)}</td><td>{row['samples']}</td>" + "".join(
                    f"<td>{e(format_size(row[k]))}</td>" for k in ("first", "last", "max"))
                    + "</tr>")
            parts.append("</table>")
        elif name == "replay":
            parts.append(f"<p>Page size {e(format_size(page_size))}. Miss ratio (page misses / "
                         "page accesses) per policy and cache size; the best policy per size "
                         "is bold.</p>")
            parts.append("<table id='replay-table'><tr><th>policy</th>" + "".join(
                f"<th>{e(format_size(z))}</th>" for z in sizes) + "</tr>")
            best = {z: min(r["miss_ratio"] for r in rep.replay
                           if r["cache_size"] == z and r["policy"] != "belady") for z in sizes}
            for pname in [*names, "belady"]:
                cells = []
                for z in sizes:
                    r = next(r for r in rep.replay if r["policy"] == pname and r["cache_size"] == z)
                    cls = " class='best'" if pname != "belady" and r["miss_ratio"] == best[z] else ""
                    cells.append(f"<td{cls}>{r['miss_ratio']:.4f}</td>")
                parts.append(f"<tr><td>{e(pname)}</td>{''.join(cells)}</tr>")
            parts.append("</table>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in rep.notes) + "</ul>")
    parts.append(f"<p><small>Made by <code>tierfs report</code> in {s['seconds']:.1f} s; the "
                 "numbers are in report.json.</small></p></body></html>")
    return "\n".join(parts)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierfs report",
        description="Write an HTML page with PNG charts from an access trace (Parquet): hit "
                    "ratio over time per tier and class, latency distributions, "
                    "classification over time, tier occupancy over time (traces that "
                    "have it), and a replay of the shipped policies "
                    "beside Belady's bound. Needs matplotlib (the 'report' extra).")
    parser.add_argument("trace", metavar="TRACE", help="the Parquet trace ([stats] trace)")
    parser.add_argument("-o", "--output", metavar="DIR", required=True,
                        help="directory for index.html and the PNGs (created)")
    parser.add_argument("--cache-size", metavar="SIZE", action="append", default=[],
                        help="replay at this cache size (repeatable; default 5, 10, 25 and "
                             "50 percent of the trace's working set)")
    parser.add_argument("--page-size", metavar="SIZE", default="4KiB", help="replay page size (default 4KiB)")
    parser.add_argument("--policy", metavar="NAME", action="append", default=[],
                        help="replay this policy (repeatable; default every shipped policy)")
    parser.add_argument("--bins", metavar="N", type=int, default=40, help="time bins (default 40)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tierfs report``: 0 on success, 1 if the trace cannot be used."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.cache_size]
        page_size = parse_size(args.page_size)
    except ValueError as exc:
        parser.error(str(exc))
    if page_size <= 0 or any(s <= 0 for s in sizes):
        parser.error("sizes must be positive")
    if args.bins <= 0:
        parser.error("--bins must be positive")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("tierfs report: needs matplotlib: pip install 'tierfs[report]'", file=sys.stderr)
        return 1
    try:
        rep = build_report(args.trace, args.output, cache_sizes=sizes or None,
                           page_size=page_size, policies=args.policy or None, bins=args.bins)
    except (OSError, ValueError, LookupError, PolicyError, pa.ArrowException) as exc:
        print(f"tierfs report: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {rep.html} ({', '.join(os.path.basename(p) for p in rep.charts.values())})")
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m fusefs.report`
    sys.exit(main())
