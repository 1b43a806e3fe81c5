"""`tierfs fsck`: check (and repair) a fast-tier cache directory and its catalog.

Offline (`check_cache_dir`), on a cache directory no mount holds (its lock is taken for the
whole run), a sequence of small ``check_*`` passes, each reporting what it found and, with
``repair``, what it fixed:

* layout: the catalog and ``data/`` exist; what tierfs created inside is not group/world
  accessible, and the directory itself is not writable by others (tierfs never changes
  the mode of a directory it may not have created: it is reported, not repaired);
* catalog: it opens and is of a schema this tierfs reads;
* entries: every entry with extents has its data file; extents of an entry do not overlap;
* bytes: every extent's bytes are in its data file and match their checksums;
* orphans: data files no catalog row names (only numeric names: tierfs's own; anything
  else in ``data/`` is reported, never deleted);
* pending writes (write-back journal): each row's spool file ``writeback/<id>`` exists
  and holds at least the bytes the row says. Pending writes are notes (the next mount
  uploads them); a missing or short spool is an error. Spool files without a row
  (written, never flushed) are notes. A spool file is never deleted: ``--repair`` only
  drops the row of a spool that is missing (nothing is left to upload).

Repairs only ever delete catalog rows and tierfs's own data files: a cache loses cached
bytes, never data of the dataset, and the next read refetches them. Spools of pending
writes hold data of the dataset and are never deleted.

Live (`check_live`), read-only, on a mounted fast tier through the control socket: the
in-memory invariants (`FastTier.check`: extents, policy bookkeeping against the tier's) and
the catalog against memory (`FastTier.check_catalog`).

Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected,
8 operational error (cannot run: the cache is in use, not a cache, unreadable).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from . import checksums
from .catalog import Catalog, CatalogError, ExtentRow, FileRow, Journal
from .tiers.fast import CacheBusy, FastTier, lock_cache_dir

EXIT_CLEAN = 0
EXIT_CORRECTED = 1
EXIT_UNCORRECTED = 4
EXIT_OPERATIONAL = 8


@dataclass
class Report:
    """What fsck found (``errors``) and fixed (``fixed``); ``notes`` are not errors."""

    errors: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if len(self.errors) > len(self.fixed):
            return EXIT_UNCORRECTED
        return EXIT_CORRECTED if self.errors else EXIT_CLEAN

    def to_dict(self) -> dict[str, list[str]]:
        return {"errors": self.errors, "fixed": self.fixed, "notes": self.notes}


class FsckError(Exception):
    """fsck cannot run at all (exit code 8)."""


def check_cache_dir(root: str, *, repair: bool = False) -> Report:
    """Check the cache directory ``root`` offline; repair what can be if ``repair``."""
    report = Report()
    if not os.path.isfile(os.path.join(root, "catalog.db")):
        raise FsckError(f"{root}: not a tierfs cache directory (no catalog.db)")
    try:
        lock = lock_cache_dir(root)
    except CacheBusy as exc:
        raise FsckError(f"{exc.strerror}; unmount it first, or check the mount "
                        f"itself (tierfs fsck MOUNTPOINT)") from None
    except OSError as exc:
        raise FsckError(f"{root}: {exc.strerror}") from None
    try:
        _check_layout(root, report, repair)
        try:
            catalog = Catalog(os.path.join(root, "catalog.db"))
        except CatalogError as exc:
            report.errors.append(f"catalog unusable: {exc} (remove the cache directory "
                                 f"to start afresh)")
            return report
        try:
            files = {f.id: f for f in catalog.files()}
            extents = catalog.extents()
            drop_files: list[int] = []
            drop_extents: list[tuple[int, int]] = []
            _check_entries(root, files, extents, report, drop_files, drop_extents)
            _check_bytes(root, files, extents, report, drop_files, drop_extents)
            _check_orphans(root, files, report, repair, set(drop_files))
            _check_writeback(root, report, repair)
            if repair and (drop_files or drop_extents):
                catalog.apply(drop_files=drop_files, remove=drop_extents)
                for i in drop_files:
                    _unlink_data(root, i)
                report.fixed += [f"dropped entry {i} (its bytes are refetched on use)"
                                 for i in drop_files]
                report.fixed += [f"dropped extent {i}+{s}" for i, s in drop_extents]
        finally:
            catalog.close()
    finally:
        os.close(lock)
    return report


def _check_layout(root: str, report: Report, repair: bool) -> None:
    data = os.path.join(root, "data")
    if not os.path.isdir(data):
        report.errors.append("data/ is missing")
        if repair:
            os.mkdir(data, 0o700)
            report.fixed.append("created data/")
    if not os.path.isfile(os.path.join(root, "TIERFS-CACHE")):
        report.notes.append("no TIERFS-CACHE marker (a cache of an older tierfs): the next "
                            "mount adds it")
    try:
        st = os.lstat(root)
        if st.st_mode & 0o022:
            report.errors.append(f"{root} can be written by other users (mode "
                                 f"{stat.S_IMODE(st.st_mode):o}); a mount refuses it")
    except OSError as exc:
        report.errors.append(f"{root}: {exc.strerror}")
    for path in [data, *(os.path.join(root, n) for n in os.listdir(root)
                         if n.startswith("catalog.db")
                         or n in ("lock", "TIERFS-CACHE", "writeback"))]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            report.errors.append(f"{path} is a symbolic link")
            continue
        if st.st_mode & 0o077:
            report.errors.append(f"{path} is accessible by others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o})")
            if repair:
                os.chmod(path, 0o700 if stat.S_ISDIR(st.st_mode) else 0o600)
                report.fixed.append(f"{path}: mode set to "
                                    f"{'0700' if stat.S_ISDIR(st.st_mode) else '0600'}")


def _data_path(root: str, entry: int) -> str:
    return os.path.join(root, "data", str(entry))


def _unlink_data(root: str, entry: int) -> None:
    try:
        os.unlink(_data_path(root, entry))
    except FileNotFoundError:
        pass


def _check_entries(root: str, files: dict[int, FileRow], extents: list[ExtentRow],
                   report: Report, drop_files: list[int],
                   drop_extents: list[tuple[int, int]]) -> None:
    with_extents = {e.file_id for e in extents}
    for fid in sorted(with_extents):
        if not os.path.isfile(_data_path(root, fid)):
            report.errors.append(f"entry {fid} ({files[fid].path!r}): data file missing")
            drop_files.append(fid)
    end: dict[int, int] = {}
    for e in extents:  # ordered by (file_id, start)
        if e.file_id in drop_files:
            continue
        if e.length <= 0 or e.start < 0:
            report.errors.append(f"extent {e.file_id}+{e.start}: bad length {e.length}")
            drop_extents.append((e.file_id, e.start))
        elif e.start < end.get(e.file_id, -1):
            report.errors.append(f"extent {e.file_id}+{e.start} overlaps the one before")
            drop_extents.append((e.file_id, e.start))
        else:
            end[e.file_id] = e.start + e.length


def _check_bytes(root: str, files: dict[int, FileRow], extents: list[ExtentRow],
                 report: Report, drop_files: list[int],
                 drop_extents: list[tuple[int, int]]) -> None:
    skip = set(drop_files)
    bad = set(drop_extents)
    fds: dict[int, int] = {}
    try:
        for e in extents:
            if e.file_id in skip or (e.file_id, e.start) in bad:
                continue
            fd = fds.get(e.file_id)
            if fd is None:
                fd = fds[e.file_id] = os.open(_data_path(root, e.file_id),
                                              os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            data = os.pread(fd, e.length, e.start)
            if len(data) != e.length:
                report.errors.append(f"extent {e.file_id}+{e.start} of "
                                     f"{files[e.file_id].path!r}: {len(data)} of {e.length} "
                                     f"bytes present")
                drop_extents.append((e.file_id, e.start))
            elif (piece := checksums.first_bad(data, e.crcs)) is not None:
                report.errors.append(f"extent {e.file_id}+{e.start} of "
                                     f"{files[e.file_id].path!r}: checksum mismatch at "
                                     f"{e.start + piece * checksums.BLOCK}")
                drop_extents.append((e.file_id, e.start))
    finally:
        for fd in fds.values():
            os.close(fd)


def _check_orphans(root: str, files: dict[int, FileRow], report: Report, repair: bool,
                   dropping: set[int]) -> None:
    for name in sorted(os.listdir(os.path.join(root, "data"))):
        if not name.isdigit():
            report.notes.append(f"data/{name}: not a tierfs file; left alone")
            continue
        if int(name) in files:
            continue
        report.errors.append(f"data/{name}: no catalog entry (left by a crash)")
        if repair:
            _unlink_data(root, int(name))
            report.fixed.append(f"removed data/{name}")


def _check_writeback(root: str, report: Report, repair: bool) -> None:
    spools = os.path.join(root, "writeback")
    journal = Journal(os.path.join(root, "catalog.db"))
    try:
        rows = journal.rows()
        names = set(os.listdir(spools)) if os.path.isdir(spools) else set()
        missing: list[int] = []
        for r in rows:
            where = f"writeback/{r.id}"
            try:
                st = os.lstat(os.path.join(spools, str(r.id)))
                size = st.st_size if stat.S_ISREG(st.st_mode) else None
            except FileNotFoundError:
                size = None
            if size is None:
                report.errors.append(f"pending write of {r.path!r} ({r.size} bytes): its "
                                     f"spool {where} is missing; the write is lost")
                missing.append(r.id)
            elif size < r.size:
                report.errors.append(f"pending write of {r.path!r}: its spool {where} holds "
                                     f"{size} of {r.size} bytes; it is not uploaded (the "
                                     f"file and its row are kept for you to salvage)")
            else:
                report.notes.append(f"pending write of {r.path!r} ({size} bytes, {where}): "
                                    f"uploaded at the next mount")
        rowids = {str(r.id) for r in rows}
        for name in sorted(names - rowids):
            report.notes.append(f"writeback/{name}: no journal row (written but never "
                                f"flushed: nothing was acknowledged); left alone")
        if repair and missing:
            journal.apply(delete=missing)
            report.fixed += [f"dropped the journal row of the missing spool writeback/{i}"
                             for i in missing]
    finally:
        journal.close()


async def check_live(fast: FastTier) -> Report:
    """Read-only check of a mounted fast tier (memory and catalog agree, policy totals)."""
    report = Report()
    report.errors += fast.check()
    report.errors += await fast.check_catalog()
    return report


def render(report: Report, where: str) -> str:
    lines = [f"{where}: " + ("clean" if not report.errors else
                             f"{len(report.errors)} problems, {len(report.fixed)} fixed")]
    lines += [f"  error: {e}" for e in report.errors]
    lines += [f"  fixed: {f}" for f in report.fixed]
    lines += [f"  note:  {n}" for n in report.notes]
    return "\n".join(lines)


__all__ = ["EXIT_CLEAN", "EXIT_CORRECTED", "EXIT_OPERATIONAL", "EXIT_UNCORRECTED",
           "FsckError", "Report", "check_cache_dir", "check_live", "render"]
