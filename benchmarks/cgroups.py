"""A memory-limited cgroup (v1 or v2) that benchmark processes join at exec time.

`MemoryCgroup.create` makes a child cgroup with a memory limit: under the memory
controller of cgroup v1 (``memory.limit_in_bytes``) or of cgroup v2
(``memory.max``), whichever is mounted and writable; the page cache that member
processes fault in is charged to it. Processes join through `preexec` (passed
as ``preexec_fn`` to `subprocess.Popen`, it writes the child's pid into
``cgroup.procs`` before exec), so daemons that fork stay inside. `remove`
empties and deletes the group. When no memory cgroup can be made, `create`
raises `CgroupUnavailable` with the reason, which the harness prints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class CgroupUnavailable(Exception):
    """No writable memory cgroup on this machine; the message says why."""


def _own_path(controller_v1: str | None) -> str:
    """This process's cgroup path in the v1 ``controller`` hierarchy, or v2 when None."""
    with open("/proc/self/cgroup") as f:
        for line in f.read().splitlines():
            hid, ctrls, path = line.split(":", 2)
            if controller_v1 is None and hid == "0" and ctrls == "":
                return path
            if controller_v1 is not None and controller_v1 in ctrls.split(","):
                return path
    return "/"


def _mounts() -> list[tuple[str, str, str]]:
    with open("/proc/self/mounts") as f:
        return [tuple(line.split()[1:4]) for line in f]  # type: ignore[misc]


class MemoryCgroup:
    """One child cgroup with a memory limit."""

    def __init__(self, path: Path, version: int, limit: int) -> None:
        self.path = path
        self.version = version
        self.limit = limit

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup:
        errors = []
        for mnt, fstype, opts in _mounts():
            if fstype == "cgroup" and "memory" in opts.split(","):
                parents = [Path(mnt) / _own_path("memory").lstrip("/"), Path(mnt)]
                for parent in parents:
                    try:
                        return cls._make(parent / name, 1, limit)
                    except OSError as exc:
                        errors.append(f"v1 {parent}: {exc.strerror}")
        for mnt, fstype, _ in _mounts():
            if fstype == "cgroup2":
                parent = Path(mnt) / _own_path(None).lstrip("/")
                try:
                    ctrls = (Path(mnt) / "cgroup.controllers").read_text().split()
                except OSError as exc:
                    errors.append(f"v2 {mnt}: {exc.strerror}")
                    continue
                if "memory" not in ctrls:
                    errors.append(f"v2 {mnt}: memory controller not available (bound to v1?)")
                    continue
                try:
                    return cls._make(parent / name, 2, limit)
                except OSError as exc:
                    errors.append(f"v2 {parent}: {exc.strerror}")
        raise CgroupUnavailable("; ".join(errors) or "no memory cgroup hierarchy is mounted")

    @classmethod
    def _make(cls, path: Path, version: int, limit: int) -> MemoryCgroup:
        if path.exists():
            cls(path, version, limit).remove()
        path.mkdir()
        try:
            knob = "memory.limit_in_bytes" if version == 1 else "memory.max"
            (path / knob).write_text(str(limit))
            if version == 1 and (path / "memory.swappiness").exists():
                try:
                    (path / "memory.swappiness").write_text("0")
                except OSError:
                    pass
        except OSError:
            path.rmdir()
            raise
        return cls(path, version, limit)

    def preexec(self) -> None:
        """Join this cgroup; meant as ``preexec_fn`` (runs in the child before exec)."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def usage(self) -> int | None:
        knob = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int((self.path / knob).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int | None:
        """OOM kills so far (v2 ``memory.events``; v1 ``memory.oom_control``)."""
        knob = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / knob).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return None

    def remove(self) -> None:
        """Move stragglers to the parent, release the charges, delete the group."""
        parent = self.path.parent / "cgroup.procs"
        try:
            pids = (self.path / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            try:
                parent.write_text(pid)
            except OSError:
                pass
        if self.version == 1:
            try:
                (self.path / "memory.force_empty").write_text("0")
            except OSError:
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
