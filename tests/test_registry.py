"""Finding policies by name: built-ins, the entry-point group, and the error for unknowns."""

from __future__ import annotations

from importlib import metadata

import fusefs.policies as policies
import pytest
from fusefs.policies import Policy, available_policies, builtin_policies, get_policy

SHIPPED = {"lru", "fifo", "s3fifo", "sieve", "arc", "wtinylfu", "workload_aware"}


def test_shipped_policies_are_built_in() -> None:
    assert set(builtin_policies()) == SHIPPED
    for name in SHIPPED:
        cls = get_policy(name)
        assert issubclass(cls, Policy) and cls.name == name


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(LookupError) as err:
        get_policy("nope")
    for name in SHIPPED:
        assert name in str(err.value)


class _EP:
    def __init__(self, name: str, target: object, value: str = "pkg:Cls") -> None:
        self.name = name
        self.value = value
        self._target = target

    def load(self) -> object:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class MyPolicy(policies.LRUPolicy):
    name = "mine"


def _fake_entry_points(eps: list[_EP]):  # type: ignore[no-untyped-def]
    def entry_points(*, group: str, name: str | None = None) -> list[_EP]:
        assert group == "tierfs.policies"
        return [e for e in eps if name is None or e.name == name]

    return entry_points


def test_entry_point_group_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policies, "entry_points", _fake_entry_points([_EP("mine", MyPolicy)]))
    assert get_policy("mine") is MyPolicy
    assert "mine" in available_policies()
    # A plugin cannot shadow a built-in.
    monkeypatch.setattr(policies, "entry_points", _fake_entry_points([_EP("lru", MyPolicy)]))
    assert get_policy("lru") is policies.LRUPolicy


def test_broken_plugins_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        policies,
        "entry_points",
        _fake_entry_points([_EP("bad", ImportError("no module")), _EP("notapolicy", object)]),
    )
    with pytest.raises(LookupError, match="failed to load"):
        get_policy("bad")
    with pytest.raises(LookupError, match="not a subclass"):
        get_policy("notapolicy")


def test_real_entry_points_call_works() -> None:
    """The installed distribution's entry points name the shipped policies, and
    each loads to the class that get_policy returns for that name."""
    eps = {ep.name: ep for ep in metadata.entry_points(group="tierfs.policies")}
    assert set(eps) >= SHIPPED, sorted(eps)
    for name in SHIPPED:
        assert eps[name].load() is get_policy(name), name
    assert set(available_policies()) >= set(eps)
