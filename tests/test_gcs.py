"""The object-store capacity tier over ``gs://`` against a real GCS server on loopback.

No client is mocked: every test talks the GCS JSON API to `gcsserver.GcsServer`
(fake-gcs-server) through pyarrow's ``GcsFileSystem``, once with each backend
(``filesystem``: ``dir_markers=False``, as it drops marker objects; ``memory``:
markers kept, as on GCS). Objects are put and read back through a second,
independent pyarrow client; ``GcsServer.keys`` shows the raw object names.
The in-process counterpart of ``test_objectstore.py`` for GCS.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import http.server
import json
import os
import socket
import tempfile
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import trio

from fusefs.tiers.capacity import TierUnavailable
from fusefs.tiers.objectstore import ObjectStoreTier
from fusefs.tiers.objectstore.store import _classify, resolve_source
from gcsserver import GcsServer
from s3server import free_port
from test_objectstore import pread_all

pytestmark = pytest.mark.gcs

KiB = 1024
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))


def run(fn, *args):
    return trio.run(fn, *args)


def make_tier(server: GcsServer, prefix: str = "", **options) -> ObjectStoreTier:
    options.setdefault("dir_markers", server.markers)
    options.setdefault("read_timeout", 120)  # a loaded CI machine is not a dead server
    return ObjectStoreTier.from_uri(server.uri(prefix), **options)


async def started(server: GcsServer, prefix: str = "", **options) -> ObjectStoreTier:
    tier = make_tier(server, prefix, **options)
    await tier.start()
    return tier


async def write_file(tier: ObjectStoreTier, path: bytes, data: bytes) -> None:
    f, _ = await tier.create(path, os.O_WRONLY, 0o644, os.getuid(), os.getgid())
    try:
        await f.pwrite(0, data)
        await f.flush()
    finally:
        await f.close()


async def raises(code: int, coro) -> OSError:
    try:
        await coro
    except OSError as exc:
        assert exc.errno == code, f"expected {errno.errorcode[code]}, got {exc!r}"
        return exc
    raise AssertionError(f"expected {errno.errorcode[code]}, nothing raised")


def gone(server: GcsServer, rel: str) -> bool:
    return server.client().get_file_info(f"{server.bucket}/{rel}").type == pafs.FileType.NotFound


# -- sources ---------------------------------------------------------------------
def test_gs_uri_parameters() -> None:
    src = resolve_source("gs://bkt/some/prefix?endpoint_override=127.0.0.1:9&scheme=http"
                         "&anonymous=true&retry_time_limit=3", {})
    assert src.root == "bkt/some/prefix" and src.kind == "gcs"
    assert src.description == "gs://bkt/some/prefix" and src.endpoint == "http://127.0.0.1:9"
    assert resolve_source("gs://bkt", {"endpoint": "http://h:1", "anonymous": True}).endpoint == \
        "http://h:1"
    assert resolve_source("gs://bkt", {}).endpoint == "Google Cloud Storage"
    with pytest.raises(ValueError, match="unknown parameter 'region' in gs URI"):
        resolve_source("gs://bkt?region=x", {})
    with pytest.raises(ValueError, match="do not apply to gs:// sources"):
        resolve_source("gs://bkt", {"access_key": "a", "secret_key": "b"})
    with pytest.raises(ValueError, match="carries no credentials"):
        resolve_source("gs://user:secret@bkt", {})
    with pytest.raises(ValueError, match="names no bucket"):
        resolve_source("gs:///x", {})
    with pytest.raises(ValueError, match="whole seconds"):
        resolve_source("gs://bkt?retry_time_limit=0.5", {})
    with pytest.raises(ValueError, match="scheme"):
        resolve_source("gs://bkt?scheme=ftp", {})
    with pytest.raises(ValueError, match="not a boolean"):
        resolve_source("gs://bkt?anonymous=maybe", {})


def test_start_and_root(gcs: GcsServer) -> None:
    gcs.put("pfx/a.bin", b"x" * 10)
    gcs.put("pfx/sub/deep", b"d")

    async def main() -> None:
        tier = await started(gcs)
        assert tier.kind == "gcs" and (await tier.stat(b"")).is_dir
        assert {n for n, _ in await tier.listdir(b"")} == {b"pfx"}
        sub = await started(gcs, "pfx")
        entries = dict(await sub.listdir(b""))
        assert set(entries) == {b"a.bin", b"sub"} and entries[b"sub"].is_dir
        st = await sub.stat(b"a.bin")
        assert st.is_reg and st.st_size == 10 and st.st_mtime_ns > 0
        assert (await sub.stat(b"sub")).is_dir
        await tier.close()
        await sub.close()

    run(main)


def test_start_errors_are_clear(gcs: GcsServer) -> None:
    async def main() -> None:
        dead = GcsServer.__new__(GcsServer)
        dead.__dict__.update(gcs.__dict__)
        dead.port = free_port()  # nothing listens there
        exc = await raises(errno.EIO, started(dead))
        assert isinstance(exc, TierUnavailable) and f"127.0.0.1:{dead.port}" in str(exc)
        exc = await raises(errno.ENOENT, ObjectStoreTier.from_uri(gcs.uri(bucket="nosuchbucket")).start())
        assert "nosuchbucket" in str(exc)
        exc = await raises(errno.ENOENT, started(gcs, "no/such/prefix"))
        assert "no/such/prefix" in str(exc)

    run(main)


def test_gcs_errors_are_classified(gcs: GcsServer) -> None:
    """Real failures of pyarrow's GCS client, sorted as the S3 ones are."""
    fs = gcs.client()
    with pytest.raises(OSError) as missing:
        fs.open_input_stream(f"{gcs.bucket}/nope").read()
    assert _classify(missing.value) == ("fail", errno.ENOENT)
    dead = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=f"127.0.0.1:{free_port()}",
                              retry_time_limit=datetime.timedelta(seconds=1))
    with pytest.raises(OSError) as refused:
        dead.get_file_info(f"{gcs.bucket}/x")
    assert "google::cloud::Status(" in str(refused.value)
    assert _classify(refused.value) == ("unreachable", errno.EIO)


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` and a GCS JSON error body."""

    status = 403

    def _answer(self) -> None:
        body = json.dumps({"error": {"code": self.status, "message": "refused",
                                     "errors": [{"reason": "refused", "message": "refused"}]}})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status,code", [(403, errno.EACCES), (401, errno.EACCES),
                                         (503, errno.EIO), (429, errno.EIO)])
def test_denied_and_busy_answers(status: int, code: int) -> None:
    """fake-gcs-server has no authentication: a loopback HTTP server that answers every
    request with ``status`` (GCS's JSON error body) stands for a store that refuses.
    The client is pyarrow's, unchanged."""
    handler = type("Handler", (_Refusing,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"gs://b/p?endpoint_override=127.0.0.1:{server.server_port}&scheme=http&anonymous=true"

    async def main() -> None:
        exc = await raises(code, ObjectStoreTier.from_uri(uri, retries=2).start())
        if code == errno.EACCES:
            assert "GOOGLE_APPLICATION_CREDENTIALS" in str(exc)
        else:
            assert not isinstance(exc, TierUnavailable)  # it answered: busy, not down

    try:
        run(main)
    finally:
        server.shutdown()
        server.server_close()


# -- listing -------------------------------------------------------------------------
def test_listing_pages_and_implied_directories(gcs: GcsServer) -> None:
    fs = gcs.client()
    for i in range(1100):
        with fs.open_output_stream(f"{gcs.bucket}/many/f{i:05d}") as f:
            f.write(b"y" * (i % 7))
    gcs.put("many/sub1/inner", b"z")
    gcs.put("many/sub2/deeper/x", b"z")

    async def main() -> None:
        tier = await started(gcs)
        entries = dict(await tier.listdir(b"many"))
        assert len(entries) == 1102  # more than one page; directories without markers
        assert entries[b"f01099"].st_size == 1099 % 7
        assert entries[b"sub1"].is_dir and entries[b"sub2"].is_dir
        assert tier.list_requests == 1
        stats_before = tier.requests["stat"]
        for i in range(0, 1100, 37):
            assert (await tier.stat(b"many/f%05d" % i)).st_size == i % 7
        await raises(errno.ENOENT, tier.stat(b"many/not-there"))
        assert tier.requests["stat"] == stats_before
        assert [n for n, _ in await tier.listdir(b"many/sub2")] == [b"deeper"]
        await raises(errno.ENOTDIR, tier.listdir(b"many/f00001"))
        await raises(errno.ENOENT, tier.listdir(b"nothing"))
        # A directory holding only a subdirectory is not empty.
        await raises(errno.ENOTEMPTY, tier.rmdir(b"many/sub2"))
        assert gcs.get("many/sub2/deeper/x") == b"z"

    run(main)


# -- reads ---------------------------------------------------------------------------
def test_ranged_reads_at_every_alignment(gcs: GcsServer) -> None:
    data = os.urandom(3 * 4096 + 123)
    gcs.put("r/obj", data)
    size = len(data)

    async def main() -> None:
        tier = await started(gcs)
        f = await tier.open(b"r/obj", os.O_RDONLY)
        try:
            offsets = [0, 1, 4095, 4096, 4097, 8191, 8192, size - 1, size, size + 1]
            sizes = [0, 1, 4095, 4096, 4097, 8193, size, 10 * size]
            for off in offsets:
                for n in sizes:
                    assert await f.pread(off, n) == data[off:off + n], (off, n)
            ranges = [(o, s) for o in offsets for s in (1, 4096, 5000)]
            assert await pread_all(f, ranges) == [data[o:o + s] for o, s in ranges]
        finally:
            await f.close()

    run(main)


def test_big_sequential_read(gcs: GcsServer) -> None:
    data = os.urandom(20 * MiB + 3)
    gcs.put("big.bin", data)

    async def main() -> None:
        tier = await started(gcs)
        f = await tier.open(b"big.bin", os.O_RDONLY)
        try:
            got = hashlib.sha256()
            off = 0
            while chunk := await f.pread(off, 4 * MiB):
                got.update(chunk)
                off += len(chunk)
            assert off == len(data) and got.digest() == hashlib.sha256(data).digest()
        finally:
            await f.close()

    run(main)


# -- writes and the namespace --------------------------------------------------------
def test_writes_reach_the_store(gcs: GcsServer) -> None:
    gcs.put("w/existing", b"0123456789")

    async def main() -> None:
        tier = await started(gcs)
        f, _ = await tier.create(b"w/new", os.O_WRONLY, 0o644, 0, 0)
        await f.pwrite(0, b"abc")
        await f.pwrite(10, b"xyz")
        await f.flush()
        assert gcs.get("w/new") == b"abc" + b"\0" * 7 + b"xyz"
        await f.pwrite(0, b"A")
        await f.close()
        assert gcs.get("w/new") == b"Abc" + b"\0" * 7 + b"xyz"
        await raises(errno.EEXIST, tier.create(b"w/new", os.O_WRONLY, 0o644, 0, 0))
        f = await tier.open(b"w/existing", os.O_RDWR)
        await f.pwrite(2, b"--")
        await f.close()
        assert gcs.get("w/existing") == b"01--456789"
        f = await tier.open(b"w/existing", os.O_WRONLY | os.O_TRUNC)
        await f.pwrite(0, b"T")
        await f.close()
        assert gcs.get("w/existing") == b"T"
        st = await tier.setattr(b"w/new", size=5)
        assert st.st_size == 5 and gcs.get("w/new") == b"Abc\0\0"
        big = os.urandom(12 * MiB + 5)  # a resumable upload in several chunks
        await write_file(tier, b"w/big", big)
        assert gcs.get("w/big") == big
        assert (await tier.stat(b"w/big")).st_size == len(big)
        f, _ = await tier.create(b"w/empty", os.O_WRONLY, 0o644, 0, 0)
        await f.close()
        assert gcs.get("w/empty") == b""
        await tier.close()

    run(main)


def test_mkdir_rmdir_unlink(gcs: GcsServer) -> None:
    async def main() -> None:
        tier = await started(gcs)
        await tier.mkdir(b"d", 0o755, 0, 0)
        assert (await tier.stat(b"d")).is_dir and await tier.listdir(b"d") == []
        await raises(errno.EEXIST, tier.mkdir(b"d", 0o755, 0, 0))
        await raises(errno.ENOENT, tier.mkdir(b"nope/d", 0o755, 0, 0))
        await tier.mkdir(b"d/e", 0o755, 0, 0)
        await write_file(tier, b"d/e/f", b"1")
        await write_file(tier, b"d/e/g", b"2")
        assert gcs.get("d/e/f") == b"1"
        await raises(errno.ENOTEMPTY, tier.rmdir(b"d"))
        await raises(errno.ENOTEMPTY, tier.rmdir(b"d/e"))
        await raises(errno.ENOTDIR, tier.rmdir(b"d/e/f"))
        await raises(errno.EISDIR, tier.unlink(b"d/e"))
        await tier.unlink(b"d/e/f")  # a sibling stays
        await raises(errno.ENOENT, tier.unlink(b"d/e/f"))
        assert gcs.get("d/e/g") == b"2" and gone(gcs, "d/e/f")
        await tier.unlink(b"d/e/g")  # the last one: the directory outlives it
        assert (await tier.stat(b"d/e")).is_dir
        if gcs.markers:  # and so it does in the store, for another client or a remount
            other = await started(gcs)
            assert (await other.stat(b"d/e")).is_dir and await other.listdir(b"d/e") == []
        await write_file(tier, b"d/e/again", b"3")
        await tier.unlink(b"d/e/again")
        await tier.rmdir(b"d/e")
        await raises(errno.ENOENT, tier.stat(b"d/e"))
        await tier.rmdir(b"d")
        assert b"d" not in dict(await tier.listdir(b""))
        assert gcs.keys() == []
        await raises(errno.EBUSY, tier.rmdir(b""))

    run(main)


def test_unlink_last_file_of_existing_directory(gcs: GcsServer) -> None:
    """A directory another client made (no marker): its last file goes, it stays."""
    gcs.put("data/shard/only", b"x")
    gcs.put("data/other", b"o")

    async def main() -> None:
        tier = await started(gcs)
        await tier.unlink(b"data/shard/only")
        assert (await tier.stat(b"data/shard")).is_dir
        assert await tier.listdir(b"data/shard") == []
        assert gcs.get("data/other") == b"o"
        if gcs.markers:
            # the marker, and (pyarrow's recursive create_dir) one for each parent without
            assert set(gcs.keys()) - {"data/"} == {"data/other", "data/shard/"}
            fresh = await started(gcs)
            assert {n for n, _ in await fresh.listdir(b"data")} == {b"other", b"shard"}

    run(main)


def test_rename_semantics(gcs: GcsServer) -> None:
    gcs.put("src/a", b"A")
    gcs.put("src/b", b"B")
    gcs.put("src/sub/c", b"C")
    gcs.put("other", b"O")
    for i in range(6):
        gcs.put(f"wide/k{i}", b"w")

    async def main() -> None:
        tier = await started(gcs, max_dir_rename_keys=5)
        await tier.rename(b"src/a", b"a-moved")
        assert gcs.get("a-moved") == b"A" and gone(gcs, "src/a")
        await raises(errno.ENOENT, tier.stat(b"src/a"))
        await raises(errno.EEXIST, tier.rename(b"src/b", b"other", 1))  # RENAME_NOREPLACE
        await tier.rename(b"src/b", b"other")  # replaces a file
        assert gcs.get("other") == b"B"
        await raises(errno.EISDIR, tier.rename(b"other", b"src"))
        await raises(errno.ENOTDIR, tier.rename(b"src", b"other"))
        await raises(errno.EINVAL, tier.rename(b"src", b"src/sub/inside"))
        await tier.rename(b"src", b"dst")  # a directory: key by key
        assert gcs.get("dst/sub/c") == b"C" and gone(gcs, "src/sub/c")
        await raises(errno.ENOENT, tier.stat(b"src"))
        assert (await tier.stat(b"dst/sub")).is_dir
        exc = await raises(errno.EXDEV, tier.rename(b"wide", b"wide2"))
        assert "max_dir_rename_keys" in str(exc)
        await tier.mkdir(b"empty", 0o755, 0, 0)
        await tier.rename(b"empty", b"empty2")
        assert (await tier.stat(b"empty2")).is_dir
        await raises(errno.ENOENT, tier.stat(b"empty"))
        # an open writer follows its file
        f, _ = await tier.create(b"w1", os.O_WRONLY, 0o644, 0, 0)
        await f.pwrite(0, b"first")
        await tier.rename(b"w1", b"w2")
        await f.pwrite(5, b"+more")
        await f.close()
        assert gcs.get("w2") == b"first+more" and gone(gcs, "w1")
        # What another client sees (a fresh tier lists the store).
        fresh = await started(gcs)
        want = {b"a-moved", b"other", b"dst", b"wide", b"w2"} | ({b"empty2"} if gcs.markers else set())
        assert {n for n, _ in await fresh.listdir(b"")} == want
        assert [n for n, _ in await fresh.listdir(b"dst")] == [b"sub"]

    run(main)


def test_names_the_store_cannot_hold(gcs: GcsServer) -> None:
    async def main() -> None:
        tier = await started(gcs)
        await raises(errno.EINVAL, tier.create(b"bad\xff\xfename", os.O_WRONLY, 0o644, 0, 0))
        await raises(errno.ENAMETOOLONG, tier.stat(b"n" * 256))
        await raises(errno.ENAMETOOLONG, tier.stat(b"/".join([b"d" * 250] * 5)))
        await write_file(tier, "ünïcode name.txt".encode(), b"u")
        assert gcs.get("ünïcode name.txt") == b"u"
        await write_file(tier, b"with space+plus%percent", b"s")
        assert gcs.get("with space+plus%percent") == b"s"
        assert (await tier.stat(b"with space+plus%percent")).st_size == 1

    run(main)


# -- failures ------------------------------------------------------------------------
def test_server_down_and_back(restartable_gcs: GcsServer) -> None:
    """Stopped server: cached metadata answers, the rest is a bounded EIO; the same
    tier and handle work again once it is back."""
    server = restartable_gcs
    data = os.urandom(100 * KiB)
    server.put("keep/data", data)

    async def main() -> None:
        tier = await started(server, stat_ttl=0, list_ttl=0, negative_ttl=0, probe_interval=0.2)
        f = await tier.open(b"keep/data", os.O_RDONLY)
        assert await f.pread(0, 10) == data[:10]
        assert [n for n, _ in await tier.listdir(b"keep")] == [b"data"]
        server.stop()
        for op in (tier.stat(b"elsewhere"), f.pread(4096, 100), write_file(tier, b"keep/new", b"n")):
            exc = await raises(errno.EIO, op)
            assert isinstance(exc, TierUnavailable), exc
        assert tier.statistics()["down"] == 1
        assert (await tier.stat(b"keep/data")).st_size == len(data)  # stale-if-error
        server.start()
        assert await f.pread(4096, 100) == data[4096:4196]
        assert tier.statistics()["down"] == 0
        await write_file(tier, b"keep/new", b"n")
        assert server.get("keep/new") == b"n"
        await f.close()
        await tier.close()

    run(main)


def test_server_that_hangs(gcs: GcsServer) -> None:
    """Accepts connections, never answers: read_timeout bounds a stat (the GCS client's
    own per-attempt timeout, which pyarrow does not expose, is much longer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    hung = GcsServer.__new__(GcsServer)
    hung.__dict__.update(gcs.__dict__)
    hung.port = listener.getsockname()[1]

    async def main() -> None:
        tier = make_tier(hung, read_timeout=1, max_threads=2)
        exc = await raises(errno.EIO, tier.start())
        assert isinstance(exc, TierUnavailable) and "read_timeout" in str(exc)
        await raises(errno.EIO, tier.stat(b"x"))
        assert tier._store.limiter.borrowed_tokens <= 2

    try:
        run(main)
    finally:
        listener.close()
        for conn in held:
            conn.close()
