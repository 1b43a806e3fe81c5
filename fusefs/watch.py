"""``tierfs stats --watch``: a live view of a mount's rates, drawn with rich.

Every ``interval`` seconds it asks the mount for a stats snapshot and the per-path figures
(control requests ``stats`` and ``by_path``) and shows what changed since the previous
ones, per second: read requests, MiB/s per serving tier and access class, the hit ratio
per class, opens (and those the kernel's cache kept), bytes pushed into the kernel's page
cache, errors answered; each tier's occupancy now; and the files read most in the
interval. The first frame shows averages since the mount.

On a terminal the frame is redrawn in place (`rich.live.Live`). When stdout is not a
terminal (a pipe, a file) the same tables are printed as plain text, one block per
refresh under a timestamp, so ``tierfs stats --watch MNT > log`` records a time series.
Ctrl-C ends the view with exit status 0 (`EXIT_OK`); a mount that goes away (unmounted,
its daemon gone or no longer answering) ends it with one line on stderr and status 1
(`EXIT_FAILURE`). rich is imported here only, never by the daemon.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any

from .control import ControlError, call
from .exits import EXIT_FAILURE, EXIT_OK
from .pathstats import CLASSES, TIERS
from .units import format_size

__all__ = ["Rates", "watch"]

_MIB = float(1 << 20)
# Per-path figures fetched per refresh to find the busiest files of the interval.
_PATHS = 200


class MountGone(ControlError):
    """The mount stopped answering while being watched."""


class Rates:
    """What changed between two snapshots (``prev`` None: since the mount), per second."""

    def __init__(self, prev: dict[str, Any] | None, cur: dict[str, Any], dt: float,
                 prev_paths: dict[str, Any] | None, cur_paths: dict[str, Any]) -> None:
        self.since_mount = prev is None
        self.dt = max(dt, 1e-6)
        before = prev.get("counters", {}) if prev else {}
        after = cur.get("counters", {})
        self.delta = {k: v - before.get(k, 0) for k, v in after.items()
                      if isinstance(v, (int, float))}
        self.cur = cur
        old = {p["path"]: p for p in (prev_paths or {}).get("paths", [])}
        busy = []
        for p in cur_paths.get("paths", []):
            o = old.get(p["path"])
            if prev_paths is not None and o is None and p.get("uncounted_max"):
                continue  # entered the table in this interval after others left: no delta
            d = {t: p["tiers"].get(t, 0) - (o["tiers"].get(t, 0) if o else 0) for t in TIERS}
            n = sum(d.values())
            if n > 0:
                busy.append((n, p, d))
        busy.sort(key=lambda x: -x[0])
        self.busy = busy[:8]

    def per_s(self, key: str) -> float:
        return self.delta.get(key, 0) / self.dt

    def tier_class(self, tier: str, label: str) -> float:
        return self.per_s(f"read.bytes.{tier}.{label}")


def _table(title: str, columns: list[str], *, plain: bool) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=box.ASCII2 if plain else box.SIMPLE_HEAD,
              pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=i == 0)
    return t


def render(r: Rates, mountpoint: str, sample: int, interval: float, *, plain: bool) -> Any:
    """The frame for one refresh (a rich renderable)."""
    from rich.console import Group
    from rich.text import Text

    cur = r.cur
    mount = cur.get("mount", {})
    span = "since the mount" if r.since_mount else f"over the last {r.dt:.1f} s"
    # The sample number first: a long source or mount point never wraps it.
    head = Text(f"sample {sample}: rates {span}, every {interval:g} s"
                + ("" if plain else " (Ctrl-C to quit)") + f"; tierfs "
                f"{mount.get('source', '')} on {mountpoint} (pid {mount.get('pid')}, up "
                f"{cur.get('uptime_s', 0):.0f} s)", style="bold")
    tiers = [t for t in TIERS if t != "ahead"
             or any(r.tier_class("ahead", k) for k in CLASSES)]
    t = _table("read MiB/s by serving tier and access class", ["tier", *CLASSES, "total"],
               plain=plain)
    for tier in tiers:
        vals = [r.tier_class(tier, k) for k in CLASSES]
        t.add_row(tier, *(f"{v / _MIB:.2f}" for v in vals), f"{sum(vals) / _MIB:.2f}")
    hits = []
    for k in (*CLASSES, None):
        ks = CLASSES if k is None else (k,)
        total = sum(r.tier_class(x, c) for x in TIERS for c in ks)
        miss = sum(r.tier_class("capacity", c) for c in ks)
        hits.append(f"{100 * (1 - miss / total):.1f}%" if total else "-")
    t.add_row("hit ratio", *hits, style="bold")
    errors = r.per_s("errors.total")
    line = Text(
        f"reads/s {r.per_s('read.requests'):.1f}   opens/s {r.per_s('meta.open'):.1f} "
        f"(kernel cache kept {r.per_s('open.kernel_cache_kept'):.1f})   pushed to the "
        f"kernel {r.per_s('kernel.pushed_bytes') / _MIB:.2f} MiB/s   errors/s {errors:.1f} "
        f"(total {cur.get('counters', {}).get('errors.total', 0)})",
        style="bold red" if errors and not plain else "")
    occ = _table("tier occupancy now", ["tier", "used", "capacity", "pinned"], plain=plain)
    dram = cur.get("dram")
    if isinstance(dram, dict) and "bytes_used" in dram:
        cap = dram.get("capacity_pages", 0) * dram.get("page_size", 0)
        occ.add_row("dram", format_size(dram["bytes_used"]), format_size(cap), "-")
    fast = cur.get("fast")
    if isinstance(fast, dict) and "bytes_used" in fast:
        occ.add_row("fast", format_size(fast["bytes_used"]), format_size(fast.get("capacity", 0)),
                    format_size(fast.get("pinned_bytes", 0)))
    parts: list[Any] = [head, t, line, occ]
    if r.busy:
        b = _table(f"files read most {span}", ["file", "MiB/s", "class", "hit"],
                   plain=plain)
        for n, p, d in r.busy:
            hit = 1 - d["capacity"] / n
            b.add_row(p["path"], f"{n / r.dt / _MIB:.2f}", p.get("class") or "-",
                      f"{100 * hit:.0f}%")
        parts.append(b)
    parts.append(Text("Reads the kernel's page cache answers never reach tierfs: they are "
                      "not in these rates (opens it kept are counted).", style="dim"))
    return Group(*parts)


def _fetch(mountpoint: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    snap = call(mountpoint, "stats", timeout=timeout)["stats"]
    paths = call(mountpoint, "by_path", timeout=timeout, limit=_PATHS)["by_path"]
    return snap, paths, time.monotonic()


def _refetch(mountpoint: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """`_fetch` of a mount that answered before: a failure means it went away."""
    try:
        return _fetch(mountpoint, timeout)
    except (ControlError, OSError) as exc:
        why = str(exc).removeprefix(f"{mountpoint}: ")
        raise MountGone(f"stats: {mountpoint}: the mount went away ({why})") from None


def watch(mountpoint: str, *, interval: float = 2.0, count: int | None = None) -> int:
    """Show the live view until Ctrl-C (`EXIT_OK`), ``count`` refreshes, or the mount
    going away (`MountGone`, which the CLI prints as one line: `EXIT_FAILURE`)."""
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        print("tierfs: stats --watch needs rich: pip install rich", file=sys.stderr)
        return EXIT_FAILURE
    plain = not sys.stdout.isatty()
    console = Console(highlight=False, **({"force_terminal": False, "no_color": True,
                                           "width": 132} if plain else {}))
    timeout = max(10.0, 2 * interval)
    # Reached before anything is drawn: a mount that is not there fails like `stats`.
    snap, paths, at = _fetch(mountpoint, timeout)
    prev: tuple[dict[str, Any], dict[str, Any], float] | None = None
    sample = 1
    live = None
    try:
        if not plain:
            live = Live(console=console, auto_refresh=False, transient=False)
            live.start()
        while True:
            dt = at - prev[2] if prev else snap.get("uptime_s", 0.0)
            rates = Rates(prev[0] if prev else None, snap, dt,
                          prev[1] if prev else None, paths)
            frame = render(rates, mountpoint, sample, interval, plain=plain)
            if live is not None:
                live.update(frame, refresh=True)
            else:
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                console.print(f"--- {stamp}")
                console.print(frame)
                sys.stdout.flush()
            if count is not None and sample >= count:
                return EXIT_OK
            time.sleep(max(0.0, interval - (time.monotonic() - at)))
            prev = (snap, paths, at)
            snap, paths, at = _refetch(mountpoint, timeout)
            sample += 1
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if live is not None:
            live.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(watch(os.path.abspath(sys.argv[1])))
