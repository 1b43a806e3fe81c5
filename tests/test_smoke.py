"""The mount comes up, serves the source, and goes away cleanly."""

import os


def test_read_and_write_through_mount(src: str, mnt: str) -> None:
    with open(os.path.join(src, "a.txt"), "wb") as f:
        f.write(b"hello")
    with open(os.path.join(mnt, "a.txt"), "rb") as f:
        assert f.read() == b"hello"
    with open(os.path.join(mnt, "b.txt"), "wb") as f:
        f.write(b"world")
    with open(os.path.join(src, "b.txt"), "rb") as f:
        assert f.read() == b"world"
    assert sorted(os.listdir(mnt)) == ["a.txt", "b.txt"]
