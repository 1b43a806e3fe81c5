"""The committed man pages are the ones the code generates."""

import os

from fusefs.manpages import PAGES

MAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "man")


def test_man_pages_are_current() -> None:
    for name, fn in PAGES.items():
        with open(os.path.join(MAN, name)) as f:
            assert f.read() == fn(), f"man/{name} is stale: run `make man`"
