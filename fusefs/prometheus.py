"""Prometheus metrics of a mount (``[stats] prometheus = "127.0.0.1:9100"``).

prometheus-client serves HTTP from its own thread; each scrape takes a
snapshot of `Stats` on the trio thread (through the loop's token), so the
counters are never read while the event loop changes them. Counters become
``tierfs_<name>_total``; numeric fields of the tier sections become gauges
``tierfs_<section>_<field>``; latency histograms become summaries in seconds.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _name(*parts: str) -> str:
    return "tierfs_" + "_".join(_BAD.sub("_", p) for p in parts)


class StatsCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        for key, value in snap.get("counters", {}).items():
            yield CounterMetricFamily(_name(key), f"tierfs counter {key}", value=value)
        for key, h in snap.get("latency", {}).items():
            s = SummaryMetricFamily(_name(key, "seconds"), f"latency of {key}")
            s.add_metric([], count_value=h["count"], sum_value=h["mean_us"] * h["count"] / 1e6)
            yield s
            for q, field in (("0.5", "p50_us"), ("0.99", "p99_us"), ("0.999", "p999_us")):
                g = GaugeMetricFamily(_name(key, "seconds_quantile"),
                                      f"latency quantile of {key}", labels=["quantile"])
                g.add_metric([q], h[field] / 1e6)
                yield g
        for section, fields in snap.items():
            if section in ("counters", "latency") or not isinstance(fields, dict):
                continue
            for key, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield GaugeMetricFamily(_name(section, key), f"{section} {key}", value=value)


def serve(address: str, snapshot: Callable[[], dict[str, Any]]) -> Any:
    """Start the HTTP endpoint on ``host:port``; returns the server (call ``shutdown``)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    registry.register(StatsCollector(snapshot))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server
