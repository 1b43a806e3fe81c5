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

#: Files a warm copies concurrently (each one's reads still pass the engine's
#: throughput limiter, so readers keep their priority).
WARM_PARALLEL = 16
#: Files up to this size are read under the warm's own limiter, not the engine's
#: (narrower) throughput limiter: one read each, latency-bound, not bandwidth-bound.
SMALL_FILE = 1 << 20


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
        # Files one warm copies at once: small files cost round trips, not bandwidth.
        self.parallel = WARM_PARALLEL
        # Progress of running warms, by the job id their caller chose.
        self.jobs: dict[str, dict[str, int]] = {}

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

    def _refusing_rule(self, path: bytes) -> str | None:
        """The glob of the rule that keeps ``path`` out of the caches (``cache = false``)."""
        rule = self.cfg.rule_for(path.decode("utf-8", "surrogateescape"))
        return rule.path if rule is not None and not rule.cache else None

    def _pin_reason(self, path: bytes) -> str | None:
        """Why ``path`` is pinned: a `tierfs pin` of it or of a directory above it, a
        ``pin = true`` rule, or pinned extents it holds (None: not pinned)."""
        for p in self.fast.pinned_paths:
            if p == path or not p or path.startswith(p + b"/"):
                return f"tierfs pin {p.decode('utf-8', 'surrogateescape') or '.'}"
        rule = self.cfg.rule_for(path.decode("utf-8", "surrogateescape"))
        if rule is not None and rule.pin:
            return f"rule {rule.path!r}"
        if self.fast.has_pinned(path):
            return "pinned data"
        return None

    async def warm(self, path: bytes, *, pinned: bool = False, job: str | None = None,
                   parallel: int | None = None) -> dict[str, Any]:
        """Copy every file at or below ``path`` into the fast tier, ``parallel`` at a time.

        Files a rule keeps out of the caches (``cache = false``) are refused, not
        copied. Files removed from the source while this runs are counted as
        vanished (unless ``path`` itself is that file: then the error is raised).
        Progress is readable under ``job`` (`progress`) while it runs.

        Returns ``files`` (warmed), ``total`` (their bytes), ``kept`` (of those, what
        the tier holds afterwards: a tier too small keeps less than it was given),
        ``bytes`` (copied now; the rest was cached already), ``vanished``, and
        ``refused``/``refused_bytes``/``refused_rules`` for files under ``cache = false``,
        and ``parallel_peak``, the most files that were being copied at once.
        """
        found = await self.files_under(path)
        allowed: list[tuple[bytes, Any]] = []
        refused_rules: list[str] = []
        refused = refused_bytes = 0
        for fpath, st in found:
            rule = self._refusing_rule(fpath)
            if rule is None:
                allowed.append((fpath, st))
                continue
            refused += 1
            refused_bytes += st.st_size
            if rule not in refused_rules:
                refused_rules.append(rule)
        single = len(found) == 1 and found[0][0] == path
        prog = {"files_total": len(allowed), "bytes_total": sum(st.st_size for _, st in allowed),
                "files_done": 0, "bytes_done": 0}
        if job:
            self.jobs[job] = prog
        copied = 0
        gone: set[bytes] = set()
        limit = trio.CapacityLimiter(max(1, parallel or self.parallel))  # files
        reads = trio.CapacityLimiter(limit.total_tokens)  # their reads (not the same tokens)

        in_flight = peak = 0

        async def one(fpath: bytes, st: Any) -> None:
            nonlocal copied, in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                # Small files cost round trips: their reads may fill every slot of
                # this warm (a big file's still go a few at a time, in chunk batches).
                n = await self._warm_file(fpath, st, pinned=pinned,
                                          limiter=reads if st.st_size <= SMALL_FILE else None)
                copied += n
            except OSError as exc:
                # ESTALE: deleted between the open and the read (an object store).
                if single or exc.errno not in (errno.ENOENT, errno.ESTALE):
                    raise
                gone.add(fpath)
            finally:
                in_flight -= 1
                limit.release_on_behalf_of(fpath)
            prog["files_done"] += 1
            prog["bytes_done"] += st.st_size

        try:
            async with trio.open_nursery() as nursery:
                for fpath, st in allowed:
                    await limit.acquire_on_behalf_of(fpath)
                    nursery.start_soon(one, fpath, st)
        finally:
            if job:
                self.jobs.pop(job, None)
        warmed = [(p, st) for p, st in allowed if p not in gone]
        kept = sum(self.fast.cached_bytes_of(p) for p, _ in warmed)
        return {"files": len(warmed), "bytes": copied, "kept": kept,
                "total": sum(st.st_size for _, st in warmed), "vanished": len(gone),
                "refused": refused, "refused_bytes": refused_bytes,
                "refused_rules": refused_rules, "parallel_peak": peak}

    def progress(self, job: str) -> dict[str, int]:
        """How far the warm started under ``job`` is (empty once it finished)."""
        return dict(self.jobs.get(job, {}))

    def cached(self, path: bytes) -> dict[str, int]:
        """Bytes the fast tier holds of files at or below ``path``."""
        return {"bytes": self.fast.cached_bytes_under(path)}

    async def _warm_file(self, path: bytes, st: Any, *, pinned: bool,
                         limiter: trio.CapacityLimiter | None = None) -> int:
        # The version the copy finds when it reads the file, not the listing's: a
        # listing may not state it (and the file may have changed since). The listing's
        # size only picks the way: one fetch for a small file.
        copied = await self.engine.copy_to_fast(path, pinned=pinned, limiter=limiter,
                                                listed=st)
        self.engine.stats.add("warm.bytes", copied)
        return copied

    async def evict(self, path: bytes, *, unpin: bool = False) -> dict[str, Any]:
        """Drop the fast tier's, DRAM's and the kernel's copies of everything under ``path``.

        Pinned files stay (that is what a pin is for) and are counted in
        ``pinned``/``pinned_bytes``; with ``unpin``, the pins at or below ``path``
        are removed first, so only files pinned from above ``path`` or by a rule
        stay (``pinned_by`` names why).
        """
        unpinned = (await self.unpin(path))["files"] if unpin else 0
        self.engine.dram.unname(path, tree=True,
                                keep=lambda p: self._pin_reason(p) is not None)
        dropped = files = kept = kept_bytes = 0
        reasons: list[str] = []
        for fpath in self.fast.paths_under(path):
            why = self._pin_reason(fpath)
            if why is not None:
                kept += 1
                kept_bytes += self.fast.cached_bytes_of(fpath)
                if why not in reasons:
                    reasons.append(why)
                continue
            dropped += self.fast.drop_path(fpath)
            files += 1
        # Last, so that no read between the drops refills the kernel from a tier that
        # still held the bytes.
        kernel = await self.engine.drop_kernel_pages(path)
        return {"files": files, "bytes": dropped, "pinned": kept, "pinned_bytes": kept_bytes,
                "pinned_by": reasons[:5], "unpinned": unpinned, "kernel_files": kernel}

    async def pin(self, path: bytes) -> dict[str, Any]:
        await trio.to_thread.run_sync(self.fast.catalog.set_pin, path, True)  # type: ignore[union-attr]
        self.fast.pinned_paths.add(path)
        return await self.warm(path, pinned=True)

    async def unpin(self, path: bytes) -> dict[str, int]:
        """Remove the pins at or below ``path``; their data stays cached, evictable."""
        prefix = path + b"/"
        for p in sorted(self.fast.pinned_paths):
            if p == path or not path or p.startswith(prefix):
                await trio.to_thread.run_sync(self.fast.catalog.set_pin, p, False)  # type: ignore[union-attr]
                self.fast.pinned_paths.discard(p)
        files = nbytes = 0
        for fpath in self.fast.paths_under(path):
            if self.fast.unpin_path(fpath):
                files += 1
                nbytes += self.fast.cached_bytes_of(fpath)
        return {"files": files, "bytes": nbytes}

    async def warm_pins(self) -> None:
        """Mount-time warming of every pinned path (rules and `tierfs pin`), as many
        files at once as a warm copies."""
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
        limit = trio.CapacityLimiter(self.parallel)

        async def one(path: bytes, st: Any) -> None:
            nonlocal total
            try:
                n = await self._warm_file(path, st, pinned=True)
                total += n
            except OSError as exc:
                log.warning("warming pinned %r failed: %s", path, exc)
            finally:
                limit.release_on_behalf_of(path)

        async with trio.open_nursery() as nursery:
            for path, st in targets:
                # Kept out of the caches by a rule: a pin of a directory above it
                # does not bring it in (as `tierfs pin` does not).
                if path in done or self._refusing_rule(path) is not None:
                    continue
                done.add(path)
                await limit.acquire_on_behalf_of(path)
                nursery.start_soon(one, path, st)
        self.engine.stats.add("warm.pinned_files", len(done))
        if done:
            log.info("warmed %d pinned files (%d bytes copied)", len(done), total)
