"""Moving whole files between tiers on request: warm, evict, pin, unpin.

`tierfs warm|evict|pin|unpin` and the mount-time warming of pinned paths (from
``[[rule]] pin = true`` and from earlier `tierfs pin` calls, kept in the
catalog) end up here. Warming copies a file's bytes from the capacity tier into
the fast tier chunk by chunk, skipping chunks already present, so an
interrupted warm resumes where it stopped. All of it is throughput-class work:
it runs under the engine's throughput limiter and never ahead of a reader.

Paths are relative to the mount root, validated here (no ``..``, no empty or
absolute components) so a control request cannot reach outside the source.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Any

import trio

from .config import Config, _glob_re
from .engine import Engine
from .tiers.capacity import CapacityTier, join

log = logging.getLogger(__name__)


def clean_path(path: str) -> bytes:
    """Validate a mount-relative path from a control request."""
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OSError(errno.EINVAL, f"path escapes the mount: {path!r}")
    return os.fsencode("/".join(parts))


def _static_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ("index/**" -> "index")."""
    m = re.search(r"[*?\[]", pattern)
    head = pattern if m is None else pattern[:m.start()]
    return head.rsplit("/", 1)[0] if "/" in head else ("" if m is not None else head)


class Migrator:
    """Whole-file moves into and out of the fast tier."""

    def __init__(self, engine: Engine, capacity: CapacityTier, cfg: Config) -> None:
        if engine.fast is None:
            raise ValueError("the migrator needs a fast tier")
        self.engine = engine
        self.fast = engine.fast
        self.capacity = capacity
        self.cfg = cfg

    async def files_under(self, path: bytes) -> list[tuple[bytes, Any]]:
        """Regular files at or below ``path`` with their attributes."""
        st = await self.capacity.stat(path)
        if st.is_reg:
            return [(path, st)]
        if not st.is_dir:
            return []
        out: list[tuple[bytes, Any]] = []
        stack = [path]
        while stack:
            d = stack.pop()
            for name, cst in await self.capacity.listdir(d):
                child = join(d, name)
                if cst.is_dir:
                    stack.append(child)
                elif cst.is_reg:
                    out.append((child, cst))
        return out

    async def warm(self, path: bytes, *, pinned: bool = False) -> dict[str, int]:
        """Copy every file at or below ``path`` into the fast tier.

        Returns the files, the bytes copied now (``bytes``) and the bytes of them the
        tier holds afterwards (``kept``): a tier too small for them all keeps less than
        it was given.
        """
        copied = files = 0
        found = await self.files_under(path)
        for fpath, st in found:
            copied += await self._warm_file(fpath, st, pinned=pinned)
            files += 1
        kept = sum(self.fast.cached_bytes_under(p) for p, _ in found)
        return {"files": files, "bytes": copied, "kept": kept}

    def cached(self, path: bytes) -> dict[str, int]:
        """Bytes the fast tier holds of files at or below ``path``."""
        return {"bytes": self.fast.cached_bytes_under(path)}

    async def _warm_file(self, path: bytes, st: Any, *, pinned: bool) -> int:
        # The version the copy finds when it opens the file, not the listing's: a
        # listing may not state it (and the file may have changed since).
        copied = await self.engine.copy_to_fast(path, pinned=pinned)
        self.engine.stats.add("warm.bytes", copied)
        return copied

    async def evict(self, path: bytes) -> dict[str, int]:
        """Drop the fast tier's and DRAM's copies of everything under ``path``."""
        self.engine.dram.unname(path, tree=True)
        dropped = 0
        for fpath in self.fast.paths_under(path):
            dropped += self.fast.drop_path(fpath)
        return {"bytes": dropped}

    async def pin(self, path: bytes) -> dict[str, int]:
        await trio.to_thread.run_sync(self.fast.catalog.set_pin, path, True)  # type: ignore[union-attr]
        self.fast.pinned_paths.add(path)
        return await self.warm(path, pinned=True)

    async def unpin(self, path: bytes) -> dict[str, int]:
        await trio.to_thread.run_sync(self.fast.catalog.set_pin, path, False)  # type: ignore[union-attr]
        self.fast.pinned_paths.discard(path)
        n = 0
        for fpath in self.fast.paths_under(path):
            n += self.fast.unpin_path(fpath)
        return {"extents": n}

    async def warm_pins(self) -> None:
        """Mount-time warming of every pinned path (rules and `tierfs pin`)."""
        targets: list[tuple[bytes, Any]] = []
        for path in sorted(self.fast.pinned_paths):
            try:
                targets += await self.files_under(path)
            except OSError as exc:
                log.warning("pinned path %r: %s", path, exc)
        for rule in self.cfg.rules:
            if not rule.pin:
                continue
            top = os.fsencode(_static_prefix(rule.path))
            rx = _glob_re(rule.path)
            try:
                found = await self.files_under(top)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("pin rule %r: %s", rule.path, exc)
                continue
            targets += [(p, st) for p, st in found
                        if rx.match(p.decode("utf-8", "surrogateescape"))]
        done: set[bytes] = set()
        total = 0
        for path, st in targets:
            if path in done:
                continue
            done.add(path)
            try:
                total += await self._warm_file(path, st, pinned=True)
            except OSError as exc:
                log.warning("warming pinned %r failed: %s", path, exc)
        self.engine.stats.add("warm.pinned_files", len(done))
        if done:
            log.info("warmed %d pinned files (%d bytes copied)", len(done), total)
