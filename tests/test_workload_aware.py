"""The default policy's admission rules, one by one, and what its choice of expert learns
from inside a mount."""

from __future__ import annotations

import random

import pytest

from fusefs.policies import AccessInfo, Label, Override, Tier, get_policy
from fusefs.policies.workload_aware import WorkloadAwarePolicy

PAGE = 4096
# The in-process mount test: Zipf reads (a hot set rotating by 15% every MOUNT_DRIFT requests,
# or none), a 12.5% fast tier (its miniatures sample 1/8 of the keys in a mount).
MOUNT_OBJECTS = 4000
MOUNT_CACHE = 500
MOUNT_DRIFT = 2400
MOUNT_REQUESTS = 40_000


def make(capacity_pages: int = 100, tier: Tier = Tier.FAST) -> WorkloadAwarePolicy:
    return WorkloadAwarePolicy(capacity_pages * PAGE, tier=tier, object_size=PAGE)


def read(p: WorkloadAwarePolicy, fid: int, offset: int, size: int, label: Label, **kw: object) -> list[bool]:
    info = AccessInfo(label=label, file_id=fid, offset=offset, size=size, **kw)  # type: ignore[arg-type]
    p.on_read(info)
    return [p.access((fid, page), PAGE, info) for page in range(offset // PAGE, (offset + size - 1) // PAGE + 1)]


def test_is_the_default() -> None:
    from fusefs.policies import DEFAULT_POLICY

    assert get_policy(DEFAULT_POLICY) is WorkloadAwarePolicy


def test_first_pass_stream_is_not_admitted() -> None:
    for tier in (Tier.DRAM, Tier.FAST):
        p = make(tier=tier)
        for off in range(0, 64 * PAGE, 16 * PAGE):
            read(p, 1, off, 16 * PAGE, Label.SEQUENTIAL, file_size=1 << 30)
        assert len(p) == 0


def test_random_admitted_to_dram_on_first_access() -> None:
    p = make(tier=Tier.DRAM)
    read(p, 1, 5 * PAGE, PAGE, Label.RANDOM)
    assert (1, 5) in p


def test_random_admitted_to_fast_tier_on_second_access() -> None:
    p = make(tier=Tier.FAST)
    assert read(p, 1, 5 * PAGE, PAGE, Label.RANDOM) == [False]
    assert (1, 5) not in p
    assert read(p, 1, 5 * PAGE, PAGE, Label.RANDOM) == [False]
    assert (1, 5) in p
    assert read(p, 1, 5 * PAGE, PAGE, Label.RANDOM) == [True]


def test_should_admit_answers_per_tier() -> None:
    p = make(tier=Tier.FAST)
    info = AccessInfo(label=Label.RANDOM, file_id=1)
    assert p.should_admit((1, 9), PAGE, info, Tier.DRAM) is True
    assert p.should_admit((1, 9), PAGE, info, Tier.FAST) is False
    assert p.should_admit((1, 9), PAGE, info, Tier.FAST) is True  # seen once already


def test_second_epoch_of_a_file_that_fits_is_admitted_whole() -> None:
    p = make(capacity_pages=160)
    fsize = 40 * PAGE
    for off in range(0, fsize, 8 * PAGE):  # epoch 1: nothing admitted
        read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p) == 0
    for off in range(0, fsize, 8 * PAGE):  # epoch 2: all of it
        read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p.keys_of_file(3)) == 40
    hits = []
    for off in range(0, fsize, 8 * PAGE):  # epoch 3: served from the tier
        hits += read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert all(hits)
    assert p.statistics()["whole_file_admitted"] == 40


def test_second_epoch_without_known_size() -> None:
    p = make(capacity_pages=160)
    for _ in range(2):
        for off in range(0, 40 * PAGE, 8 * PAGE):
            read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL)
    assert len(p.keys_of_file(3)) == 40


def test_interleaved_workers_of_one_epoch_are_not_a_second_epoch() -> None:
    p = make(capacity_pages=100)
    fsize = 40 * PAGE
    halves = [range(0, 20 * PAGE, 4 * PAGE), range(20 * PAGE, 40 * PAGE, 4 * PAGE)]
    for a, b in zip(*halves):  # two workers on the two halves, alternating
        read(p, 3, b, 4 * PAGE, Label.SEQUENTIAL, file_size=fsize, stream_id=2)
        read(p, 3, a, 4 * PAGE, Label.SEQUENTIAL, file_size=fsize, stream_id=1)
    assert len(p) == 0


def test_re_read_files_share_one_budget() -> None:
    p = make(capacity_pages=160)  # budget: 40 pages
    fsize = 24 * PAGE
    for _ in range(2):  # two files re-read in turn: only the first fits the budget
        for fid in (3, 4):
            for off in range(0, fsize, 8 * PAGE):
                read(p, fid, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p.keys_of_file(3)) == 24
    assert len(p.keys_of_file(4)) == 0
    p.invalidate_file(3)  # the budget it held is free again
    for _ in range(2):
        for off in range(0, fsize, 8 * PAGE):
            read(p, 5, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p.keys_of_file(5)) == 24


def test_a_file_too_big_to_fit_is_not_admitted_on_reread() -> None:
    p = make(capacity_pages=100)
    fsize = 30 * PAGE  # more than the budget (a quarter of the capacity)
    for _ in range(2):
        for off in range(0, fsize, 8 * PAGE):
            read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p) == 0


def test_rules_override_labels() -> None:
    p = make(tier=Tier.DRAM)
    read(p, 1, 0, PAGE, Label.RANDOM, override=Override(access_class="stream"))
    assert (1, 0) not in p
    read(p, 1, PAGE, PAGE, Label.SEQUENTIAL, override=Override(access_class="random"))
    assert (1, 1) in p
    read(p, 1, 2 * PAGE, PAGE, Label.RANDOM, override=Override(cache=False))
    assert (1, 2) not in p
    read(p, 1, 3 * PAGE, PAGE, Label.SEQUENTIAL, override=Override(pin=True))
    assert (1, 3) in p and p.is_pinned((1, 3))


def test_scans_do_not_flush_the_hot_set() -> None:
    p = make(capacity_pages=200, tier=Tier.DRAM)
    rng = random.Random(1)
    hot = list(range(100))
    for _ in range(2000):
        read(p, 1, rng.choice(hot) * PAGE, PAGE, Label.RANDOM)
    for off in range(0, 4000 * PAGE, 16 * PAGE):
        read(p, 2, off, 16 * PAGE, Label.SEQUENTIAL)
    assert all((1, k) in p for k in hot)


def test_readahead_for_streams() -> None:
    p = make()
    assert p.readahead(AccessInfo(label=Label.RANDOM)) == 0
    assert p.readahead(AccessInfo(label=Label.SEQUENTIAL, run_length=1 << 20)) == 1 << 20
    assert p.readahead(AccessInfo(label=Label.SEQUENTIAL, run_length=1 << 30)) == 8 << 20


def test_invalidate_forgets_the_epoch_history() -> None:
    p = make(capacity_pages=160)
    fsize = 40 * PAGE
    for off in range(0, fsize, 8 * PAGE):
        read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    p.invalidate_file(3)
    for off in range(0, fsize, 8 * PAGE):  # the changed file's first pass again
        read(p, 3, off, 8 * PAGE, Label.SEQUENTIAL, file_size=fsize)
    assert len(p) == 0


def test_reported_uses_replace_hits_as_the_miniatures_feed_and_are_sampled() -> None:
    from fusefs.policies.workload_aware import OBSERVED_MAX_RATE

    p = make(capacity_pages=100)  # 100 objects: a simulation samples every key
    info = AccessInfo(label=Label.RANDOM, file_id=1, size=PAGE)
    rng = random.Random(3)
    for _ in range(2000):
        p.access((1, rng.randrange(400)), PAGE, info)
    before = p.statistics()
    assert before["mini_sampled"] == before["mini_uses"] == 2000
    for i in range(20_000):  # a mount reports every request: at most 1/8 of the keys sampled
        p.on_use((9, i % 5000), info)
    p.on_use((9, 1), AccessInfo(label=Label.SEQUENTIAL, file_id=9))  # streams are not fed
    mid = p.statistics()
    assert mid["mini_uses"] - before["mini_uses"] == 20_000
    share = (mid["mini_sampled"] - before["mini_sampled"]) / 20_000
    assert 0.3 * OBSERVED_MAX_RATE < share < 2 * OBSERVED_MAX_RATE
    for _ in range(500):  # hits and misses no longer feed them
        p.access((1, rng.randrange(400)), PAGE, info)
    assert p.statistics()["mini_uses"] == mid["mini_uses"]
    assert not p.check()


@pytest.mark.parametrize(("shape", "expert"), [("drift", "recency"), ("zipf", "frequency")])
def test_in_a_mount_the_miniatures_learn_from_every_request_and_choose_as_offline(
        tmp_path, shape: str, expert: str) -> None:  # type: ignore[no-untyped-def]
    """Inside a mount the fast tier's policy hears of its hits only (the engine finds misses
    itself); the engine reports every request that reaches the tier (`Policy.on_use`), so
    the default's miniature simulations see the whole stream and choose the expert the same
    trace chooses offline: on a hot set that moves, the recency expert (ARC); on a
    stationary Zipf, the frequency expert (W-TinyLFU), where hits alone chose recency."""
    import os

    import trio

    from fusefs import tracegen
    from fusefs.access import Override
    from fusefs.config import parse_config
    from fusefs.handles import HandleTable
    from fusefs.mount import build_engine
    from fusefs.replay import replay
    from fusefs.stats import Stats
    from fusefs.tiers.posix import PosixTier

    objects, cache = MOUNT_OBJECTS, MOUNT_CACHE
    if shape == "drift":
        trace = tracegen.drifting_zipf_trace(n_objects=objects, n_requests=MOUNT_REQUESTS,
                                             drift_every=MOUNT_DRIFT, seed=1)
    else:
        trace = tracegen.zipf_trace(n_objects=objects, n_requests=MOUNT_REQUESTS, alpha=1.0, seed=1)
    offsets = trace["offset"].to_pylist()
    offline = replay(trace, "workload_aware", cache * PAGE, PAGE, tier=Tier.FAST, belady=False)
    assert offline.policy_stats["leader_recency"] == (expert == "recency")  # the replay's choice

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(objects * PAGE)
    (src / "index").write_bytes(data)
    (tmp_path / "cache").mkdir(mode=0o700)
    # No DRAM tier: every request reaches the fast tier, as every request reaches the
    # offline replay; one object per 4 KiB chunk, as in the replay.
    cfg = parse_config(f'[cache]\ndram = 0\nsize = "{cache * PAGE}"\nchunk_size = "4KiB"\n'
                       f'remote_block = "4KiB"\ndir = "{tmp_path / "cache"}"\n')

    async def run() -> WorkloadAwarePolicy:
        tier = PosixTier(str(src))
        await tier.start()
        engine = build_engine(tier, cfg, Stats())
        assert engine.fast is not None and isinstance(engine.policy, WorkloadAwarePolicy)
        await engine.fast.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)  # fast-tier admissions run, as in a mount
                f = await tier.open(b"index", os.O_RDONLY)
                st = await f.fstat()
                h = HandleTable().add_file(ino=2, path=b"index", file=f, flags=os.O_RDONLY, pid=1,
                                           size=st.st_size, override=Override(access_class="random"))
                engine.opened(h, st)
                for i, o in enumerate(offsets):
                    assert await engine.read(h, o, PAGE) == data[o:o + PAGE]
                    if i % 50 == 49:
                        # Reads from a local file never wait, so let the admissions they
                        # started land (as a mount's requests, each its own task, do).
                        with trio.fail_after(60):  # a guard against a hang, not a timing check
                            while engine.queues()["admissions_in_flight"]:
                                await trio.sleep(0.001)
                await engine.release(h)
                nursery.cancel_scope.cancel()
        finally:
            await engine.fast.close()
            await engine.close()
            await tier.close()
        return engine.policy

    policy = trio.run(run)
    stats = policy.statistics()
    assert policy.leader == expert, stats
    # The miniatures were offered every request, not only the fast tier's hits.
    assert stats["mini_uses"] >= 0.9 * len(offsets), stats
    assert 0 < stats["hits"] < 0.9 * len(offsets), stats  # the tier served some, not all
