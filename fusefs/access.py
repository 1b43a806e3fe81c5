"""The shared vocabulary of the read path: access labels, rule overrides, request info, tier keys.

The classifier produces `Label`s, config rules produce `Override`s, the engine builds an
`AccessInfo` per request, and policies decide on them; none of those modules imports another
for these types, they all import this one.

Tier keys are typed so that a key of one tier can never be taken for a key of another:
`DramKey` names a page of the DRAM tier by its entry (one path and source version), `FastKey` names an extent of the
fast tier by its cache entry (one source file version, a catalog row), and `FastCandidate`
names bytes the fast tier was asked to admit before an entry exists (the reject-first ghost).
They are frozen dataclasses: two keys of different types never compare equal even when their
numbers do, so a mixed-up lookup misses instead of hitting the wrong data, and a policy built
with a ``key_type`` refuses a foreign key with `TypeError`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["AccessInfo", "DramKey", "FastCandidate", "FastKey", "Label", "Override",
           "UNKNOWN_ACCESS", "effective_label"]


class Label(enum.StrEnum):
    """The access class of one request; compares equal to its string value."""

    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    """What a per-path rule from the config imposes; it beats every policy decision.

    Resolved once when a file is opened and carried by its handle.

    Attributes:
        pin: Keep the data resident on the tier (admitted always, never evicted).
        access_class: ``"stream"`` (treat as sequential: not admitted on first pass, deep
            read-ahead) or ``"random"`` (treat as random), or ``None`` to let the
            classifier decide.
        cache: ``False`` to never admit the data to a tier.
    """

    pin: bool = False
    access_class: str | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if self.access_class not in (None, "stream", "random"):
            raise ValueError(
                f"access_class must be 'stream', 'random' or None, not {self.access_class!r}")

    @classmethod
    def from_rule(cls, rule: Mapping[str, Any]) -> Override:
        """Build an override from a config rule (keys ``pin``, ``class``, ``cache``)."""
        return cls(
            pin=bool(rule.get("pin", False)),
            access_class=rule.get("class"),
            cache=bool(rule.get("cache", True)),
        )

    @property
    def stream(self) -> bool:
        """The rule says the data is a stream (``class = "stream"``)."""
        return self.access_class == "stream"

    def label(self, seen: Label) -> Label:
        """The label a request gets: the rule's class if it has one, else what was seen."""
        return Label(effective_label(AccessInfo(label=seen, override=self)))


@dataclasses.dataclass(frozen=True, slots=True)
class AccessInfo:
    """What the engine knows about the request that touches a key.

    Attributes:
        label: The access class (the classifier's, or the rule's when it sets one).
        file_id: The file as readers see it (the mount's inode); a policy's per-file
            history is keyed by it. Not a tier key: a fast-tier entry has ids of its own.
        offset: Byte offset of the request in the file.
        size: Bytes requested.
        pid: The requesting process.
        stream_id: The classifier's stream id, if any.
        run_length: Bytes the stream has covered so far.
        file_size: Size of the file if known (lets a policy admit a whole file).
        op: ``"read"`` or ``"write"``.
        override: A per-path rule, if one matched.
    """

    label: str = Label.UNKNOWN
    file_id: int | None = None
    offset: int = 0
    size: int = 0
    pid: int = 0
    stream_id: int | None = None
    run_length: int = 0
    file_size: int | None = None
    op: str = "read"
    override: Override | None = None


UNKNOWN_ACCESS = AccessInfo()
"""The info used when a caller passes none."""


def effective_label(info: AccessInfo) -> str:
    """The access class a request is treated as: its rule's ``class`` if the rule sets
    one, else its label. The one place a rule's class is read as a label."""
    ov = info.override
    if ov is None or ov.access_class is None:
        return info.label
    return Label.SEQUENTIAL if ov.access_class == "stream" else Label.RANDOM


@dataclasses.dataclass(frozen=True, slots=True)
class DramKey:
    """A page (or the first page of a fetched block) of the DRAM tier, by DRAM entry
    (`fusefs.engine.consistency.DramEntries`: one per path and source version)."""

    entry: int
    page: int

    @property
    def owner(self) -> int:
        return self.entry


@dataclasses.dataclass(frozen=True, slots=True)
class FastKey:
    """An extent of the fast tier: its cache entry (one file version) and start offset."""

    entry: int
    start: int

    @property
    def owner(self) -> int:
        return self.entry


@dataclasses.dataclass(frozen=True, slots=True)
class FastCandidate:
    """Bytes of a file version offered to the fast tier, named before an entry exists.

    Used only for admission questions (a reject-first ghost remembers it); never resident.
    """

    path: bytes
    start: int
