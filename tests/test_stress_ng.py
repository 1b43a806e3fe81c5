"""A third-party exerciser against the mount: stress-ng's filesystem stressors.

pjdfstest, fsx and xfstests are not packaged for Debian 12 (and nothing but
PyPI, Debian and npm is reachable from CI), so the outside check of the mount
is stress-ng (Debian's ``stress-ng``), run as a user would, with ``--verify``
so the stressors that write data read it back and compare. Each stressor runs
a fixed number of bogo operations, not a fixed time, so the amount of work is
the same on a slow machine. A stressor that reports a failure, a non-zero exit,
or an error in the daemon's log fails its test.

Left out, with reasons: ``fallocate``/``fpunch`` (tierfs answers fallocate with
EOPNOTSUPP, see test_posix_files), ``symlink``/``iomix``/``sync-file`` (each
bogo operation is thousands of FUSE round trips: minutes per run).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from posix_util import shared_mount  # noqa: F401  (fixture)

from mounting import Mounted

# stressor -> (bogo ops, extra options)
STRESSORS: dict[str, tuple[int, list[str]]] = {
    "hdd": (2000, ["--hdd-bytes", "4M", "--hdd-opts", "wr-rnd,rd-rnd"]),
    "dir": (200, []),
    "dirdeep": (200, []),
    "dirmany": (200, []),
    "dentry": (200, []),
    "rename": (200, []),
    "link": (2, []),
    "chmod": (200, []),
    "chown": (200, []),
    "utime": (200, []),
    "fstat": (200, []),
    "seek": (200, []),
    "readahead": (200, []),
    "copy-file": (200, []),
    "sendfile": (200, []),
    "fsize": (200, []),
    "touch": (200, []),
    "getdent": (200, []),
    "xattr": (200, []),
    "filename": (200, []),
    "flock": (200, []),
    "lockf": (200, []),
    "mknod": (200, []),
    "access": (200, []),
    "fcntl": (200, []),
    "open": (200, []),
    "mmap": (5, []),
}

def setup_module() -> None:
    # `make test` installs it; a missing exerciser is a failure, not a skip.
    assert shutil.which("stress-ng"), "stress-ng is not installed (apt-get install stress-ng)"


@pytest.mark.parametrize("stressor", sorted(STRESSORS))
def test_stress_ng_stressor(shared_mount: Mounted, stressor: str) -> None:  # noqa: F811
    ops, extra = STRESSORS[stressor]
    before = len(shared_mount.errors())
    proc = subprocess.run(
        ["stress-ng", "--temp-path", shared_mount.mountpoint, f"--{stressor}", "1",
         f"--{stressor}-ops", str(ops), "--verify", "--metrics-brief", *extra],
        capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "fail" not in out.lower(), out
    assert shared_mount.errors()[before:] == []
