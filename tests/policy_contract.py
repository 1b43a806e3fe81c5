"""The contract every policy must honour, as a mixin of tests.

A test module subclasses :class:`PolicyContract` and sets ``policy_class`` (or overrides
``make_policy(capacity, **options)``); ``tests/test_policies_contract.py`` runs it for every
shipped policy and for the third-party example. A third-party package can import this module
from a tierfs checkout and run the same suite on its policy. Only the contract of
``docs/policies.md`` is checked here, never a policy's own ordering.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from fusefs.policies import AccessInfo, Label, Override, Policy, PolicyError, Tier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def check_invariants(p: Policy) -> None:
    keys = list(p)
    assert p.used == sum(p.size_of(k) for k in keys)  # type: ignore[misc]
    # docs/policies.md: never above capacity unless the pinned bytes alone are
    assert p.used <= p.capacity or p.pinned_bytes > p.capacity
    assert p.pinned_bytes == sum(p.size_of(k) for k in keys if p.is_pinned(k))  # type: ignore[misc]
    assert len(p) == len(keys)


class PolicyContract:
    """Mixin of contract tests; subclasses set ``policy_class`` or define :meth:`make_policy`."""

    policy_class: type[Policy]

    def make_policy(self, capacity: int, **options: Any) -> Policy:
        return self.policy_class(capacity, **options)

    # -- construction and naming -----------------------------------------------------------

    def test_is_a_policy_with_a_name(self) -> None:
        p = self.make_policy(10, object_size=1)
        assert isinstance(p, Policy)
        assert isinstance(type(p).name, str) and type(p).name
        assert p.capacity == 10 and p.used == 0 and len(p) == 0

    def test_accepts_the_base_options(self) -> None:
        clock = FakeClock()
        p = self.make_policy(4096 * 4, tier="dram", clock=clock, object_size=4096, max_readahead=1 << 20)
        assert p.tier is Tier.DRAM
        assert self.make_policy(4096, object_size=4096).tier is Tier.FAST
        seq = AccessInfo(label=Label.SEQUENTIAL, size=131072, run_length=64 << 20)
        assert 0 < p.readahead(seq) <= 1 << 20  # max_readahead is honoured

    # -- the simulation entry point --------------------------------------------------------

    def test_access_reports_hits_exactly(self) -> None:
        p = self.make_policy(50, object_size=1)
        rng = random.Random(1)
        for _ in range(3000):
            key = (rng.randrange(3), rng.randrange(80))
            was_resident = key in p
            assert p.access(key, 1) is was_resident
            check_invariants(p)

    def test_capacity_holds_with_mixed_sizes(self) -> None:
        p = self.make_policy(1000, object_size=50)
        rng = random.Random(2)
        for _ in range(3000):
            key = (rng.randrange(4), rng.randrange(60))
            size = 10 + (hash(key) % 7) * 20
            p.access(key, size)
            assert p.used <= p.capacity
        check_invariants(p)

    def test_oversized_object_is_not_admitted(self) -> None:
        p = self.make_policy(10, object_size=1)
        assert p.access((1, 1), 11) is False
        assert (1, 1) not in p
        assert p.used == 0

    def test_same_sequence_same_outcome(self) -> None:
        rng = random.Random(3)
        seq = [((rng.randrange(2), rng.randrange(100)), 1) for _ in range(2000)]
        runs = []
        for _ in range(2):
            p = self.make_policy(30, object_size=1)
            runs.append([p.access(k, s) for k, s in seq])
        assert runs[0] == runs[1]

    def test_repeated_key_eventually_hits(self) -> None:
        p = self.make_policy(100, object_size=1)
        hits = [p.access((0, 7), 1) for _ in range(5)]
        assert hits[-1] is True

    # -- the engine calls ------------------------------------------------------------------

    def test_lookup_and_record_hit(self) -> None:
        p = self.make_policy(10, object_size=1)
        assert p.lookup((0, 1)) is False
        p.insert((0, 1), 1)
        assert p.lookup((0, 1)) is True
        p.record_hit((0, 1))
        with pytest.raises(KeyError):
            p.record_hit((0, 2))
        stats = p.statistics()
        assert stats["hits"] == 2 and stats["misses"] == 1

    def test_insert_returns_evicted_keys(self) -> None:
        p = self.make_policy(10, object_size=1)
        resident: set[object] = set()
        for i in range(40):
            before = set(p)
            evicted = p.insert((0, i), 1)
            assert set(evicted) <= before
            assert len(set(evicted)) == len(evicted)
            for k in evicted:
                assert k not in p
            assert (0, i) in p
            resident = set(p)
            assert len(resident) <= 10
        check_invariants(p)

    def test_insert_resident_key_replaces_it(self) -> None:
        p = self.make_policy(100, object_size=1)
        p.insert((0, 1), 10)
        p.insert((0, 1), 20)
        assert p.size_of((0, 1)) == 20 and p.used == 20 and len(p) == 1

    def test_victims_free_at_least_what_was_asked(self) -> None:
        p = self.make_policy(100, object_size=10)
        for i in range(10):
            p.insert((0, i), 10)
        used = p.used
        out = p.victims(25)
        assert used - p.used >= 25
        assert all(k not in p for k in out)
        assert p.victims(0) == []
        check_invariants(p)

    def test_remove(self) -> None:
        p = self.make_policy(10, object_size=1)
        p.insert((0, 1), 1)
        assert p.remove((0, 1)) is True
        assert p.remove((0, 1)) is False
        assert (0, 1) not in p and p.used == 0
        # The policy still works after removals (its ordering lost the key too).
        for i in range(30):
            p.access((0, i), 1)
        check_invariants(p)

    def test_invalidate_file(self) -> None:
        p = self.make_policy(100, object_size=1)
        for i in range(10):
            p.insert((1, i), 1)
            p.insert((2, i), 1)
        gone = p.invalidate_file(1)
        assert sorted(gone) == [(1, i) for i in range(10)]
        assert all((1, i) not in p for i in range(10))
        assert all((2, i) in p for i in range(10))
        assert p.keys_of_file(1) == [] and len(p.keys_of_file(2)) == 10
        for i in range(300):
            p.access((3, i % 150), 1)
        check_invariants(p)

    def test_pinned_keys_are_never_victims(self) -> None:
        p = self.make_policy(10, object_size=1)
        p.insert((9, 0), 1)
        p.pin((9, 0))
        p.pin((9, 1))  # pinned before it is resident
        p.insert((9, 1), 1)
        rng = random.Random(4)
        for _ in range(500):
            p.access((0, rng.randrange(50)), 1)
            assert (9, 0) in p and (9, 1) in p
        assert p.pinned_bytes == 2
        p.unpin((9, 0))
        p.unpin((9, 1))
        assert p.pinned_bytes == 0
        # Unpinned, they are candidates again: freeing everything frees them too.
        p.victims(p.capacity)
        assert (9, 0) not in p and (9, 1) not in p and p.used == 0
        check_invariants(p)

    def test_no_room_when_everything_is_pinned(self) -> None:
        p = self.make_policy(3, object_size=1)
        for i in range(3):
            p.insert((0, i), 1)
            p.pin((0, i))
        with pytest.raises(PolicyError):
            p.insert((0, 9), 1)
        assert p.access((0, 9), 1) is False
        assert (0, 9) not in p
        assert p.victims(2) == []
        check_invariants(p)

    def test_pinned_key_survives_remove_of_others_and_invalidate_keeps_pin(self) -> None:
        p = self.make_policy(10, object_size=1)
        p.pin((5, 0))
        p.insert((5, 0), 1)
        assert p.invalidate_file(5) == [(5, 0)]
        assert p.pinned_bytes == 0 and p.is_pinned((5, 0))
        p.insert((5, 0), 1)
        assert p.pinned_bytes == 1

    def test_overrides_beat_the_policy(self) -> None:
        p = self.make_policy(100, object_size=1)
        never = AccessInfo(label=Label.RANDOM, override=Override(cache=False))
        assert p.should_admit((0, 1), 1, never) is False
        assert p.access((0, 1), 1, never) is False and (0, 1) not in p
        pin = AccessInfo(label=Label.SEQUENTIAL, override=Override(pin=True))
        assert p.should_admit((0, 2), 1, pin) is True
        p.access((0, 2), 1, pin)
        assert (0, 2) in p and p.is_pinned((0, 2))

    def test_should_admit_takes_a_tier(self) -> None:
        p = self.make_policy(100, object_size=1)
        for tier in (Tier.DRAM, Tier.FAST, "dram", "fast"):
            assert isinstance(p.should_admit((0, 1), 1, AccessInfo(label=Label.RANDOM), tier), bool)

    def test_readahead(self) -> None:
        p = self.make_policy(1 << 30, object_size=4096, max_readahead=4 << 20)
        assert p.readahead(AccessInfo(label=Label.RANDOM, size=4096)) == 0
        seq = p.readahead(AccessInfo(label=Label.SEQUENTIAL, size=131072, run_length=1 << 20))
        assert 0 < seq <= 4 << 20
        stream = p.readahead(AccessInfo(label=Label.UNKNOWN, override=Override(access_class="stream")))
        assert 0 < stream <= 4 << 20

    def test_events_are_accepted(self) -> None:
        p = self.make_policy(100, object_size=1)
        p.on_open(1, file_size=10, pid=3)
        p.on_read(AccessInfo(label=Label.SEQUENTIAL, file_id=1, size=1))
        p.on_write((1, 0), 1, AccessInfo(op="write", file_id=1))
        p.on_close(1)
        assert isinstance(p.statistics(), dict)

    def test_on_use_reports_the_request_stream_and_changes_no_residency(self) -> None:
        # docs/policies.md: a name for the data, not a resident key, so never refused for
        # its type, and the bookkeeping stays as it was.
        p = self.make_policy(8, object_size=1, key_type=int)
        for k in range(4):
            p.insert(k, 1)
        before = sorted(p)
        for i in range(200):
            p.on_use((7, i % 12), AccessInfo(label=Label.RANDOM, file_id=7, offset=i, size=1))
        p.on_use(("any", "hashable"))
        assert sorted(p) == before
        check_invariants(p)

    def test_labels_do_not_break_bookkeeping(self) -> None:
        p = self.make_policy(64, object_size=1)
        rng = random.Random(5)
        for i in range(4000):
            label = rng.choice([Label.SEQUENTIAL, Label.RANDOM, Label.UNKNOWN])
            fid = rng.randrange(3)
            info = AccessInfo(label=label, file_id=fid, offset=i, size=1, file_size=50, stream_id=fid)
            p.on_read(info)
            key = (fid, rng.randrange(50))
            was = key in p
            assert p.access(key, 1, info) is was
        check_invariants(p)

    # The mixin's test runs once per policy class by design, hence several executors.
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        ops=st.lists(
            st.tuples(
                st.sampled_from(["access", "insert", "remove", "pin", "unpin", "invalidate", "victims"]),
                st.integers(0, 2),
                st.integers(0, 15),
                st.integers(1, 4),
            ),
            max_size=120,
        )
    )
    def test_model_based(self, ops: list[tuple[str, int, int, int]]) -> None:
        """The policy against a model the test keeps itself.

        The model holds every resident key with the size the test gave it, and
        the pinned keys; it is never read back from the policy. What the model
        cannot know is the policy's own choice on a missed ``access`` (admit or
        not, which keys to evict, neither of which ``access`` returns): that is
        learned from membership only (``key in p``), and checked against the
        contract (only the accessed key may appear, only unpinned keys may go,
        a pinned key that fits is admitted). Sizes and byte counts always come
        from the model.
        """
        cap = 12
        p = self.make_policy(cap, object_size=1)
        model: dict[object, int] = {}
        pinned: set[object] = set()

        def pinned_bytes(exclude: object = None) -> int:
            return sum(model[k] for k in pinned if k in model and k != exclude)

        for op, fid, idx, size in ops:
            key = (fid, idx)
            if op == "access":
                room = cap - pinned_bytes()
                hit = p.access(key, size)
                assert hit is (key in model)
                if not hit:
                    admitted = key in p
                    if admitted:
                        assert size <= room, "admitted an object that cannot fit beside the pins"
                    elif key in pinned:
                        assert size > room, "a pinned key that fits was not admitted"
                    gone = [k for k in model if k not in p]
                    assert not (set(gone) & pinned), "access evicted a pinned key"
                    if gone:
                        assert admitted, "access evicted keys without admitting one"
                    for k in gone:
                        del model[k]
                    if admitted:
                        model[key] = size
            elif op == "insert":
                if size > cap - pinned_bytes(exclude=key):
                    with pytest.raises(PolicyError):
                        p.insert(key, size)
                    model.pop(key, None)
                else:
                    evicted = p.insert(key, size)
                    assert len(set(evicted)) == len(evicted)
                    assert not (set(evicted) & pinned)
                    assert set(evicted) <= set(model) - {key}, "evicted a key that was not resident"
                    model[key] = size
                    for k in evicted:
                        del model[k]
            elif op == "remove":
                assert p.remove(key) is (key in model)
                model.pop(key, None)
            elif op == "pin":
                p.pin(key)
                pinned.add(key)
            elif op == "unpin":
                p.unpin(key)
                pinned.discard(key)
            elif op == "invalidate":
                gone = p.invalidate_file(fid)
                assert sorted(gone) == sorted(k for k in model if k[0] == fid)  # type: ignore[index]
                for k in gone:
                    del model[k]
            else:
                before = sum(model.values())
                evicted = p.victims(size)
                assert len(set(evicted)) == len(evicted)
                assert set(evicted) <= set(model), "evicted a key that was not resident"
                assert not (set(evicted) & pinned)
                for k in evicted:
                    del model[k]
                freed = before - sum(model.values())
                if freed < size:  # fewer bytes than asked only when nothing unpinned is left
                    assert all(k in pinned for k in model), (freed, size, model, pinned)
            # The policy agrees with the model, byte for byte.
            assert {k: p.size_of(k) for k in p} == model  # type: ignore[misc]
            assert len(p) == len(model)
            assert p.used == sum(model.values())
            assert p.pinned_bytes == pinned_bytes()
            assert p.used <= cap
            for k in pinned:
                assert p.is_pinned(k)
