"""Stored attributes and symbolic links of an S3 source, through real mounts.

With ``[source] stored_attributes = true`` an object's mode, owner and times live
in its user metadata under s3fs's names (``x-amz-meta-mode``, ``-uid``, ``-gid``,
``-mtime``, ...), directories keep theirs in their marker, and symbolic links are
objects holding the target with S_IFLNK in ``x-amz-meta-mode``. Each test runs
against ``rclone serve s3`` (no markers) and moto's server with and without
markers, checks what a second mount of the bucket shows, and reads the metadata
with an independent botocore client.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable

import pytest
from posix_util import NOBODY, open_dir_fd, run_as

from mounting import Mounted
from s3server import S3Server, api, bucket_view
from test_s3_mount import stats

pytestmark = [pytest.mark.s3, pytest.mark.mount]

MTIME_NS = 1_600_000_000_123_456_789
ATIME_NS = 1_500_000_000_000_000_000


@pytest.fixture(params=["rclone", "moto", "moto-nomarkers"])
def attr_s3(request: pytest.FixtureRequest) -> S3Server:
    """A new bucket on rclone (no markers) or moto (with and without markers)."""
    base = request.getfixturevalue("rclone_api_server" if request.param == "rclone"
                                   else "moto_server")
    return bucket_view(base, "a", kind=request.param.partition("-")[0],
                       markers=request.param == "moto")


def mount_attrs(mount_s3: Callable[..., Mounted], server: S3Server, *,
                options: tuple[str, ...] = (), **source: Any) -> Mounted:
    """`mount_s3` of ``server`` with ``stored_attributes`` (unless ``source`` says)."""
    return mount_s3(server, source={"stored_attributes": True, **source}, options=options)


def head(server: S3Server, key: str) -> dict[str, str]:
    """The user metadata another client reads (botocore: names without x-amz-meta-;
    HTTP header names are case-insensitive, and rclone answers them capitalised)."""
    meta = api(server).head_object(Bucket=server.bucket, Key=key)["Metadata"]
    return {k.lower(): v for k, v in meta.items()}


def body(server: S3Server, key: str) -> bytes:
    return api(server).get_object(Bucket=server.bucket, Key=key)["Body"].read()


def test_modes_owners_times_are_stored(attr_s3: S3Server,
                                       mount_s3: Callable[..., Mounted]) -> None:
    """chmod/chown/utimes through the mount reach the object's metadata under s3fs's
    names, and a second mount (a remount) shows them."""
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        os.mkdir(f"{mp}/d", 0o700)
        fd = os.open(f"{mp}/d/f", os.O_CREAT | os.O_WRONLY, 0o640)
        os.write(fd, b"hello")
        os.close(fd)
        assert stat.S_IMODE(os.stat(f"{mp}/d/f").st_mode) == 0o640
        os.chmod(f"{mp}/d/f", 0o604)
        os.chown(f"{mp}/d/f", 1234, 5678)
        os.utime(f"{mp}/d/f", ns=(ATIME_NS, MTIME_NS))
        os.chmod(f"{mp}/d", 0o750)
        st = os.stat(f"{mp}/d/f")
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == \
            (stat.S_IFREG | 0o604, 1234, 5678, MTIME_NS)
        assert open(f"{mp}/d/f", "rb").read() == b"hello"
    meta = head(attr_s3, "d/f")
    assert meta["mode"] == str(stat.S_IFREG | 0o604)  # decimal, type bits included (s3fs)
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert meta["mtime"] == "1600000000.123456789"  # rclone's float, s3fs's sec.nsec
    assert meta["atime"] == "1500000000"
    if attr_s3.markers:  # type: ignore[attr-defined]
        assert head(attr_s3, "d/")["mode"] == str(stat.S_IFDIR | 0o750)
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        st = os.stat(f"{mp}/d/f")
        assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFREG | 0o604, 1234, 5678)
        assert (st.st_mtime_ns, st.st_atime_ns) == (MTIME_NS, ATIME_NS)
        assert st.st_size == 5 and open(f"{mp}/d/f", "rb").read() == b"hello"
        # ls -l: the listing's entries carry them too
        assert {e.name: stat.S_IMODE(e.stat(follow_symlinks=False).st_mode)
                for e in os.scandir(f"{mp}/d")} == {"f": 0o604}
        expected = 0o750 if attr_s3.markers else 0o755  # type: ignore[attr-defined]
        assert stat.S_IMODE(os.stat(f"{mp}/d").st_mode) == expected


def test_overwrite_and_rename_keep_attributes(attr_s3: S3Server,
                                              mount_s3: Callable[..., Mounted]) -> None:
    """Rewriting a file keeps its mode and owner (as on a disk); a rename moves them."""
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        with open(f"{mp}/f", "wb") as f:
            f.write(b"one")
        os.chmod(f"{mp}/f", 0o600)
        os.chown(f"{mp}/f", 42, 43)
        with open(f"{mp}/f", "wb") as f:
            f.write(b"two!")
        os.rename(f"{mp}/f", f"{mp}/g")
        assert not os.path.exists(f"{mp}/f")
    meta = head(attr_s3, "g")
    assert (meta["mode"], meta["uid"], meta["gid"]) == (str(stat.S_IFREG | 0o600), "42", "43")
    with mount_attrs(mount_s3, attr_s3) as m:
        st = os.stat(f"{m.mountpoint}/g")
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (stat.S_IFREG | 0o600, 42, 43, 4)


def test_rename_right_after_rewrites(attr_s3: S3Server,
                                     mount_s3: Callable[..., Mounted]) -> None:
    """write, chmod, rewrite, rename, unlink in a loop: the rename comes while an
    upload of the old name is on its way (and stores the chmod); no upload may write
    the old key after the rename, and the new name always exists."""
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        for i in range(25):
            with open(f"{mp}/f", "wb") as f:
                f.write(b"x")
            os.chmod(f"{mp}/f", 0o600)
            with open(f"{mp}/f", "wb") as f:
                f.write(b"rewritten %d" % i)
            os.rename(f"{mp}/f", f"{mp}/g")
            st = os.stat(f"{mp}/g")
            assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o600, len(b"rewritten %d" % i))
            assert not os.path.exists(f"{mp}/f")
        assert open(f"{mp}/g", "rb").read() == b"rewritten 24"
    keys = [o["Key"] for o in api(attr_s3).list_objects_v2(Bucket=attr_s3.bucket).get("Contents", [])]
    assert keys == ["g"]
    assert head(attr_s3, "g")["mode"] == str(stat.S_IFREG | 0o600)


def test_directory_rename_keeps_the_attributes_below(attr_s3: S3Server,
                                                     mount_s3: Callable[..., Mounted]) -> None:
    """Renaming a directory moves the mode and owner of the directories below it (with
    markers: in their markers, so a remount shows them) and keeps the files'."""
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        os.makedirs(f"{mp}/a/b/c")
        with open(f"{mp}/a/b/c/f", "wb") as f:
            f.write(b"deep")
        os.chmod(f"{mp}/a/b", 0o701)
        os.chown(f"{mp}/a/b", 11, 12)
        os.chmod(f"{mp}/a/b/c", 0o710)
        os.chmod(f"{mp}/a/b/c/f", 0o604)
        os.rename(f"{mp}/a", f"{mp}/z")
        shown = [(stat.S_IMODE(os.stat(f"{mp}/{p}").st_mode), os.stat(f"{mp}/{p}").st_uid)
                 for p in ("z/b", "z/b/c", "z/b/c/f")]
        assert shown == [(0o701, 11), (0o710, 0), (0o604, 0)]
        assert not os.path.exists(f"{mp}/a")
    markers = attr_s3.markers  # type: ignore[attr-defined]
    if markers:
        meta = head(attr_s3, "z/b/")
        assert (meta["mode"], meta["uid"], meta["gid"]) == (str(stat.S_IFDIR | 0o701), "11", "12")
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        modes = [stat.S_IMODE(os.stat(f"{mp}/{p}").st_mode) for p in ("z/b", "z/b/c", "z/b/c/f")]
        # without markers a directory stores nothing: a remount shows the configured mode
        assert modes == ([0o701, 0o710, 0o604] if markers else [0o755, 0o755, 0o604])
        assert open(f"{mp}/z/b/c/f", "rb").read() == b"deep"


def test_metadata_of_another_client(attr_s3: S3Server,
                                    mount_s3: Callable[..., Mounted]) -> None:
    """Objects another tool wrote: s3fs-style metadata shows; none shows the defaults."""
    client = api(attr_s3)
    client.put_object(Bucket=attr_s3.bucket, Key="s3fs", Body=b"x", Metadata={
        "mode": str(stat.S_IFREG | 0o751), "uid": "7", "gid": "8", "mtime": "1234567890"})
    client.put_object(Bucket=attr_s3.bucket, Key="plain", Body=b"y")
    client.put_object(Bucket=attr_s3.bucket, Key="junk", Body=b"z",
                      Metadata={"mode": "rwx", "uid": "-1", "mtime": "soon"})
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        st = os.stat(f"{mp}/s3fs")
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime) == \
            (stat.S_IFREG | 0o751, 7, 8, 1234567890)
        for name in ("plain", "junk"):
            st = os.stat(f"{mp}/{name}")
            assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFREG | 0o644, 0, 0)


def test_symlinks(attr_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """symlink/readlink/lstat/rename/unlink, stored as s3fs stores them."""
    target = "../somewhere/else with spaces"
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        os.mkdir(f"{mp}/d")
        os.symlink(target, f"{mp}/d/l")
        os.symlink("/etc/passwd", f"{mp}/abs")
        assert os.readlink(f"{mp}/d/l") == target
        st = os.lstat(f"{mp}/d/l")
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(target)
        with pytest.raises(OSError) as exc:
            os.symlink("x", f"{mp}/d/l")
        assert exc.value.errno == errno.EEXIST
        with pytest.raises(OSError) as exc:
            os.readlink(f"{mp}/d")
        assert exc.value.errno == errno.EINVAL
        os.rename(f"{mp}/d/l", f"{mp}/d/l2")
        assert os.readlink(f"{mp}/d/l2") == target
        assert sorted(os.listdir(f"{mp}/d")) == ["l2"]
    assert body(attr_s3, "d/l2") == target.encode()
    assert stat.S_ISLNK(int(head(attr_s3, "d/l2")["mode"]))
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        assert os.readlink(f"{mp}/d/l2") == target
        assert os.readlink(f"{mp}/abs") == "/etc/passwd"
        assert [e.is_symlink() for e in os.scandir(f"{mp}/d")] == [True]
        os.unlink(f"{mp}/d/l2")
        os.unlink(f"{mp}/abs")
        assert not os.path.lexists(f"{mp}/d/l2")
    keys = [o["Key"] for o in api(attr_s3).list_objects_v2(Bucket=attr_s3.bucket).get("Contents", [])]
    assert "d/l2" not in keys and "abs" not in keys


def test_extended_attributes(attr_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """get/set/list/remove in s3fs's x-amz-meta-xattr, kept by chmod, overwrite and
    rename, seen by a remount; ENODATA, E2BIG and ENOSPC at S3's 2 KiB."""
    import base64
    import json
    from urllib.parse import unquote

    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        with open(f"{mp}/f", "wb") as f:
            f.write(b"x")
        os.mkdir(f"{mp}/d")
        os.setxattr(f"{mp}/f", "user.colour", b"blue\x00\xff")
        os.setxattr(f"{mp}/f", "user.empty", b"")
        os.setxattr(f"{mp}/d", "user.dir", b"yes")
        assert os.getxattr(f"{mp}/f", "user.colour") == b"blue\x00\xff"
        assert sorted(os.listxattr(f"{mp}/f")) == ["user.colour", "user.empty"]
        for fn, args in ((os.getxattr, ("user.none",)), (os.removexattr, ("user.none",))):
            with pytest.raises(OSError) as exc:
                fn(f"{mp}/f", *args)
            assert exc.value.errno == errno.ENODATA
        with pytest.raises(OSError) as exc:
            os.setxattr(f"{mp}/f", "user.big", b"v" * 2000)
        assert exc.value.errno == errno.E2BIG
        with pytest.raises(OSError) as exc:
            for i in range(20):
                os.setxattr(f"{mp}/f", f"user.n{i}", b"v" * 200)
        assert exc.value.errno == errno.ENOSPC
        for name in os.listxattr(f"{mp}/f"):
            if name.startswith("user.n"):
                os.removexattr(f"{mp}/f", name)
        os.removexattr(f"{mp}/f", "user.empty")
        os.chmod(f"{mp}/f", 0o600)
        with open(f"{mp}/f", "wb") as f:
            f.write(b"rewritten")
        os.rename(f"{mp}/f", f"{mp}/g")
        assert os.getxattr(f"{mp}/g", "user.colour") == b"blue\x00\xff"
    stored = json.loads(unquote(head(attr_s3, "g")["xattr"]))
    assert {k: base64.b64decode(v) for k, v in stored.items()} == {"user.colour": b"blue\x00\xff"}
    with mount_attrs(mount_s3, attr_s3) as m:
        mp = m.mountpoint
        assert os.listxattr(f"{mp}/g") == ["user.colour"]
        assert os.getxattr(f"{mp}/g", "user.colour") == b"blue\x00\xff"
        assert stat.S_IMODE(os.stat(f"{mp}/g").st_mode) == 0o600
        if attr_s3.markers:  # type: ignore[attr-defined]
            assert os.getxattr(f"{mp}/d", "user.dir") == b"yes"


def test_without_stored_attributes(attr_s3: S3Server,
                                   mount_s3: Callable[..., Mounted]) -> None:
    """Off: the configured modes, chmod ignored, no symlinks (EPERM), no metadata."""
    with mount_attrs(mount_s3, attr_s3, stored_attributes=False) as m:
        mp = m.mountpoint
        with open(f"{mp}/f", "wb") as f:
            f.write(b"x")
        os.chmod(f"{mp}/f", 0o600)
        assert stat.S_IMODE(os.stat(f"{mp}/f").st_mode) == 0o644
        with pytest.raises(OSError) as exc:
            os.symlink("t", f"{mp}/l")
        assert exc.value.errno == errno.EPERM
        with pytest.raises(OSError) as exc:
            os.setxattr(f"{mp}/f", "user.a", b"1")
        assert exc.value.errno == errno.ENOTSUP
    assert "mode" not in head(attr_s3, "f")


def test_chmod_keeps_open_readers(attr_s3: S3Server,
                                  mount_s3: Callable[..., Mounted]) -> None:
    """A metadata-only copy under an open reader: the reader goes on reading the same
    bytes (never ESTALE, never other bytes)."""
    data = os.urandom(3 * 1024 * 1024)
    api(attr_s3).put_object(Bucket=attr_s3.bucket, Key="big", Body=data)
    with mount_attrs(mount_s3, attr_s3) as m:
        path = f"{m.mountpoint}/big"
        with open(path, "rb", buffering=0) as f:
            assert f.read(4096) == data[:4096]
            os.chmod(path, 0o600)
            os.utime(path, ns=(ATIME_NS, MTIME_NS))
            f.seek(2 * 1024 * 1024)
            assert f.read(4096) == data[2 * 1024 * 1024:2 * 1024 * 1024 + 4096]
        with open(path, "rb") as f:
            assert f.read() == data
        assert os.stat(path).st_mtime_ns == MTIME_NS


def test_chmod_of_multipart_object_keeps_open_readers(
        moto_server: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """moto, like S3, gives a multipart object a new ETag when it is copied onto itself
    (a chmod): an open made before reads on, tied to the new ETag, never ESTALE."""
    server = bucket_view(moto_server, "a", kind="moto")
    client = api(server)
    part = 5 * 1024 * 1024
    data = os.urandom(2 * part)
    upload = client.create_multipart_upload(Bucket=server.bucket, Key="mp")["UploadId"]
    parts = []
    for n in (1, 2):
        answer = client.upload_part(Bucket=server.bucket, Key="mp", UploadId=upload,
                                    PartNumber=n, Body=data[(n - 1) * part:n * part])
        parts.append({"PartNumber": n, "ETag": answer["ETag"]})
    client.complete_multipart_upload(Bucket=server.bucket, Key="mp", UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    before = client.head_object(Bucket=server.bucket, Key="mp")["ETag"]
    with mount_attrs(mount_s3, server) as m:
        path = f"{m.mountpoint}/mp"
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == data[:4096]
            os.chmod(path, 0o640)
            assert client.head_object(Bucket=server.bucket, Key="mp")["ETag"] != before
            for off in (9 * 1024 * 1024, 3 * 1024 * 1024 + 7, 6 * 1024 * 1024):
                assert os.pread(fd, 4096, off) == data[off:off + 4096]
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# Not on rclone: its listings give an object's stored mtime as LastModified, its HEAD
# and GET answers the time of the upload, so no version is common to both there.
@pytest.mark.parametrize("attr_s3", ["moto", "moto-nomarkers"], indirect=True)
def test_a_walk_is_served_from_its_fetches_ahead(attr_s3: S3Server,
                                                 mount_s3: Callable[..., Mounted]) -> None:
    """With stored attributes, the files a walk fetched ahead are the versions its opens
    find (an object's version is what the store says names its bytes: ETag, size and
    Last-Modified, never the mtime its metadata stores), so the walk's reads are served
    from what was fetched, and every byte is right."""
    client = api(attr_s3)
    files = {f"w/f{i:03d}": os.urandom(1000 + 37 * i) for i in range(24)}
    for i, (key, data) in enumerate(sorted(files.items())):
        # A stored mtime unlike the object's Last-Modified (and not whole seconds).
        client.put_object(Bucket=attr_s3.bucket, Key=key, Body=data, Metadata={
            "mode": str(stat.S_IFREG | 0o640), "mtime": f"1500000000.{i + 1:09d}"})
    with mount_attrs(mount_s3, attr_s3) as m:
        for i, key in enumerate(sorted(files)):
            p = f"{m.mountpoint}/{key}"
            st = os.stat(p)
            assert (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == \
                (len(files[key]), 1_500_000_000_000_000_000 + i + 1, 0o640)
            with open(p, "rb") as f:
                assert f.read() == files[key], key
        c = stats(m.mountpoint)["counters"]
        assert c.get("walk.fetched_files", 0) > 0
        assert c.get("walk.hits", 0) > 0  # what was fetched ahead was used


def test_permission_checks_use_stored_modes(attr_s3: S3Server,
                                            mount_s3: Callable[..., Mounted]) -> None:
    """The kernel checks the stored mode and owner (default_permissions): a user the
    mount made the owner may read their 0600 file; another's 0600 file is EACCES; the
    same after a remount, from the store's metadata."""
    code = '''
def read(name):
    with open(os.open(name, os.O_RDONLY, dir_fd=r), "rb") as f:
        return f.read().decode()
def write(name):
    fd = os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=r)
    os.close(fd)
probe("mine", read, "mine")
probe("theirs", read, "theirs")
probe("shared", read, "shared")
probe("write shared", write, "shared")
probe("chmod theirs", os.chmod, "theirs", 0o666, dir_fd=r)
'''
    expected = {"mine": "mine", "theirs": "EACCES", "shared": "shared",
                "write shared": "EACCES", "chmod theirs": "EPERM"}
    with mount_attrs(mount_s3, attr_s3, options=("allow_other",)) as m:
        mp = m.mountpoint
        for name in ("mine", "theirs", "shared"):
            with open(f"{mp}/{name}", "w") as f:
                f.write(name)
        os.chmod(f"{mp}/mine", 0o600)
        os.chown(f"{mp}/mine", NOBODY, NOBODY)
        os.chmod(f"{mp}/theirs", 0o600)
        os.chmod(f"{mp}/shared", 0o444)
        r = open_dir_fd(mp)
        try:
            assert run_as(NOBODY, code, fds=[r], r=r) == expected
        finally:
            os.close(r)
    with mount_attrs(mount_s3, attr_s3, options=("allow_other",)) as m:
        r = open_dir_fd(m.mountpoint)
        try:
            assert run_as(NOBODY, code, fds=[r], r=r) == expected
        finally:
            os.close(r)


def test_meta_encoding() -> None:
    """s3fs's decimal mode and sec[.nsec] times; rclone's float mtime; junk ignored."""
    from fusefs.tiers.objectstore.options import (Attributes, ObjectStoreOptions, format_time,
                                                  parse_time)

    assert format_time(MTIME_NS) == "1600000000.123456789"
    assert format_time(1_600_000_000 * 10**9) == "1600000000"
    assert parse_time("1600000000.123456789") == MTIME_NS
    assert parse_time("1600000000.5") == 1_600_000_000_500_000_000  # rclone's float
    assert parse_time("1600000000") == 1_600_000_000 * 10**9
    for junk in ("", "soon", "1.2.3", "1e9", None):
        assert parse_time(junk) is None
    attrs = Attributes(ObjectStoreOptions(uid=5, gid=6), 0)
    base = attrs.file(10, 7 * 10**9)
    st = attrs.from_meta(base, {"mode": str(stat.S_IFLNK | 0o777), "uid": "1", "gid": "2"})
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (1, 2)
    st = attrs.from_meta(base, {"mode": "420"})  # 0644 without type bits: a file's mode
    assert st.st_mode == stat.S_IFREG | 0o644
    st = attrs.from_meta(base, {"mode": "rwx", "uid": "-1", "gid": "99999999999", "mtime": "x"})
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == \
        (base.st_mode, 5, 6, base.st_mtime_ns)
    st = attrs.from_meta(attrs.dir(0), {"mode": str(stat.S_IFLNK | 0o700)})
    assert st.is_dir and stat.S_IMODE(st.st_mode) == 0o700  # a marker is never a link
    assert Attributes.to_meta(st)["mode"] == str(stat.S_IFDIR | 0o700)
