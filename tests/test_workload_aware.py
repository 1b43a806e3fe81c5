"""The default policy's admission rules, one by one."""

from __future__ import annotations

import random

from fusefs.policies import AccessInfo, Label, Override, Tier, get_policy
from fusefs.policies.workload_aware import WorkloadAwarePolicy

PAGE = 4096


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
