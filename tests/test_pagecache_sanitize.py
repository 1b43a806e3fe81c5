"""Run the page-cache tests against an ASan/UBSan build (csrc/sanitize.sh).

Marked ``sanitize``: deselect with ``-m "not sanitize"``. It builds a
sanitized copy of the extension in a temporary directory and runs the other
``tests/test_pagecache*.py`` files against it in a subprocess; about half a
minute on two cores.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "csrc" / "sanitize.sh"


def _have_libasan(cc: str) -> bool:
    try:
        out = subprocess.run(
            [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return os.path.isabs(out) and os.path.exists(out)


@pytest.mark.sanitize
def test_pagecache_tests_pass_under_asan_and_ubsan() -> None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or not _have_libasan(cc):
        pytest.skip(f"{cc} with libasan is needed")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    assert "== sanitized module:" in proc.stdout, report
    assert "runtime error" not in proc.stdout + proc.stderr, report
    assert " passed" in proc.stdout and " failed" not in proc.stdout, report
