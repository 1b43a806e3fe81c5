"""The workload families of fusefs.tracegen, and the default policy against the classics on each.

Small, seeded replays (deterministic: no timing, no global randomness). The bar (1.05x the
best of LRU, SIEVE, S3-FIFO and ARC) is looser than the report's 1.02x goal
(benchmarks/policy_report.py, docs/policies.md): at this scale a 1% cache holds 50 pages and
one expert switch more or less moves a ratio by a percent or two. Measured at this scale:
at most 1.011x (loop, 10%).
"""

from __future__ import annotations

import pytest

from fusefs import tracegen
from fusefs.policies import AccessInfo, Label
from fusefs.policies.workload_aware import WorkloadAwarePolicy
from fusefs.replay import replay

PAGE = 4096
OBJECTS = 5000
REQUESTS = 40_000
CLASSIC = ("lru", "sieve", "s3fifo", "arc")
TOLERANCE = 1.05

_traces: dict[str, object] = {}


def family(name: str) -> object:
    if name not in _traces:
        _traces[name] = tracegen.family_trace(name, n_objects=OBJECTS, n_requests=REQUESTS, seed=1)
    return _traces[name]


def random_part(trace: object, policy: str, cache: int) -> float:
    r = replay(trace, policy, cache, PAGE, tier="dram", belady=False)  # type: ignore[arg-type]
    return r.per_trace_label["random"]["miss_ratio"]


@pytest.mark.parametrize("name", tracegen.FAMILIES)
def test_default_is_close_to_the_best_classic_policy(name: str) -> None:
    trace = family(name)
    for share in (0.01, 0.1):
        cache = int(OBJECTS * share) * PAGE
        best = min(random_part(trace, p, cache) for p in CLASSIC)
        ours = random_part(trace, "workload_aware", cache)
        assert ours <= TOLERANCE * best, f"{name} at {share:.0%}: {ours:.4f} vs best classic {best:.4f}"


def test_families_are_seeded_and_labelled() -> None:
    for name in tracegen.FAMILIES:
        a = tracegen.family_trace(name, n_objects=400, n_requests=2000, seed=3)
        b = tracegen.family_trace(name, n_objects=400, n_requests=2000, seed=3)
        assert a.equals(b), name
        labels = a["label"].to_pylist()
        assert labels.count("random") == 2000, name
        assert set(labels) <= {"random", "sequential"}
    with pytest.raises(ValueError, match="families"):
        tracegen.family_trace("nope", n_objects=10, n_requests=10)


def test_drift_rotates_the_ranking() -> None:
    t = tracegen.drifting_zipf_trace(n_objects=1000, n_requests=20_000, drift_every=10_000, drift_fraction=0.15,
                                     alpha=1.2, seed=2)
    offs = t["offset"].to_pylist()

    def top(part: list[int]) -> set[int]:
        counts: dict[int, int] = {}
        for o in part:
            counts[o] = counts.get(o, 0) + 1
        return set(sorted(counts, key=counts.__getitem__, reverse=True)[:20])

    # After the shift the hottest objects are others: those 150 ranks further down before.
    assert len(top(offs[:10_000]) & top(offs[10_000:])) <= 2


def test_loop_repeats_one_scattered_order() -> None:
    t = tracegen.loop_trace(n_objects=100, n_requests=350, seed=1)
    offs = t["offset"].to_pylist()
    assert offs[:100] == offs[100:200] == offs[200:300]
    assert sorted(offs[:100]) == [i * PAGE for i in range(100)] and offs[:100] != sorted(offs[:100])


def test_tenants_read_their_own_files() -> None:
    t = tracegen.multi_tenant_trace(tenants=[(100, 1.0, 3.0), (50, 0.5, 1.0)], n_requests=4000, seed=1)
    fids = t["file_id"].to_pylist()
    assert set(fids) == {1, 2}
    assert 0.7 < fids.count(1) / 4000 < 0.8
    assert max(o for f, o in zip(fids, t["offset"].to_pylist()) if f == 2) < 50 * PAGE


def test_scan_epochs_wrap_around_the_files() -> None:
    s = tracegen.scan_trace(n_requests=32, request_size=PAGE, file_size=8 * PAGE, workers=1, n_files=2, seed=1)
    assert s["file_id"].to_pylist() == ([100] * 8 + [101] * 8) * 2
    assert s["offset"].to_pylist() == [i * PAGE for i in range(8)] * 4
    s = tracegen.scan_trace(n_requests=400, request_size=PAGE, file_size=8 * PAGE, workers=2, n_files=4, seed=1)
    assert set(s["file_id"].to_pylist()) == {100, 101, 102, 103}
    with pytest.raises(ValueError):
        tracegen.scan_trace(n_requests=1, workers=3, n_files=2)


def _feed(p: WorkloadAwarePolicy, keys: list[int]) -> None:
    info = AccessInfo(label=Label.RANDOM, file_id=1)
    for k in keys:
        p.access((1, k), PAGE, info)


def test_recency_expert_takes_the_lead_when_the_hot_set_moves() -> None:
    offs = tracegen.drifting_zipf_trace(n_objects=4000, n_requests=60_000, drift_every=2400, seed=1)["offset"]
    p = WorkloadAwarePolicy(500 * PAGE, tier="dram", object_size=PAGE)
    _feed(p, [o // PAGE for o in offs.to_pylist()])
    assert p.leader == "recency"
    assert p.statistics()["leader_switches"] >= 1


def test_frequency_expert_keeps_the_lead_on_a_stationary_skew() -> None:
    offs = tracegen.zipf_trace(n_objects=4000, n_requests=60_000, seed=1)["offset"]
    p = WorkloadAwarePolicy(400 * PAGE, tier="dram", object_size=PAGE)
    _feed(p, [o // PAGE for o in offs.to_pylist()])
    assert p.leader == "frequency"
    assert not p.check()


def test_wtinylfu_hill_climber_moves_the_window() -> None:
    from fusefs.policies import get_policy

    offs = tracegen.drifting_zipf_trace(n_objects=4000, n_requests=40_000, drift_every=2400, seed=1)["offset"]
    fixed = get_policy("wtinylfu")(400 * PAGE, object_size=PAGE)
    climbing = get_policy("wtinylfu")(400 * PAGE, object_size=PAGE, adaptive=True)
    for o in offs.to_pylist():
        fixed.access((1, o // PAGE), PAGE)
        climbing.access((1, o // PAGE), PAGE)
    assert fixed.statistics()["window_adjustments"] == 0
    assert climbing.statistics()["window_adjustments"] > 0
    assert climbing.statistics()["window_bytes"] != fixed.statistics()["window_bytes"]
    assert not climbing.check()


def test_shadow_mrc_matches_the_policies_and_samples_faithfully() -> None:
    from fusefs.policies.lru import LRUPolicy
    from fusefs.policies.mrc import ShadowMRC

    keys = [(1, o // PAGE) for o in tracegen.zipf_trace(n_objects=5000, n_requests=40_000, seed=4)["offset"].to_pylist()]
    full = ShadowMRC(500, policies=("lru", "arc"), sample_objects=10**9)
    sampled = ShadowMRC(500, policies=("lru", "arc"), sample_objects=125)
    lru = LRUPolicy(500, object_size=1)
    misses = 0
    for k in keys:
        full.record(k)
        sampled.record(k)
        misses += not lru.access(k, 1)
    assert full.rate == 1.0 and full.sampled == len(keys)
    assert dict(full.curves()["lru"])[1.0] == misses / len(keys)  # a shadow is the policy itself
    ratios = [r for _, r in full.curves()["lru"]]
    assert ratios == sorted(ratios, reverse=True)  # LRU: a larger cache never misses more
    assert 0 < sampled.sampled < len(keys) / 2
    for name in ("lru", "arc"):
        for (m, exact), (_, approx) in zip(full.curves()[name], sampled.curves()[name]):
            assert abs(exact - approx) < 0.05, (name, m, exact, approx)


def test_workload_aware_shows_live_curves_when_asked() -> None:
    p = WorkloadAwarePolicy(100 * PAGE, tier="dram", object_size=PAGE, mrc=True)
    _feed(p, [o // PAGE for o in tracegen.zipf_trace(n_objects=1000, n_requests=3000, seed=2)["offset"].to_pylist()])
    stats = p.statistics()
    assert stats["mrc.sampled"] == 3000
    assert 0 < stats["mrc.lru@1x"] <= 1000 and stats["mrc.arc@4x"] < stats["mrc.arc@0.25x"]
    assert "mrc.sampled" not in WorkloadAwarePolicy(100 * PAGE, object_size=PAGE).statistics()
    with pytest.raises(ValueError, match="no shadow"):
        from fusefs.policies.mrc import ShadowMRC

        ShadowMRC(10, policies=("belady",))


def test_the_mrc_option_feeds_each_tier_the_requests_that_reach_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``[policy] mrc``: the engine feeds the DRAM tier's curves every random request and
    the fast tier's every DRAM miss, whatever the policy; the counters join the
    ``policy_dram`` and ``policy`` sections, and the rate is capped for a mount."""
    import os

    import trio

    from fusefs.access import Override
    from fusefs.config import parse_config
    from fusefs.handles import HandleTable
    from fusefs.mount import build_engine
    from fusefs.policies.mrc import MOUNT_MAX_RATE
    from fusefs.stats import Stats
    from fusefs.tiers.posix import PosixTier

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(4 << 20)
    (src / "f").write_bytes(data)
    offsets = [o // PAGE * PAGE for o in tracegen.zipf_trace(n_objects=1024, n_requests=600, seed=3)["offset"].to_pylist()]

    async def run(name: str) -> dict[str, dict[str, int]]:
        cfg = parse_config(f'[policy]\nname = "{name}"\nmrc = true\n[cache]\ndram = "1MiB"\n'
                           f'size = "64MiB"\ndir = "{tmp_path / ("cache-" + name)}"\n')
        (tmp_path / ("cache-" + name)).mkdir(mode=0o700)
        stats = Stats()
        tier = PosixTier(str(src))
        await tier.start()
        engine = build_engine(tier, cfg, stats)
        assert engine.fast is not None and engine.mrc_fast is not None and engine.mrc_dram is not None
        assert engine.mrc_dram.rate <= MOUNT_MAX_RATE and engine.mrc_fast.rate <= MOUNT_MAX_RATE
        await engine.fast.open()
        try:
            f = await tier.open(b"f", os.O_RDONLY)
            st = await f.fstat()
            h = HandleTable().add_file(ino=2, path=b"f", file=f, flags=os.O_RDONLY, pid=1,
                                       size=st.st_size, override=Override(access_class="random"))
            engine.opened(h, st)
            for o in offsets:
                assert await engine.read(h, o, PAGE) == data[o:o + PAGE]
            await engine.release(h)
        finally:
            await engine.fast.close()
            await engine.close()
            await tier.close()
        snap = stats.snapshot()
        return {"dram": snap["policy_dram"], "fast": snap["policy"], "counters": snap["counters"]}

    for name in ("workload_aware", "lru"):
        got = trio.run(run, name)
        assert got["dram"]["mrc.uses"] == len(offsets)
        assert got["fast"]["mrc.uses"] == got["counters"]["dram.miss"] < len(offsets)
        assert 0 <= got["dram"]["mrc.sampled"] <= got["dram"]["mrc.uses"]
        assert "mrc.lru@1x" in got["fast"] and "mrc.arc@4x" in got["dram"]
    cfg = parse_config('[policy]\nmrc = false\n[cache]\ndram = "1MiB"\n')
    stats = Stats()
    engine = build_engine(PosixTier(str(src)), cfg, stats)
    assert engine.mrc_dram is None and "mrc.uses" not in stats.sources["policy_dram"]()
    trio.run(engine.close)
