"""Ratios, the issue's performance targets, and the results table.

Results are cells keyed ``(situation, workload, temperature, target)`` holding a
``metrics`` dict (see workloads.py). `rows` flattens them into one row per
(situation, workload, temperature, metric) with one value per target; `ratios`
adds tierfs vs direct (local) and tierfs-s3 vs rclone, s3fs and tierfs (S3);
`check_targets` evaluates the targets of the issue; `markdown_table` renders it
all. Every ratio is ``tierfs value / other value`` of the same metric: above 1 is
better for throughput metrics (``↑``), below 1 is better for latency and time
(``↓``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str, str]  # situation, workload, temperature, target

# metric -> True when higher is better
HIGHER_BETTER = {
    "bw_MiBps": True, "iops": True, "p99_us": False, "rand_p99_us": False,
    "stream_MiBps": True, "files_per_s": True, "seconds": False,
}
TABLE_METRICS = {
    "seq": ["bw_MiBps"], "rand": ["iops", "p99_us"], "mixed": ["rand_p99_us", "stream_MiBps"],
    "meta": ["files_per_s", "p99_us"], "lsR": ["seconds"],
}
# The metrics "ahead on every workload" is judged on.
PRIMARY = {"seq": ["bw_MiBps"], "rand": ["iops"], "mixed": ["rand_p99_us", "stream_MiBps"],
           "meta": ["files_per_s"], "lsR": ["seconds"]}
RATIOS = [("tierfs", "direct"), ("tierfs-s3", "rclone"), ("tierfs-s3", "s3fs"),
          ("tierfs-s3", "tierfs")]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class Check:
    """One target of the issue, evaluated."""

    name: str
    row: tuple[str, str, str, str]  # situation, workload, temperature, metric
    pair: tuple[str, str]
    ratio: float | None
    bound: str  # e.g. "<= 2.0" or "> 1.0"
    met: bool | None  # None: a number is missing

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "situation": self.row[0], "workload": self.row[1],
                "temperature": self.row[2], "metric": self.row[3], "pair": list(self.pair),
                "ratio": self.ratio, "bound": self.bound, "met": self.met}


def _value(cells: dict[Key, dict[str, Any]], sit: str, wl: str, temp: str, target: str,
           metric: str) -> float | None:
    cell = cells.get((sit, wl, temp, target))
    if not cell or cell.get("error"):
        return None
    return (cell.get("metrics") or {}).get(metric)


def _check(cells: dict[Key, dict[str, Any]], name: str, row: tuple[str, str, str, str],
           pair: tuple[str, str], op: str, bound: float) -> Check:
    sit, wl, temp, metric = row
    r = ratio(_value(cells, sit, wl, temp, pair[0], metric),
              _value(cells, sit, wl, temp, pair[1], metric))
    met = None if r is None else {"<=": r <= bound, ">=": r >= bound,
                                  "<": r < bound, ">": r > bound}[op]
    return Check(name, row, pair, r, f"{op} {bound:g}", met)


def check_targets(cells: dict[Key, dict[str, Any]], workloads: list[str],
                  targets: list[str] | None = None) -> list[Check]:
    """The issue's targets (those whose two targets were selected; no data: ``met=None``)."""
    out: list[Check] = _all_checks(cells, workloads)
    if targets is not None:
        out = [c for c in out if c.pair[0] in targets and c.pair[1] in targets]
    return out


def _all_checks(cells: dict[Key, dict[str, Any]], workloads: list[str]) -> list[Check]:
    out: list[Check] = []
    U, M = "unconstrained", "memlimit"
    if "mixed" in workloads:
        out.append(_check(cells, "mixed warm: random p99 within 2x direct",
                          (U, "mixed", "warm", "rand_p99_us"), ("tierfs", "direct"), "<=", 2.0))
        out.append(_check(cells, "mixed warm: stream >= 0.8x direct",
                          (U, "mixed", "warm", "stream_MiBps"), ("tierfs", "direct"), ">=", 0.8))
        out.append(_check(cells, "mixed mem-limited: random p99 no worse than direct",
                          (M, "mixed", "warm", "rand_p99_us"), ("tierfs", "direct"), "<=", 1.0))
        out.append(_check(cells, "mixed mem-limited: stream >= 0.8x direct",
                          (M, "mixed", "warm", "stream_MiBps"), ("tierfs", "direct"), ">=", 0.8))
    if "rand" in workloads:
        out.append(_check(cells, "warm random 4k IOPS >= 0.9x direct",
                          (U, "rand", "warm", "iops"), ("tierfs", "direct"), ">=", 0.9))
    if "seq" in workloads:
        out.append(_check(cells, "cold sequential >= 0.9x direct",
                          (U, "seq", "cold", "bw_MiBps"), ("tierfs", "direct"), ">=", 0.9))
    for wl in workloads:
        for temp in ("cold", "warm"):
            for metric in PRIMARY.get(wl, []):
                op = ">" if HIGHER_BETTER[metric] else "<"
                for other in ("rclone", "s3fs"):
                    out.append(_check(cells, f"S3: tierfs ahead of {other}", (U, wl, temp, metric),
                                      ("tierfs-s3", other), op, 1.0))
                if temp == "warm":
                    op, b = (">=", 1 / 1.2) if HIGHER_BETTER[metric] else ("<=", 1.2)
                    out.append(_check(cells, "S3 warm within 1.2x of tierfs-local",
                                      (U, wl, temp, metric), ("tierfs-s3", "tierfs"), op, round(b, 3)))
    return out


def rows(cells: dict[Key, dict[str, Any]], situations: list[str], workloads: list[str],
         targets: list[str]) -> list[dict[str, Any]]:
    """One row per (situation, workload, temperature, metric) with values and ratios."""
    out = []
    for sit in situations:
        for wl in workloads:
            for temp in ("cold", "warm"):
                for metric in TABLE_METRICS[wl]:
                    vals = {t: _value(cells, sit, wl, temp, t, metric) for t in targets}
                    if all(v is None for v in vals.values()):
                        continue
                    rats = {f"{a}/{b}": ratio(vals.get(a), vals.get(b)) for a, b in RATIOS}
                    out.append({"situation": sit, "workload": wl, "temperature": temp,
                                "metric": metric, "values": vals, "ratios": rats})
    return out


def fmt(v: float | None, *, is_ratio: bool = False) -> str:
    if v is None:
        return "-"
    if is_ratio:
        return f"{v:.2f}x"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def markdown_table(table: list[dict[str, Any]], targets: list[str], checks: list[Check]) -> str:
    by_row: dict[tuple[str, str, str, str], list[Check]] = {}
    for c in checks:
        by_row.setdefault(c.row, []).append(c)
    ratio_cols = [f"{a}/{b}" for a, b in RATIOS if a in targets and b in targets]
    head = ["situation", "workload", "temp", "metric", *targets, *ratio_cols, "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        arrow = "↑" if HIGHER_BETTER[r["metric"]] else "↓"
        marks = []
        for c in by_row.get((r["situation"], r["workload"], r["temperature"], r["metric"]), []):
            state = "n/a" if c.met is None else ("met" if c.met else "MISSED")
            marks.append(f"{c.pair[0]}/{c.pair[1]} {c.bound}: {state}")
        cells = [r["situation"], r["workload"], r["temperature"], f"{r['metric']} {arrow}",
                 *(fmt(r["values"].get(t)) for t in targets),
                 *(fmt(r["ratios"].get(k), is_ratio=True) for k in ratio_cols),
                 "; ".join(marks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks_summary(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        state = "n/a   " if c.met is None else ("met   " if c.met else "MISSED")
        lines.append(f"{state} {c.name} [{'/'.join(c.row)}] {c.pair[0]}/{c.pair[1]} = "
                     f"{fmt(c.ratio, is_ratio=True)} (want {c.bound})")
    return "\n".join(lines)
