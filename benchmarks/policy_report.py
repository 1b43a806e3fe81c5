"""Policy quality report: miss ratios on synthetic traces against Belady and the bars.

Generates the traces (seeded), writes them as Parquet, replays them through the policies with
:func:`fusefs.replay.replay` in a small process pool, prints a table and writes
``benchmarks/results/policies.json``. Takes minutes: every page of millions of requests goes
through pure-Python policies.

Workloads (objects are 4 KiB pages):

* ``zipf``: 2M reads of 100k objects, Zipf(1.0), one reader process.
* ``mix-request`` / ``mix-burst``: the same 2M Zipf reads plus as many one-pass scan reads
  (16 KiB requests by 4 loader workers over 256 MiB files, 5% of neighbours reordered),
  interleaved request by request, or in bursts of ~1000 requests. The random part is the
  very same request sequence as ``zipf``, so its miss ratio compares directly.

Bars checked (the default policy is ``workload_aware``; the replay tier is DRAM, whose unit
is the 4 KiB page; the fast tier, which adds reject-first admission, is reported too):

* pure Zipf: <= 1.20x Belady at a cache of 1% of the objects, <= 1.45x at 10%, and at
  least 15% fewer misses than LRU at 10%;
* mixtures, classifier on: the random part's miss ratio within +3% (relative) of the same
  policy on pure Zipf; LRU without the classifier is the failing control;
* classifier: >= 99% of scan reads labelled sequential, <= 0.1% of random reads.

Usage: ``python benchmarks/policy_report.py [--requests N] [--objects N] [--jobs N] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fusefs import tracegen
from fusefs.replay import belady_for_trace, replay
from fusefs.trace import write_trace
from fusefs.units import format_size

PAGE = 4096
BASELINES = ["lru", "fifo", "sieve", "s3fifo", "arc", "wtinylfu"]
DEFAULT = "workload_aware"


def make_traces(tmp: str, *, objects: int, requests: int, seed: int) -> dict[str, str]:
    zipf = tracegen.zipf_trace(n_objects=objects, n_requests=requests, alpha=1.0, object_size=PAGE, seed=seed)
    scans = tracegen.scan_trace(
        n_requests=requests, request_size=16 * 1024, file_size=256 * 1024 * 1024, workers=4, reorder=0.05, seed=seed + 1
    )
    traces = {
        "zipf": zipf,
        "mix-request": tracegen.interleave(zipf, scans, mode="request", seed=seed + 2),
        "mix-burst": tracegen.interleave(zipf, scans, mode="burst", burst=1000, seed=seed + 3),
    }
    paths = {}
    for name, table in traces.items():
        path = os.path.join(tmp, f"{name}.parquet")
        write_trace(table, path)
        paths[name] = path
    return paths


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    if job["policy"] == "belady":
        out = belady_for_trace(job["path"], job["cache"], PAGE)
        return {**job, "result": out}
    res = replay(job["path"], job["policy"], job["cache"], PAGE, job["classifier"], tier=job["tier"], belady=False)
    return {**job, "result": res.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000_000, help="Zipf requests (and as many scan requests)")
    parser.add_argument("--objects", type=int, default=100_000, help="Zipf objects")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "policies.json")
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    sizes = {"1%": args.objects // 100 * PAGE, "10%": args.objects // 10 * PAGE}
    with tempfile.TemporaryDirectory(prefix="tierfs-report-") as tmp:
        paths = make_traces(tmp, objects=args.objects, requests=args.requests, seed=args.seed)
        jobs: list[dict[str, Any]] = []
        for size_name, cache in sizes.items():
            base = {"cache": cache, "size": size_name}
            jobs.append(
                {**base, "trace": "zipf", "path": paths["zipf"], "policy": "belady", "tier": None, "classifier": None}
            )
            for pol in BASELINES:
                jobs.append(
                    {**base, "trace": "zipf", "path": paths["zipf"], "policy": pol, "tier": "dram", "classifier": False}
                )
            for tier in ("dram", "fast"):
                jobs.append(
                    {
                        **base,
                        "trace": "zipf",
                        "path": paths["zipf"],
                        "policy": DEFAULT,
                        "tier": tier,
                        "classifier": True,
                    }
                )
            for mix in ("mix-request", "mix-burst"):
                p = paths[mix]
                jobs.append({**base, "trace": mix, "path": p, "policy": "belady", "tier": None, "classifier": None})
                jobs.append({**base, "trace": mix, "path": p, "policy": "lru", "tier": "dram", "classifier": False})
                for tier in ("dram", "fast"):
                    jobs.append({**base, "trace": mix, "path": p, "policy": DEFAULT, "tier": tier, "classifier": True})
                jobs.append({**base, "trace": mix, "path": p, "policy": DEFAULT, "tier": "dram", "classifier": False})
        # Longest first, so the pool does not end on one long straggler.
        jobs.sort(key=lambda j: (j["trace"] == "zipf", j["policy"] != "belady"))
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(run_job, jobs))
    for d in done:
        d.pop("path", None)

    report = summarize(done, sizes)
    report["parameters"] = {
        "objects": args.objects,
        "zipf_requests": args.requests,
        "scan_requests": args.requests,
        "page_size": PAGE,
        "cache_sizes": {k: v for k, v in sizes.items()},
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["runs"] = done
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print_report(report)
    print(f"\nwritten {args.out} ({report['parameters']['seconds']}s)")
    return 0 if all(b["pass"] for b in report["bars"]) else 1


def _find(done: list[dict[str, Any]], **want: Any) -> dict[str, Any]:
    for d in done:
        if all(d.get(k) == v for k, v in want.items()):
            return d["result"]  # type: ignore[no-any-return]
    raise KeyError(want)


def _random_part(result: dict[str, Any]) -> float:
    return result["per_trace_label"]["random"]["miss_ratio"]  # type: ignore[no-any-return]


def summarize(done: list[dict[str, Any]], sizes: dict[str, int]) -> dict[str, Any]:
    pure: dict[str, dict[str, Any]] = {}
    for size_name in sizes:
        opt = _find(done, trace="zipf", size=size_name, policy="belady")["miss_ratio"]
        row: dict[str, Any] = {"belady": opt}
        for pol in BASELINES:
            row[pol] = _find(done, trace="zipf", size=size_name, policy=pol)["miss_ratio"]
        for tier in ("dram", "fast"):
            row[f"{DEFAULT}[{tier}]"] = _find(done, trace="zipf", size=size_name, policy=DEFAULT, tier=tier)[
                "miss_ratio"
            ]
        pure[size_name] = row

    mixes: dict[str, dict[str, Any]] = {}
    for size_name in sizes:
        for mix in ("mix-request", "mix-burst"):
            b = _find(done, trace=mix, size=size_name, policy="belady")
            lru = _find(done, trace=mix, size=size_name, policy="lru")
            entry: dict[str, Any] = {
                "belady_random_part": b["per_trace_label"]["random"]["miss_ratio"],
                "lru_no_classifier_random_part": _random_part(lru),
                "lru_pure": pure[size_name]["lru"],
            }
            for tier in ("dram", "fast"):
                r = _find(done, trace=mix, size=size_name, policy=DEFAULT, tier=tier, classifier=True)
                entry[f"{DEFAULT}[{tier}]_random_part"] = _random_part(r)
                entry[f"{DEFAULT}[{tier}]_pure"] = pure[size_name][f"{DEFAULT}[{tier}]"]
                entry[f"{DEFAULT}[{tier}]_confusion"] = r["confusion"]
            r = _find(done, trace=mix, size=size_name, policy=DEFAULT, tier="dram", classifier=False)
            entry[f"{DEFAULT}[dram]_no_classifier_random_part"] = _random_part(r)
            mixes[f"{mix}@{size_name}"] = entry

    # Classifier accuracy over every mixture run with the classifier on (same labels each time).
    conf = mixes["mix-request@10%"][f"{DEFAULT}[dram]_confusion"]
    conf_b = mixes["mix-burst@10%"][f"{DEFAULT}[dram]_confusion"]
    accuracy = {}
    for name, c in (("mix-request", conf), ("mix-burst", conf_b)):
        scan_total = sum(c["sequential"].values())
        rand_total = sum(c["random"].values())
        accuracy[name] = {
            "scan_labelled_sequential": c["sequential"].get("sequential", 0) / scan_total,
            "random_labelled_sequential": c["random"].get("sequential", 0) / rand_total,
        }

    bars = []
    d = f"{DEFAULT}[dram]"
    for size_name, limit in (("1%", 1.20), ("10%", 1.45)):
        ratio = pure[size_name][d] / pure[size_name]["belady"]
        bars.append(
            {"bar": f"pure zipf {size_name}: {d} <= {limit}x belady", "value": round(ratio, 4), "pass": ratio <= limit}
        )
    gain = 1 - pure["10%"][d] / pure["10%"]["lru"]
    bars.append({"bar": f"pure zipf 10%: {d} >= 15% below lru", "value": round(gain, 4), "pass": gain >= 0.15})
    for key, entry in mixes.items():
        rel = entry[f"{d}_random_part"] / entry[f"{d}_pure"] - 1
        bars.append(
            {"bar": f"{key}: {d}+classifier random part <= +3% of pure", "value": round(rel, 4), "pass": rel <= 0.03}
        )
    for name, acc in accuracy.items():
        bars.append(
            {
                "bar": f"{name}: scan reads labelled sequential >= 99%",
                "value": round(acc["scan_labelled_sequential"], 5),
                "pass": acc["scan_labelled_sequential"] >= 0.99,
            }
        )
        bars.append(
            {
                "bar": f"{name}: random reads labelled sequential <= 0.1%",
                "value": round(acc["random_labelled_sequential"], 6),
                "pass": acc["random_labelled_sequential"] <= 0.001,
            }
        )
    return {"pure_zipf": pure, "mixtures": mixes, "classifier": accuracy, "bars": bars}


def print_report(report: dict[str, Any]) -> None:
    pure = report["pure_zipf"]
    sizes = list(pure)
    print("Pure Zipf(1.0): miss ratio (x Belady)")
    names = [n for n in pure[sizes[0]] if n != "belady"]
    print(f"  {'policy':26}" + "".join(f"{s:>18}" for s in sizes))
    print(f"  {'belady':26}" + "".join(f"{pure[s]['belady']:>18.4f}" for s in sizes))
    for n in names:
        cells = "".join(f"{pure[s][n]:>10.4f} ({pure[s][n] / pure[s]['belady']:.2f}x)" for s in sizes)
        print(f"  {n:26}{cells}")
    print("\nMixtures (50% one-pass scans): miss ratio of the random part")
    for key, e in report["mixtures"].items():
        print(f"  {key}")
        print(f"    belady                              {e['belady_random_part']:.4f}")
        control = e["lru_no_classifier_random_part"]
        print(f"    lru, no classifier (control)        {control:.4f}   (pure {e['lru_pure']:.4f})")
        for tier in ("dram", "fast"):
            k = f"{DEFAULT}[{tier}]"
            print(f"    {k + ' + classifier':36}{e[k + '_random_part']:.4f}   (pure {e[k + '_pure']:.4f})")
        print(f"    {DEFAULT + '[dram], no classifier':36}{e[DEFAULT + '[dram]_no_classifier_random_part']:.4f}")
    print("\nClassifier")
    for name, acc in report["classifier"].items():
        scan, rand = acc["scan_labelled_sequential"], acc["random_labelled_sequential"]
        print(f"  {name}: scan reads sequential {scan:.4%}, random reads sequential {rand:.4%}")
    print("\nBars")
    for b in report["bars"]:
        print(f"  [{'PASS' if b['pass'] else 'FAIL'}] {b['bar']}: {b['value']}")
    params = report.get("parameters", {})
    if params:
        sizes_txt = ", ".join(f"{k} = {format_size(v)}" for k, v in params["cache_sizes"].items())
        print(f"\n{params['objects']} objects, {params['zipf_requests']} Zipf requests, caches {sizes_txt}")


if __name__ == "__main__":
    sys.exit(main())
