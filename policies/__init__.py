"""Tiering policies, installed as ``fusefs.policies``; see ``base.py`` for the contract.

This package owns the shipped policies and finding a policy by name: the built-ins first,
then the ``tierfs.policies`` entry-point group, where third-party packages register theirs.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .arc import ARCPolicy
from .base import AccessInfo, Key, Label, Override, Policy, PolicyError, Tier
from .fifo import FIFOPolicy
from .lru import LRUPolicy
from .s3fifo import S3FIFOPolicy
from .sieve import SievePolicy
from .workload_aware import WorkloadAwarePolicy
from .wtinylfu import WTinyLFUPolicy

__all__ = [
    "DEFAULT_POLICY",
    "ENTRY_POINT_GROUP",
    "AccessInfo",
    "Key",
    "Label",
    "Override",
    "Policy",
    "PolicyError",
    "Tier",
    "WorkloadAwarePolicy",
    "available_policies",
    "builtin_policies",
    "get_policy",
]

ENTRY_POINT_GROUP = "tierfs.policies"
DEFAULT_POLICY = "workload_aware"

_BUILTINS: tuple[type[Policy], ...] = (
    LRUPolicy,
    FIFOPolicy,
    S3FIFOPolicy,
    SievePolicy,
    ARCPolicy,
    WTinyLFUPolicy,
    WorkloadAwarePolicy,
)


def builtin_policies() -> dict[str, type[Policy]]:
    """The policies shipped with tierfs, by name."""
    return {cls.name: cls for cls in _BUILTINS}


def _entry_point_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def available_policies() -> list[str]:
    """Every policy name that :func:`get_policy` can resolve, sorted."""
    return sorted(set(builtin_policies()) | set(_entry_point_names()))


def get_policy(name: str) -> type[Policy]:
    """Find a policy class by name: built-ins first, then the ``tierfs.policies`` group.

    Args:
        name: The registered name, e.g. ``"lru"`` or ``"workload_aware"``.

    Returns:
        The policy class (a subclass of :class:`Policy`).

    Raises:
        LookupError: If no policy has that name (the message lists the available ones), or
            the entry point does not load a :class:`Policy` subclass.
    """
    builtins = builtin_policies()
    cls = builtins.get(name)
    if cls is not None:
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise LookupError(f"policy {name!r} ({ep.value}) failed to load: {exc}") from exc
        if not (isinstance(loaded, type) and issubclass(loaded, Policy)):
            raise LookupError(f"policy {name!r} ({ep.value}) is not a subclass of fusefs.policies.Policy")
        return loaded
    raise LookupError(f"unknown policy {name!r}; available: {', '.join(available_policies())}")
