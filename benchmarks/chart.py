"""The headline table of a `run.py` result as a chart (PNG): one panel per workload metric.

Each panel is one (situation, workload, metric) of the table: a cold and a warm bar per
target, on a log scale (values span orders of magnitude), with the tierfs targets drawn
darker. The panel title says whether higher (↑) or lower (↓) is better.

``run.py`` draws it next to its JSON (or at ``--chart PNG``); for a result saved before:
``python benchmarks/chart.py benchmarks/results/fio.json -o fio.png``. Needs matplotlib
(the ``report`` extra), imported only when a chart is drawn, with the Agg backend.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import HIGHER_BETTER  # noqa: E402

UNITS = {"bw_MiBps": "MiB/s", "iops": "IOPS", "p99_us": "p99 µs", "rand_p99_us": "random p99 µs",
         "stream_MiBps": "stream MiB/s", "files_per_s": "files/s", "seconds": "seconds"}
COLD, WARM = "#74c0fc", "#1864ab"
TIERFS_COLD, TIERFS_WARM = "#ffa94d", "#d9480f"


def draw_chart(doc: dict[str, Any], png: str | Path) -> Path:
    """Draw the rows of a `run.py` result document into ``png``; returns its path.

    Raises:
        ValueError: If the document has no rows with values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = doc.get("rows") or []
    panels: dict[tuple[str, str, str], dict[str, dict[str, float | None]]] = {}
    targets: list[str] = []
    for r in table:
        key = (r["situation"], r["workload"], r["metric"])
        panels.setdefault(key, {})[r["temperature"]] = r["values"]
        for t, v in r["values"].items():
            if v is not None and t not in targets:
                targets.append(t)
    if not panels:
        raise ValueError("the result holds no rows to draw")
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 0.8),
                             squeeze=False)
    width = 0.4
    for ax, ((sit, wl, metric), temps) in zip(axes.flat, panels.items()):
        names = [t for t in targets if any((temps.get(k) or {}).get(t) is not None
                                           for k in ("cold", "warm"))]
        for j, temp in enumerate(("cold", "warm")):
            vals = [(temps.get(temp) or {}).get(t) for t in names]
            xs = [i + (j - 0.5) * width for i in range(len(names))]
            colors = [(TIERFS_COLD if temp == "cold" else TIERFS_WARM) if t.startswith("tierfs")
                      else (COLD if temp == "cold" else WARM) for t in names]
            ax.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width,
                   color=[c for c, v in zip(colors, vals) if v])
        ax.set_yscale("log")
        shown = [v for temp in ("cold", "warm") for v in (temps.get(temp) or {}).values() if v]
        # The bars' base: a decade below the smallest value, so the smallest bar still shows
        # (a log axis has no zero; the heights compare as ratios, not as differences).
        ax.set_ylim(bottom=10 ** math.floor(math.log10(min(shown)) - 0.3) if shown else None)
        ax.set_axisbelow(True)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        arrow = "higher is better" if HIGHER_BETTER.get(metric, True) else "lower is better"
        ax.set_title(f"{wl} · {UNITS.get(metric, metric)} ({arrow})\n{sit}", fontsize=9,
                     loc="left")
        ax.grid(axis="y", alpha=0.35, which="major")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=COLD, label="cold (other)"),
                        Patch(color=WARM, label="warm (other)"),
                        Patch(color=TIERFS_COLD, label="cold (tierfs)"),
                        Patch(color=TIERFS_WARM, label="warm (tierfs)")],
               loc="upper right", ncol=4, frameon=False, fontsize=9)
    command = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(doc.get("command", [])))
    fig.suptitle(f"tierfs benchmarks (fio, log scale){': ' + command if command else ''}"
                 f"{' · ' + doc['date'] if doc.get('date') else ''}", x=0.01, ha="left",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Draw a run.py result (JSON) as a chart (PNG).")
    p.add_argument("result", help="run.py's JSON, e.g. benchmarks/results/fio.json")
    p.add_argument("-o", "--output", help="PNG to write (default: beside the JSON)")
    args = p.parse_args(argv)
    src = Path(args.result)
    try:
        doc = json.loads(src.read_text())
        out = draw_chart(doc, args.output or src.with_suffix(".png"))
    except (OSError, ValueError) as exc:
        print(f"chart: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
