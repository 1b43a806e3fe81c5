"""The DRAM tier: a Python face for the C page cache in ``csrc/pagecache.c``.

This module owns the lifetime of one C cache handle and the translation of
its ``-errno`` results into Python exceptions; the cache itself (arena, hash,
S3-FIFO eviction, locking, statistics) lives in C and is compiled by cffi
into ``fusefs._pagecache``. Every C call releases the GIL (cffi's API mode
wraps each call in ``Py_BEGIN_ALLOW_THREADS``), so worker threads copy pages
in parallel. Reads copy once: :meth:`PageCache.get_into` has the C code copy
straight into the caller's buffer.

Errors: bad arguments raise :class:`ValueError`; other failures raise
:class:`OSError` with the C function's errno (``ENOENT`` for a page that is
not cached, ``EBUSY`` when every page is pinned). ``close()`` must not race
with calls from other threads: the owner closes the cache after its workers
have stopped.
"""

from __future__ import annotations

import enum
import errno
import os
from types import TracebackType
from typing import Any

from fusefs._pagecache import ffi, lib

__all__ = ["Hint", "PageCache", "POLICIES"]

POLICIES: dict[str, int] = {
    "s3fifo": lib.PAGECACHE_POLICY_S3FIFO,
    "clock": lib.PAGECACHE_POLICY_CLOCK,
}

# Bound once: the hit path is a few hundred nanoseconds of Python, and every
# attribute lookup shows. from_buffer's positional form (cdecl, buffer,
# require_writable) is the cheap one; the keyword form costs twice as much.
_from_buffer = ffi.from_buffer
_c_get = lib.pagecache_get
_c_get_range = lib.pagecache_get_range
_c_put = lib.pagecache_put
_ENOENT = errno.ENOENT

_QUEUE_NAMES = {
    lib.PAGECACHE_QUEUE_SMALL: "small",
    lib.PAGECACHE_QUEUE_MAIN: "main",
    lib.PAGECACHE_QUEUE_PINNED: "pinned",
}

_STAT_FIELDS = (
    "hits",
    "misses",
    "insertions",
    "updates",
    "evictions",
    "ghost_hits",
    "not_admitted",
    "invalidations",
    "busy",
    "bytes_used",
    "pages_used",
    "pinned_pages",
    "small_pages",
    "main_pages",
    "ghost_entries",
    "capacity_pages",
    "page_size",
    "shards",
)


class Hint(enum.IntEnum):
    """Admission hint given with :meth:`PageCache.put`."""

    NORMAL = lib.PAGECACHE_HINT_NORMAL
    DONT_ADMIT = lib.PAGECACHE_HINT_DONT_ADMIT  # a detected stream: no-op, counted
    PIN = lib.PAGECACHE_HINT_PIN  # admit and pin (one pin)


def _raise(rc: int, what: str) -> None:
    """Raise the exception that a negative C return stands for."""
    code = -rc
    if code in (errno.EINVAL, errno.ENOBUFS):
        raise ValueError(f"{what}: {os.strerror(code)}")
    raise OSError(code, f"{what}: {os.strerror(code)}")


class PageCache:
    """A fixed-size, thread-safe cache of pages keyed by (file id, page number).

    Args:
        capacity_bytes: Arena size; the cache holds ``capacity_bytes //
            page_size`` pages, allocated once here.
        page_size: A power of two from 4 KiB to 1 MiB.
        policy: ``"s3fifo"`` (scan-resistant, the default) or ``"clock"``
            (one FIFO with a reference bit: S3-FIFO's main queue alone).
        small_ratio: Share of the pages given to S3-FIFO's small FIFO.
        ghost_ratio: Ghost entries (evicted keys remembered) per page.
        move_to_main_threshold: Hits a page needs in the small FIFO to be
            moved to the main FIFO instead of evicted (1 to 3).

    Raises:
        ValueError: On a bad size, ratio or policy.
        MemoryError: If the arena cannot be allocated.
    """

    def __init__(
        self,
        capacity_bytes: int,
        page_size: int,
        *,
        policy: str = "s3fifo",
        small_ratio: float = 0.1,
        ghost_ratio: float = 0.9,
        move_to_main_threshold: int = 2,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}")
        if capacity_bytes < 0 or page_size <= 0:
            raise ValueError("capacity_bytes and page_size must be positive")
        cfg = ffi.new("pagecache_config_t *")
        lib.pagecache_config_default(cfg)
        cfg.policy = POLICIES[policy]
        cfg.small_ratio = small_ratio
        cfg.ghost_ratio = ghost_ratio
        cfg.move_to_main_threshold = move_to_main_threshold
        out = ffi.new("pagecache_t **")
        rc = lib.pagecache_create(out, capacity_bytes, page_size, cfg)
        if rc == -errno.ENOMEM:
            raise MemoryError(f"cannot allocate a {capacity_bytes}-byte page cache")
        if rc < 0:
            _raise(rc, f"PageCache({capacity_bytes}, {page_size})")
        self._pc: Any = out[0]
        self._page_size = page_size
        self._capacity_pages = capacity_bytes // page_size
        self._policy = policy
        self._ghost_ratio = ghost_ratio

    # -- properties ------------------------------------------------------
    @property
    def page_size(self) -> int:
        """Bytes per page."""
        return self._page_size

    @property
    def capacity_pages(self) -> int:
        """Number of pages the arena holds."""
        return self._capacity_pages

    @property
    def policy(self) -> str:
        """Eviction policy name."""
        return self._policy

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._pc is None

    def _handle(self) -> Any:
        pc = self._pc
        if pc is None:
            raise ValueError("page cache is closed")
        return pc

    # -- reads -----------------------------------------------------------
    def get_into(self, file_id: int, page: int, buffer: Any) -> int:
        """Copy a cached page into ``buffer``; the only copy a read makes.

        Args:
            file_id: File identifier (0 to 2**64 - 1).
            page: Page number within the file.
            buffer: Writable buffer (bytearray, memoryview, mmap, ...) at
                least as long as the cached page.

        Returns:
            The number of valid bytes copied, or 0 on a miss.

        Raises:
            ValueError: If the cache is closed or ``buffer`` is too small.
            BufferError: If ``buffer`` is read-only.
        """
        pc = self._pc
        if pc is None:
            raise ValueError("page cache is closed")
        cbuf = _from_buffer("char[]", buffer, True)
        rc = _c_get(pc, file_id, page, cbuf, len(cbuf))
        if rc >= 0:
            return rc
        if rc == -_ENOENT:
            return 0
        _raise(rc, "get_into")
        return 0  # unreachable

    def get_range_into(self, file_id: int, first_page: int, buffer: Any) -> int:
        """Copy consecutive cached pages into ``buffer`` in one C call.

        Page ``first_page + i`` lands at offset ``i * page_size``. Copying
        stops at the first page not cached, after a short page (a file's
        last), or when the next page would not fit; so the result covers a
        prefix of the requested range and the caller fetches the rest.

        Args:
            file_id: File identifier.
            first_page: First page number to read.
            buffer: Writable buffer; its length bounds the pages read.

        Returns:
            Bytes copied: 0 if ``first_page`` is not cached.
        """
        pc = self._pc
        if pc is None:
            raise ValueError("page cache is closed")
        cbuf = _from_buffer("char[]", buffer, True)
        rc = _c_get_range(pc, file_id, first_page, cbuf, len(cbuf))
        if rc < 0:
            _raise(rc, "get_range_into")
        return rc

    def get(self, file_id: int, page: int) -> bytes | None:
        """Return a cached page as ``bytes``, or None on a miss.

        A convenience for tools and tests: a ``bytes`` object cannot be
        filled in place, so this copies twice (arena to scratch, scratch to
        ``bytes``). The read path uses :meth:`get_into`.
        """
        buf = bytearray(self._page_size)
        n = self.get_into(file_id, page, buf)
        if n == 0:
            return None
        return bytes(memoryview(buf)[:n])

    def peek(self, file_id: int, page: int) -> bytes | None:
        """Like :meth:`get` but leaves frequencies and counters untouched."""
        pc = self._handle()
        buf = bytearray(self._page_size)
        rc = lib.pagecache_peek(pc, file_id, page, ffi.from_buffer(buf), len(buf))
        if rc == -errno.ENOENT:
            return None
        if rc < 0:
            _raise(rc, "peek")
        return bytes(memoryview(buf)[:rc])

    def __contains__(self, key: tuple[int, int]) -> bool:
        """Whether the page is cached: one shard lock, no counters (a read path probe)."""
        rc = lib.pagecache_contains(self._handle(), key[0], key[1])
        if rc < 0:
            _raise(rc, "contains")
        return rc == 1

    # -- writes ----------------------------------------------------------
    def put(self, file_id: int, page: int, data: Any, *, hint: Hint = Hint.NORMAL) -> None:
        """Store a page (1 to ``page_size`` bytes; a short last page keeps its length).

        An already cached page is overwritten in place. ``Hint.DONT_ADMIT``
        makes the call a counted no-op; ``Hint.PIN`` stores and takes a pin.

        Raises:
            ValueError: On an empty or oversized page, or a closed cache.
            OSError: ``EBUSY`` if nothing can be evicted (all pinned).
        """
        pc = self._pc
        if pc is None:
            raise ValueError("page cache is closed")
        cdata = _from_buffer("char[]", data, False)
        rc = _c_put(pc, file_id, page, cdata, len(cdata), hint)
        if rc < 0:
            _raise(rc, "put")

    def pin(self, file_id: int, page: int) -> None:
        """Keep a cached page from eviction; pins nest.

        Raises:
            OSError: ``ENOENT`` if the page is not cached.
        """
        rc = lib.pagecache_pin(self._handle(), file_id, page)
        if rc < 0:
            _raise(rc, "pin")

    def unpin(self, file_id: int, page: int) -> None:
        """Drop one pin; the last one returns the page to the main FIFO.

        Raises:
            OSError: ``ENOENT`` if the page is not cached.
            ValueError: If the page is not pinned.
        """
        rc = lib.pagecache_unpin(self._handle(), file_id, page)
        if rc < 0:
            _raise(rc, "unpin")

    def invalidate(self, file_id: int, page: int | None = None, *, end: int | None = None) -> int:
        """Drop cached pages, pinned or not.

        ``invalidate(f)`` drops the whole file, ``invalidate(f, p)`` one
        page, ``invalidate(f, p, end=e)`` pages ``p <= page < e``. A per-file
        index finds the pages: a file with none cached costs O(1), one with
        some O(its pages), never a scan of the whole cache.

        Returns:
            The number of pages dropped.
        """
        pc = self._handle()
        if page is None:
            if end is not None:
                raise ValueError("end given without a first page")
            rc = lib.pagecache_invalidate_file(pc, file_id)
        elif end is None:
            rc = lib.pagecache_invalidate_page(pc, file_id, page)
        else:
            rc = lib.pagecache_invalidate_range(pc, file_id, page, end)
        if rc < 0:
            _raise(rc, "invalidate")
        return rc

    # -- introspection ---------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters and gauges: hits, misses, insertions, evictions, ghost
        hits, bytes used, pinned pages, not-admitted puts and more."""
        out = ffi.new("pagecache_stats_t *")
        rc = lib.pagecache_stats(self._handle(), out)
        if rc < 0:
            _raise(rc, "stats")
        return {name: int(getattr(out, name)) for name in _STAT_FIELDS}

    def entry(self, file_id: int, page: int) -> tuple[str, int, int] | None:
        """Where a page sits: (queue name, frequency, pins), or None. For tests."""
        q = ffi.new("int *")
        f = ffi.new("int *")
        p = ffi.new("int *")
        rc = lib.pagecache_debug_entry(self._handle(), file_id, page, q, f, p)
        if rc == -errno.ENOENT:
            return None
        if rc < 0:
            _raise(rc, "entry")
        return _QUEUE_NAMES[q[0]], f[0], p[0]

    def in_ghost(self, file_id: int, page: int) -> bool:
        """Whether a key is remembered in the ghost FIFO. For tests."""
        return lib.pagecache_debug_in_ghost(self._handle(), file_id, page) == 1

    def check(self) -> int:
        """Verify the C structures against one another. For tests.

        Checks the free list, queues, pins, byte count, hash, ghost and the
        per-file index (every cached page on exactly its file's list), under
        the cache's own locks, so other threads may keep calling. O(capacity).

        Returns:
            0 when every invariant holds.

        Raises:
            OSError: ``EIO`` if one does not.
        """
        rc = lib.pagecache_debug_check(self._handle())
        if rc < 0:
            _raise(rc, "check")
        return rc

    def meta_bytes(self) -> int:
        """Metadata bytes this cache allocated, the page arena excluded."""
        return int(lib.pagecache_meta_bytes(self._handle()))

    @staticmethod
    def meta_bytes_per_page(ghost_ratio: float = 0.9) -> float:
        """Metadata bytes per page from the C struct sizes (large-cache limit)."""
        return float(lib.pagecache_meta_bytes_per_page(ghost_ratio))

    @staticmethod
    def struct_sizes() -> dict[str, int]:
        """Sizes of the C structs behind the metadata figure."""
        a = ffi.new("size_t *")
        b = ffi.new("size_t *")
        c = ffi.new("size_t *")
        lib.pagecache_struct_sizes(a, b, c)
        return {"page_desc": a[0], "ghost_node": b[0], "hash_slot": c[0]}

    # -- lifetime --------------------------------------------------------
    def close(self) -> None:
        """Free the cache. Idempotent; later calls raise ValueError."""
        pc, self._pc = self._pc, None
        if pc is not None:
            lib.pagecache_destroy(pc)

    def __enter__(self) -> PageCache:
        self._handle()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net only: the owner is expected to call close(). At
        # interpreter exit the module may already be torn down.
        pc = getattr(self, "_pc", None)
        if pc is not None and lib is not None:
            self._pc = None
            lib.pagecache_destroy(pc)

    def __repr__(self) -> str:
        state = "closed" if self._pc is None else f"{self._capacity_pages} pages"
        return f"<PageCache {self._policy} {state} of {self._page_size} bytes>"
