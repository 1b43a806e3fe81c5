"""The Policy contract: what a tiering policy is told, what it decides, what it keeps.

This module owns the interface between the engine (which moves bytes between tiers) and a
policy (which decides). A policy instance serves *one* tier and manages its cache objects,
each with a size in bytes, within a capacity in bytes. In a mount the keys are typed
(`fusefs.access`): `FastKey` (cache entry, extent start) for the fast tier, `DramKey`
(DRAM entry, page) for DRAM admission; an instance built with ``key_type`` refuses any other
key with `TypeError`, so one tier's key can never reach another tier's bookkeeping.
Simulations (replay, tests) use plain ``(file_id, index)`` tuples. A policy never does I/O
and reads time only from the clock it is given.

Two name spaces, never mixed: a key's *owner* (`file_of`: the file of a tuple key, the
entry of a `FastKey`) scopes :meth:`keys_of_file` and :meth:`invalidate_file`; the
``file_id`` of an `AccessInfo` is the file as readers see it (the mount's inode) and scopes
a policy's access history (:meth:`on_read`, :meth:`forget_history`).

Division of labour, as in cachetools: :class:`Policy` keeps the bookkeeping (which keys are
resident, their sizes, used bytes, pinned keys, keys per file, counters) and calls a handful
of hooks that a subclass implements to keep its own ordering and to choose victims. A
subclass never touches the bookkeeping and never sees pinned keys in its ordering.

Two ways to drive a policy:

* Simulation: :meth:`Policy.access` replays one use of a key and returns whether it hit; on a
  miss it applies the policy's own admission decision and evicts as needed.
* The engine, which owns the data: :meth:`lookup` (or :meth:`record_hit`) on every use
  of a resident key, :meth:`on_use` on every request for the tier's data (hit or miss),
  :meth:`should_admit` on a miss, :meth:`insert` (which returns the keys to drop),
  :meth:`victims` under space pressure, :meth:`remove` when data is gone,
  :meth:`invalidate_file` when an owner's data is gone, :meth:`forget_history` when a
  file's source changed, :meth:`pin` / :meth:`unpin`, and
  :meth:`readahead` for sequential reads.

``docs/policies.md`` is the reference for the contract.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import ClassVar

from ..access import (UNKNOWN_ACCESS, AccessInfo, DramKey, FastCandidate, FastKey, Label,
                      Override, effective_label)

__all__ = [
    "AccessInfo",
    "DramKey",
    "FastCandidate",
    "FastKey",
    "Key",
    "Label",
    "Override",
    "Policy",
    "PolicyError",
    "Tier",
    "file_of",
]

Key = Hashable
"""A cache object key; the engine uses ``(file_id, index)`` tuples."""

KiB = 1024
MiB = 1024 * 1024


class PolicyError(Exception):
    """A request the policy cannot satisfy (e.g. no room: everything left is pinned)."""


class Tier(enum.StrEnum):
    """The tier a policy instance manages, or is asked about."""

    DRAM = "dram"
    FAST = "fast"


def file_of(key: Key) -> int | None:
    """The owner of a key: the file of a ``(file_id, index)`` tuple, the entry of a
    `DramKey`, the cache entry of a `FastKey`; ``None`` for other keys."""
    if type(key) is tuple and key:
        return key[0]  # type: ignore[no-any-return]
    owner = getattr(key, "owner", None)
    return owner if isinstance(owner, int) else None


class Policy:
    """Base class of every policy: bookkeeping here, ordering and victims in subclasses.

    Subclasses implement :meth:`_on_insert`, :meth:`_on_hit`, :meth:`_evict` and
    :meth:`_on_remove`, and may override :meth:`_on_miss`, :meth:`_admit`,
    :meth:`_readahead`, :meth:`_fill_whole`, the event hooks and :meth:`statistics`.

    Args:
        capacity: Bytes the tier may hold.
        tier: The tier this instance manages (decides the default for :meth:`should_admit`).
        clock: Monotonic time in seconds; policies must not read time any other way.
        object_size: Typical size of one object in bytes; policies that size structures by
            count (sketches, ghosts) use it. The engine passes its page or chunk size.
        max_readahead: Upper bound of :meth:`readahead` in bytes.
        fill_max: Largest file :meth:`fill_whole` fetches whole (0: none).
        key_type: If given, the only type of resident key this instance accepts
            (`fusefs.access.FastKey` for the fast tier); any other raises `TypeError`.
    """

    name: ClassVar[str] = ""
    """The name the policy is registered under."""

    def __init__(
        self,
        capacity: int,
        *,
        tier: Tier | str = Tier.FAST,
        clock: Callable[[], float] = time.monotonic,
        object_size: int = 4096,
        max_readahead: int = 8 * MiB,
        fill_max: int = 0,
        key_type: type | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        if object_size <= 0:
            raise ValueError("object_size must be positive")
        self._capacity = int(capacity)
        self._tier = Tier(tier)
        self._clock = clock
        self._object_size = int(object_size)
        self._max_readahead = int(max_readahead)
        self._fill_max = int(fill_max)
        self._key_type = key_type
        self._sizes: dict[Key, int] = {}
        self._used = 0
        self._pinned: set[Key] = set()
        self._pinned_bytes = 0
        self._n_pinned_resident = 0
        self._by_file: dict[int, set[Key]] = {}
        self._hits = 0
        self._misses = 0
        self._admitted = 0
        self._rejected = 0
        self._evictions = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Bytes the tier may hold."""
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes held by resident keys (pinned ones included)."""
        return self._used

    @property
    def pinned_bytes(self) -> int:
        """Bytes held by resident pinned keys."""
        return self._pinned_bytes

    @property
    def tier(self) -> Tier:
        """The tier this instance manages."""
        return self._tier

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: object) -> bool:
        """Whether a key is resident; no side effect (not a use)."""
        return key in self._sizes

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._sizes))

    def size_of(self, key: Key) -> int | None:
        """The size of a resident key, or ``None``."""
        return self._sizes.get(key)

    def is_pinned(self, key: Key) -> bool:
        """Whether a key is pinned (resident or not yet)."""
        return key in self._pinned

    def keys_of_file(self, file_id: int) -> list[Key]:
        """The resident keys of one file."""
        return list(self._by_file.get(file_id, ()))

    # -- the simulation entry point --------------------------------------------------------

    def access(self, key: Key, size: int, info: AccessInfo | None = None) -> bool:
        """Replay one use of ``key``: a hit, or a miss the policy may admit.

        Exactly :meth:`lookup`, then on a miss :meth:`should_admit` and :meth:`insert`;
        the object is not admitted if it cannot fit beside the pinned bytes.

        Args:
            key: The object used.
            size: Its size in bytes.
            info: The request that used it.

        Returns:
            Whether it was a hit.
        """
        if info is None:
            info = UNKNOWN_ACCESS
        if key in self._sizes:
            self._hits += 1
            if key not in self._pinned:
                self._on_hit(key, info)
            return True
        self._misses += 1
        self._on_miss(key, info)
        if self.should_admit(key, size, info) and size <= self._capacity - self._pinned_bytes:
            self.insert(key, size, info)
        return False

    # -- what the engine calls -------------------------------------------------------------

    def lookup(self, key: Key, info: AccessInfo | None = None) -> bool:
        """Record one use of ``key`` and say whether it is resident.

        A hit updates the policy's ordering; a miss lets the policy note it (ghosts,
        frequencies). Use ``key in policy`` to ask without recording a use.
        """
        self._check_key(key)
        if info is None:
            info = UNKNOWN_ACCESS
        if key in self._sizes:
            self._hits += 1
            if key not in self._pinned:
                self._on_hit(key, info)
            return True
        self._misses += 1
        self._on_miss(key, info)
        return False

    def record_hit(self, key: Key, info: AccessInfo | None = None) -> None:
        """Record a use of a key the engine found resident by itself.

        Raises:
            KeyError: If the key is not resident.
            TypeError: If the key is not of this instance's ``key_type``.
        """
        self._check_key(key)
        if key not in self._sizes:
            raise KeyError(key)
        self._hits += 1
        if key not in self._pinned:
            self._on_hit(key, info if info is not None else UNKNOWN_ACCESS)

    def should_admit(self, key: Key, size: int, info: AccessInfo | None = None, tier: Tier | str | None = None) -> bool:
        """Decide whether a missed object should be admitted to a tier.

        Overrides come first: a pinned key or ``override.pin`` is always admitted,
        ``override.cache=False`` never is; otherwise the policy decides (:meth:`_admit`).
        Asking has no effect beyond the policy's own admission memory (e.g. a
        reject-first ghost) and the admitted/rejected counters.

        Args:
            key: The missed object.
            size: Its size in bytes.
            info: The request that missed.
            tier: The tier asked about; defaults to the instance's tier.
        """
        if info is None:
            info = UNKNOWN_ACCESS
        override = info.override
        if key in self._pinned or (override is not None and override.pin):
            ok = True
        elif override is not None and not override.cache:
            ok = False
        else:
            ok = self._admit(key, size, info, self._tier if tier is None else Tier(tier))
        if ok:
            self._admitted += 1
        else:
            self._rejected += 1
        return ok

    def insert(self, key: Key, size: int, info: AccessInfo | None = None) -> list[Key]:
        """Make ``key`` resident, evicting as needed.

        The caller decided to admit it (usually by :meth:`should_admit`); writes are
        inserted without asking. ``override.pin`` pins the key. Inserting a resident key
        replaces it: new size, ordered as a new object.

        Args:
            key: The object to insert.
            size: Its size in bytes.
            info: The request that brought it.

        Returns:
            The keys evicted to make room, in eviction order; the engine drops their data.

        Raises:
            PolicyError: If the object cannot fit even after evicting every unpinned key.
        """
        if info is None:
            info = UNKNOWN_ACCESS
        self._check_key(key)
        if size < 0:
            raise ValueError("size must not be negative")
        if key in self._sizes:
            self._remove_resident(key)
        if info.override is not None and info.override.pin:
            self._pinned.add(key)
        if size > self._capacity - self._pinned_bytes:
            raise PolicyError(f"cannot fit {size} bytes: capacity {self._capacity}, pinned {self._pinned_bytes}")
        evicted = self._make_room(self._capacity - size, size)
        self._sizes[key] = size
        self._used += size
        fid = file_of(key)
        if fid is not None:
            keys = self._by_file.get(fid)
            if keys is None:
                self._by_file[fid] = {key}
            else:
                keys.add(key)
        if key in self._pinned:
            self._pinned_bytes += size
            self._n_pinned_resident += 1
        else:
            self._on_insert(key, size, info)
        return evicted

    def victims(self, nbytes: int) -> list[Key]:
        """Evict unpinned keys until at least ``nbytes`` have been freed.

        For space pressure the policy cannot see (a filling disk, a shrinking budget).

        Returns:
            The evicted keys; fewer bytes than asked if only pinned keys are left.
        """
        target = self._used - nbytes
        return self._make_room(max(target, 0), 0)

    def remove(self, key: Key) -> bool:
        """Forget a resident key whose data is gone (not an eviction).

        Returns:
            Whether the key was resident.
        """
        self._check_key(key)
        if key not in self._sizes:
            return False
        self._remove_resident(key)
        return True

    def invalidate_file(self, file_id: int) -> list[Key]:
        """Forget every resident key owned by ``file_id`` and that file's access history.

        For simulations, where a key's owner and the request's file are one id. A mount
        drops a fast-tier entry's keys with :meth:`remove` and a changed file's history
        with :meth:`forget_history`: an entry id is not an inode. Pins on the keys stay
        (they come from rules, not from the data).

        Returns:
            The keys that were resident.
        """
        keys = list(self._by_file.get(file_id, ()))
        for key in keys:
            self._remove_resident(key)
        self._on_invalidate_file(file_id)
        return keys

    def forget_history(self, file_id: int) -> None:
        """The file ``file_id`` (an `AccessInfo.file_id`) changed or is gone: what the
        policy learnt about how it is read describes other bytes. Resident keys stay."""
        self._on_invalidate_file(file_id)

    def pin(self, key: Key) -> None:
        """Pin a key: always admitted, never a victim. It may be resident or not yet."""
        self._check_key(key)
        if key in self._pinned:
            return
        self._pinned.add(key)
        size = self._sizes.get(key)
        if size is not None:
            self._pinned_bytes += size
            self._n_pinned_resident += 1
            self._on_remove(key)

    def unpin(self, key: Key) -> None:
        """Unpin a key; a resident key becomes an eviction candidate again."""
        if key not in self._pinned:
            return
        self._pinned.discard(key)
        size = self._sizes.get(key)
        if size is not None:
            self._pinned_bytes -= size
            self._n_pinned_resident -= 1
            self._on_insert(key, size, UNKNOWN_ACCESS)

    def readahead(self, info: AccessInfo) -> int:
        """How many bytes to read ahead after this request (0: none).

        The default follows the stream: nothing for random reads, and for sequential ones
        the run length so far (so the window doubles as the stream proves itself), at least
        128 KiB and at most ``max_readahead``; ``class = "stream"`` rules get the maximum.
        """
        return self._readahead(info)

    def fill_whole(self, info: AccessInfo) -> bool:
        """Whether to fetch the whole file of this random read into the tier in the background.

        The engine asks on a random read that missed every cache of a remote capacity tier
        (an object store, where each miss is a round trip): a file read at random is likely
        to be read at random again, and one background pass of large ranged GETs costs far
        less than a GET per miss. The default says yes for reads labelled random (or under a
        ``class = "random"`` rule) of files of at most
        ``fill_max`` bytes (0: never) and at most half the tier, unless a rule says
        ``class = "stream"`` or ``cache = false``. Filled bytes enter the ordering like any
        other admission, so they are evicted like any other bytes.
        """
        return self._fill_whole(info)

    # -- events ----------------------------------------------------------------------------

    def on_open(self, file_id: int, *, file_size: int | None = None, pid: int = 0) -> None:
        """A file was opened. Default: nothing."""

    def on_read(self, info: AccessInfo) -> None:
        """A read request arrived, before its keys are looked up one by one.

        Carries the label and size of the whole request (keys only see their share).
        Default: nothing.
        """

    def on_close(self, file_id: int) -> None:
        """A file handle was closed. Default: nothing."""

    def on_use(self, key: Key, info: AccessInfo | None = None) -> None:
        """One use of this tier's data as the engine saw it, whether or not the tier holds it.

        In a mount :meth:`lookup` and :meth:`record_hit` only hear of keys the tier holds
        (the engine checks its extents itself), so this is the one call that carries the
        tier's whole request stream: every random or unclassified read request that DRAM
        did not serve reaches the fast tier's policy as one use. ``key`` names the data,
        not a resident key (in a mount ``(DRAM entry, chunk index)``: one path at one
        version, in units of the tier's objects), so it is never checked against
        ``key_type``. For policies that learn from the request stream (miniature
        simulations); it must not change residency. Called once per request on the event
        loop, so keep it cheap (sample). Simulations (:meth:`access`) never call it.
        Default: nothing.
        """

    def on_write(self, key: Key, size: int, info: AccessInfo | None = None) -> None:
        """Bytes of ``key`` were written (the engine inserts and pins dirty data itself).

        Default: nothing.
        """

    def statistics(self) -> dict[str, int]:
        """Counters and sizes: hits, misses, admitted, rejected, evictions, used, ..."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "admitted": self._admitted,
            "rejected": self._rejected,
            "evictions": self._evictions,
            "used": self._used,
            "capacity": self._capacity,
            "objects": len(self._sizes),
            "pinned_bytes": self._pinned_bytes,
        }

    # -- hooks for subclasses --------------------------------------------------------------

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        """Add a newly resident (or newly unpinned) key to the ordering."""
        raise NotImplementedError

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        """A resident, unpinned key was used."""
        raise NotImplementedError

    def _evict(self, incoming: int) -> Key | None:
        """Choose a victim, take it out of the ordering and return it.

        Called only while the ordering holds at least one key. May return ``None`` when it
        only rearranged its queues this round (it is called again). ``incoming`` is the
        size of the object being made room for (0 under plain pressure).
        """
        raise NotImplementedError

    def _on_remove(self, key: Key) -> None:
        """Take a key out of the ordering (removed, invalidated or pinned); not a victim."""
        raise NotImplementedError

    def _on_miss(self, key: Key, info: AccessInfo) -> None:
        """A non-resident key was used. Default: nothing."""

    def _admit(self, key: Key, size: int, info: AccessInfo, tier: Tier) -> bool:
        """Admission decision when no override applies. Default: admit everything."""
        return True

    def _on_invalidate_file(self, file_id: int) -> None:
        """A file's source changed (resident keys are already removed). Default: nothing."""

    def _readahead(self, info: AccessInfo) -> int:
        override = info.override
        if override is not None and override.stream:
            return self._max_readahead
        if effective_label(info) != Label.SEQUENTIAL:
            return 0
        want = max(info.run_length, 128 * KiB)
        return min(want, self._max_readahead)

    def _fill_whole(self, info: AccessInfo) -> bool:
        override = info.override
        if override is not None and not override.cache:
            return False
        if effective_label(info) != Label.RANDOM:
            return False  # a file's first read is 'unknown': it may yet turn into a stream
        size = info.file_size
        return bool(size) and size <= min(self._fill_max, self._capacity // 2)  # type: ignore[operator]

    # -- internals -------------------------------------------------------------------------

    def _check_key(self, key: Key) -> None:
        kt = self._key_type
        if kt is not None and type(key) is not kt:
            raise TypeError(f"{type(self).__name__} for the {self._tier} tier keeps "
                            f"{kt.__name__} keys, not {type(key).__name__}: {key!r}")

    def check(self, expected: Mapping[Key, int] | None = None) -> list[str]:
        """Problems in the bookkeeping (empty if none), optionally against the tier's own
        record of what it holds (``expected``: key -> size). For fsck and tests."""
        problems: list[str] = []
        total = sum(self._sizes.values())
        if total != self._used:
            problems.append(f"used {self._used} != sum of sizes {total}")
        pinned = sum(size for key, size in self._sizes.items() if key in self._pinned)
        if pinned != self._pinned_bytes:
            problems.append(f"pinned_bytes {self._pinned_bytes} != {pinned}")
        owned = sum(len(keys) for keys in self._by_file.values())
        with_owner = sum(1 for key in self._sizes if file_of(key) is not None)
        if owned != with_owner:
            problems.append(f"{owned} keys indexed by owner, {with_owner} resident")
        if expected is not None:
            for key, size in expected.items():
                have = self._sizes.get(key)
                if have is None:
                    problems.append(f"{key!r} held by the tier, unknown to the policy")
                elif have != size:
                    problems.append(f"{key!r}: tier holds {size} bytes, policy {have}")
            for key in self._sizes:
                if key not in expected:
                    problems.append(f"{key!r} known to the policy, not held by the tier")
        return problems

    def _make_room(self, limit: int, incoming: int) -> list[Key]:
        """Evict until ``used <= limit``; stops early if only pinned keys are left."""
        evicted: list[Key] = []
        idle_rounds = 0
        while self._used > limit:
            if len(self._sizes) == self._n_pinned_resident:
                break
            victim = self._evict(incoming)
            if victim is None:
                idle_rounds += 1
                if idle_rounds > len(self._sizes) + 2:
                    raise RuntimeError(f"{type(self).__name__}._evict made no progress")
                continue
            idle_rounds = 0
            self._drop(victim)
            self._evictions += 1
            evicted.append(victim)
        return evicted

    def _drop(self, key: Key) -> None:
        size = self._sizes.pop(key)
        self._used -= size
        fid = file_of(key)
        if fid is not None:
            keys = self._by_file.get(fid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_file[fid]

    def _remove_resident(self, key: Key) -> None:
        if key in self._pinned:
            self._pinned_bytes -= self._sizes[key]
            self._n_pinned_resident -= 1
        else:
            self._on_remove(key)
        self._drop(key)
