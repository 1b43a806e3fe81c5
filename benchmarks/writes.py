"""Writes through tierfs beside local disk, a plain S3 upload, rclone mount and s3fs (issue 13).

Three scenarios, side by side in one run, every byte checked on the store at the end:

``ckpt``    checkpoint burst: one writer writes K files of S MiB one after another
            (1 MiB ``write`` calls, then ``fsync`` and ``close`` of each, like
            ``torch.save`` shards). Reported: the writer's MiB/s and seconds (first open
            to last close) and the seconds until every file is durable in the capacity
            tier (the S3 server's directory holds every file at its full size and the
            bytes read back through S3 match), from the first open.
``reads``   random 4 KiB fio reads (``direct=1``: every read reaches the daemon) of an
            already-warm file through one tierfs write-back mount: alone, while a
            checkpoint burst destages (fio starts when the writer's last close returns),
            and during the whole burst (fio starts with the writer).
``kv``      KV-cache blocks: N files of B KiB, each open + write + fsync + close
            (timed one by one), then read back in random order by another process
            (after ``drop_caches``); files/s and p50/p99 latency, both ways.

Targets: ``direct`` (local disk, no FUSE: the baseline), ``pyarrow`` (plain
``pyarrow.fs.S3FileSystem`` upload from this process, no FUSE: the store's own
speed), ``tierfs-wb-fast``, ``tierfs-wb-capacity`` (``[write] mode = "writeback"``,
``durability`` fast or capacity), ``tierfs-wb-fast-nodefer`` (``destage_defer = 0``: uploads
start at each close, beside the writer, instead of once it pauses), ``tierfs-wt`` (``mode =
"writethrough"``),
``rclone-sync`` (``rclone mount --vfs-cache-mode writes --vfs-write-back 0s``: close
uploads), ``rclone-wb`` (the same with ``--vfs-write-back 5s``, rclone's default:
upload 5 s after the last close), ``s3fs`` (s3fs-fuse with ``use_cache``). The S3
source is ``rclone serve s3`` on 127.0.0.1 over a fresh directory (the capacity tier
here is that directory, on the same disk as everything else).

Verification: the SHA-256 of every file written is known before the timed part; at the
end of each cell every object is read back through an independent pyarrow S3 client
(``direct``: the local file) and compared. Any mismatch, missing object, or an
ERROR/CRITICAL/Traceback line in a tierfs daemon log fails the run (exit status 1).

Usage: ``python benchmarks/writes.py [--size 8x64M] [--kv 2000x64K] [--targets a,b]
[--scenarios ckpt,reads,kv] [--out benchmarks/results/writes.json] [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets as T  # noqa: E402
from dataset import BUCKET, Dataset, DatasetSpec  # noqa: E402
from workloads import _run, parse_fio  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from fusefs.units import parse_size  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
WORK_PREFIX = "tierfs-bench-"
CHUNK = MiB  # the writer's write(2) size
WARM_FILE = "warm/emb.bin"

CKPT_TARGETS = ["direct", "pyarrow", "tierfs-wb-fast", "tierfs-wb-fast-nodefer",
                "tierfs-wb-capacity", "tierfs-wt", "rclone-sync", "rclone-wb", "s3fs"]
KV_TARGETS = ["direct", "tierfs-wb-fast", "rclone-wb"]
ALL_TARGETS = CKPT_TARGETS
SCENARIOS = ["ckpt", "reads", "kv"]
BAD_LOG = (" ERROR ", " CRITICAL ", "Traceback")


class VerificationError(Exception):
    """What reached the store is not what was written."""


# -- payloads -----------------------------------------------------------------------------
@dataclass
class Payload:
    """K files of ``size`` bytes: file i is a window of one random pool (distinct bytes per
    file, nothing compressible), with its SHA-256 computed before anything is timed."""

    names: list[str]
    size: int
    pool: bytes
    stride: int
    sha: list[str]

    @classmethod
    def make(cls, names: list[str], size: int, stride: int) -> Payload:
        pool = os.urandom(size + stride * len(names))
        p = cls(names, size, pool, stride, [])
        p.sha = [hashlib.sha256(p.data(i)).hexdigest() for i in range(len(names))]
        return p

    def data(self, i: int) -> memoryview:
        off = i * self.stride
        return memoryview(self.pool)[off:off + self.size]

    @property
    def total(self) -> int:
        return self.size * len(self.names)


def ckpt_payload(count: int, size: int) -> Payload:
    # 4099: the windows of two files never line up on a 4 KiB block.
    return Payload.make([f"shard-{i:03d}.pt" for i in range(count)], size, 4099)


def kv_payload(count: int, size: int, per_dir: int = 100) -> Payload:
    names = [f"d{i // per_dir:02d}/blk-{i:05d}.kv" for i in range(count)]
    return Payload.make(names, size, 4099)


# -- the store ----------------------------------------------------------------------------
def s3_client(server: T.S3Server):  # -> pyarrow.fs.S3FileSystem
    import pyarrow.fs as pafs

    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    return pafs.S3FileSystem(access_key=T.ACCESS_KEY, secret_key=T.SECRET_KEY,
                             region="us-east-1", endpoint_override=server.endpoint,
                             scheme="http", connect_timeout=2, request_timeout=30)


def store_complete(store_dir: Path, payload: Payload) -> bool:
    """Every file is in the store's directory at its full size (cheap: one stat each)."""
    for name in payload.names:
        try:
            if os.stat(store_dir / name).st_size != payload.size:
                return False
        except OSError:
            return False
    return True


def verify_store(server: T.S3Server, prefix: str, payload: Payload) -> list[str]:
    """Read every object back through S3 and compare; returns the problems (none: [])."""
    fs = s3_client(server)
    bad = []
    for i, name in enumerate(payload.names):
        key = f"{BUCKET}/{prefix}/{name}"
        try:
            h = hashlib.sha256()
            with fs.open_input_stream(key) as f:
                while True:
                    b = f.read(8 * MiB)
                    if not b:
                        break
                    h.update(b)
            if h.hexdigest() != payload.sha[i]:
                bad.append(f"{key}: content differs from what was written")
        except OSError as exc:
            bad.append(f"{key}: {exc}")
    return bad


def verify_local(root: Path, payload: Payload) -> list[str]:
    bad = []
    for i, name in enumerate(payload.names):
        try:
            h = hashlib.sha256()
            with open(root / name, "rb") as f:
                while b := f.read(8 * MiB):
                    h.update(b)
            if h.hexdigest() != payload.sha[i]:
                bad.append(f"{root / name}: content differs from what was written")
        except OSError as exc:
            bad.append(f"{root / name}: {exc}")
    return bad


def wait_durable(server: T.S3Server, store_dir: Path, prefix: str, payload: Payload,
                 t0: float, timeout: float) -> tuple[float, list[str]]:
    """Seconds from ``t0`` until the store holds every byte (sizes, then checksums)."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if store_complete(store_dir, payload):
            bad = verify_store(server, prefix, payload)
            if not bad:
                return now - t0, []
        if now > deadline:
            bad = verify_store(server, prefix, payload)
            return float("nan"), bad or ["not durable in time"]
        time.sleep(0.05)


class DurablePoller:
    """In a thread: notes when the store first holds every file at full size."""

    def __init__(self, store_dir: Path, payload: Payload, timeout: float) -> None:
        self.store_dir, self.payload, self.timeout = store_dir, payload, timeout
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if store_complete(self.store_dir, self.payload):
                self.at = time.monotonic()
                return
            time.sleep(0.05)

    def __enter__(self) -> DurablePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- writers ------------------------------------------------------------------------------
def write_files(root: Path, payload: Payload, *, fsync: bool = True) -> dict[str, Any]:
    """open + write (1 MiB calls) + fsync + close of each file, in order; each timed."""
    lat = []
    t0 = time.monotonic()
    for i, name in enumerate(payload.names):
        ts = time.monotonic()
        data = payload.data(i)
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            off = 0
            while off < len(data):
                off += os.write(fd, data[off:off + CHUNK])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        lat.append(time.monotonic() - ts)
    return {"t0": t0, "seconds": time.monotonic() - t0, "lat_s": lat}


def write_pyarrow(server: T.S3Server, prefix: str, payload: Payload) -> dict[str, Any]:
    fs = s3_client(server)
    lat = []
    t0 = time.monotonic()
    for i, name in enumerate(payload.names):
        ts = time.monotonic()
        data = payload.data(i)
        with fs.open_output_stream(f"{BUCKET}/{prefix}/{name}") as out:
            for off in range(0, len(data), CHUNK):
                out.write(data[off:off + CHUNK])
        lat.append(time.monotonic() - ts)
    return {"t0": t0, "seconds": time.monotonic() - t0, "lat_s": lat}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


# -- targets ------------------------------------------------------------------------------
class TierfsWrite(T.TierfsS3):
    """tierfs over the S3 server with a [write] section (and no dir markers: rclone
    serve s3 stores a marker as a file and then hides the directory)."""

    def __init__(self, name: str, mode: str, durability: str, extra: str = "") -> None:
        self.name, self.mode, self.durability, self.extra = name, mode, durability, extra

    def argv(self, ctx: T.RunContext, mnt: Path) -> list[str]:
        cache = ctx.fresh_dir(f"{self.name}-cache")
        cfg = ctx.fresh_dir("tierfs-config") / "tierfs.toml"
        cfg.write_text("\n".join([
            "[cache]", 'size = "16GiB"', f'dram = "{ctx.tierfs_dram}"',
            "[source]", f'access_key = "{T.ACCESS_KEY}"', f'secret_key = "{T.SECRET_KEY}"',
            'region = "us-east-1"', "dir_markers = false",
            "[write]", f'mode = "{self.mode}"', f'durability = "{self.durability}"',
            self.extra]) + "\n")
        return [sys.executable, "-m", "fusefs.cli", "mount", "-f", self.source_of(ctx),
                str(mnt), "--cache", str(cache), "--config", str(cfg),
                "--log", str(cache.parent / f"{cache.name}.log")]


class RcloneWrite(T.Rclone):
    def __init__(self, name: str, write_back: str) -> None:
        self.name, self.write_back = name, write_back

    def argv(self, ctx: T.RunContext, mnt: Path) -> list[str]:
        assert ctx.s3 is not None
        cache = ctx.fresh_dir(f"{self.name}-cache")
        return [T.find_rclone() or "rclone", "mount", f":s3:{BUCKET}", str(mnt),
                "--config", os.devnull, "--vfs-cache-mode", "writes",
                "--vfs-write-back", self.write_back, "--cache-dir", str(cache),
                "--s3-provider", "Other", "--s3-endpoint", f"http://{ctx.s3.endpoint}",
                "--s3-access-key-id", T.ACCESS_KEY, "--s3-secret-access-key", T.SECRET_KEY,
                "--s3-force-path-style=true", "--s3-region", "us-east-1"]


class S3fsWrite(T.S3fs):
    def argv(self, ctx: T.RunContext, mnt: Path) -> list[str]:
        assert ctx.s3 is not None
        cache = ctx.fresh_dir(f"{self.name}-cache")
        passwd = cache / "passwd"
        passwd.write_text(f"{T.ACCESS_KEY}:{T.SECRET_KEY}\n")
        passwd.chmod(0o600)
        opts = [f"url=http://{ctx.s3.endpoint}", "use_path_request_style",
                f"passwd_file={passwd}", f"use_cache={cache / 'data'}", "endpoint=us-east-1"]
        return ["s3fs", BUCKET, str(mnt), "-f", "-o", ",".join(opts)]


def make_target(name: str) -> T.Target | None:
    """A mountable target, or None for the two that need no mount (direct, pyarrow)."""
    return {
        "tierfs-wb-fast": lambda: TierfsWrite("tierfs-wb-fast", "writeback", "fast"),
        "tierfs-wb-fast-nodefer": lambda: TierfsWrite("tierfs-wb-fast-nodefer", "writeback",
                                                      "fast", "destage_defer = 0"),
        "tierfs-wb-capacity": lambda: TierfsWrite("tierfs-wb-capacity", "writeback", "capacity"),
        "tierfs-wt": lambda: TierfsWrite("tierfs-wt", "writethrough", "fast"),
        "rclone-sync": lambda: RcloneWrite("rclone-sync", "0s"),
        "rclone-wb": lambda: RcloneWrite("rclone-wb", "5s"),
        "s3fs": S3fsWrite,
    }.get(name, lambda: None)()


def daemon_log_problems(work: Path, name: str, seen: set[Path],
                        warnings: list[str] | None = None) -> list[str]:
    """ERROR/CRITICAL/Traceback lines in the logs of tierfs mounts not checked yet
    (WARNING lines go to ``warnings``: reported, not a failure)."""
    if not name.startswith("tierfs"):
        return []
    out = []
    for log in sorted(work.glob(f"{name}-*.log")):
        if log in seen:
            continue
        seen.add(log)
        for line in log.read_text(errors="replace").splitlines():
            if any(b in line for b in BAD_LOG):
                out.append(f"{log.name}: {line.strip()[:300]}")
            elif " WARNING " in line and warnings is not None:
                warnings.append(f"{log.name}: {line.strip()[:300]}")
    return out


# -- the harness --------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, ctx: T.RunContext,
                 out: Path, meta: dict[str, Any]) -> None:
        self.args, self.work, self.ctx, self.out, self.meta = args, work, ctx, out, meta
        self.store = ctx.dataset.root  # the bucket's directory behind the S3 server
        self.local = work / "local"
        self.results: dict[str, Any] = {"ckpt": [], "reads": [], "kv": []}
        self.failures: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.logs_seen: set[Path] = set()

    @property
    def server(self) -> T.S3Server:
        assert self.ctx.s3 is not None
        return self.ctx.s3

    def save(self) -> dict[str, Any]:
        done = "interrupted" not in self.meta.get("notes", [])
        doc = {**self.meta, "skipped": self.skipped, "failures": self.failures,
               "passed": not self.failures and done, **self.results}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.rename(self.out)
        return doc

    def missing(self, name: str) -> str | None:
        if name == "pyarrow":
            return None
        t = make_target(name)
        return t.missing() if t is not None else None

    @contextlib.contextmanager
    def root_of(self, name: str, scenario: str, payload: Payload) -> Iterator[Path | None]:
        """Where ``name`` writes its files for ``scenario`` (their directories made
        beforehand, in the store itself, so no target has to mkdir through its mount);
        None for pyarrow."""
        prefix = f"{scenario}/{name}"
        base = self.local if name == "direct" else self.store
        for d in {str(Path(n).parent) for n in payload.names}:
            make_dir(base / prefix / d)
        if name == "pyarrow":
            yield None
            return
        target = make_target(name)
        if target is None:
            yield base / prefix
            return
        with target.mounted(self.ctx) as mnt:
            yield mnt / prefix

    def finish_cell(self, name: str, cell: dict[str, Any]) -> None:
        warnings: list[str] = []
        problems = cell.get("verify_problems", []) + daemon_log_problems(
            self.work, name, self.logs_seen, warnings)
        cell["daemon_log_warnings"] = warnings
        cell["daemon_log_problems"] = [p for p in problems if p.startswith(name)]
        cell["verified"] = not problems and cell.get("error") is None
        for p in problems:
            self.failures.append(f"{cell['scenario']} {name}: {p}")
        if cell.get("error"):
            self.failures.append(f"{cell['scenario']} {name}: {cell['error']}")

    # -- ckpt ---------------------------------------------------------------------------
    def ckpt(self, name: str, payload: Payload) -> dict[str, Any]:
        prefix = f"ckpt/{name}"
        cell: dict[str, Any] = {"scenario": "ckpt", "target": name, "files": len(payload.names),
                                "file_MiB": payload.size / MiB, "error": None}
        os.sync()
        try:
            with self.root_of(name, "ckpt", payload) as root:
                if root is None:
                    w = write_pyarrow(self.server, prefix, payload)
                else:
                    w = write_files(root, payload)
                cell.update(writer_s=w["seconds"], writer_MiBps=payload.total / MiB / w["seconds"],
                            close_p50_s=pct(w["lat_s"], 50), close_max_s=max(w["lat_s"]))
                if name == "direct":
                    cell["durable_s"] = w["seconds"]  # fsync returned: on the disk
                    cell["verify_problems"] = verify_local(root, payload)
                else:
                    dur, bad = wait_durable(self.server, self.store / prefix, prefix, payload,
                                            w["t0"], self.args.durable_timeout)
                    cell["durable_s"], cell["verify_problems"] = dur, bad
                if root is not None and name.startswith("tierfs"):
                    cell["pending_after"] = tierfs_pending(root)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            cell["error"] = f"{type(exc).__name__}: {exc}"
        self.finish_cell(name, cell)
        return cell

    # -- reads during destage -------------------------------------------------------------
    def reads(self, payload: Payload, window: float, burst_window: float) -> dict[str, Any]:
        name = "tierfs-wb-fast"
        cell: dict[str, Any] = {"scenario": "reads", "target": name, "error": None,
                                "fio_window_s": window, "burst_window_s": burst_window,
                                "warm_file_MiB": self.args.warm_size / MiB}
        os.sync()
        phases = {ph: f"reads/{name}-{ph}" for ph in ("destage", "burst")}
        try:
            with self.root_of(name, "reads", payload) as root:
                assert root is not None
                mnt = root.parent.parent
                # Warm-up (not measured): the whole file twice, then random reads as long
                # as one measured window; the daemon's tiers hold it from then on.
                for _ in range(2):
                    fio_read(mnt, "read", "1M", None, self.work)
                cell["warmup"] = fio_read(mnt, "randread", "4k", window, self.work)
                cell["idle"] = fio_read(mnt, "randread", "4k", window, self.work)
                for phase, prefix in phases.items():
                    d = self.store / prefix
                    proot = mnt / prefix
                    run_for = window if phase == "destage" else burst_window
                    with DurablePoller(d, payload, self.args.durable_timeout) as poll:
                        if phase == "burst":
                            fio = FioBackground(mnt, run_for, self.work)
                            w = write_files(proot, payload)
                            res = fio.result()
                            t_fio = fio.started
                        else:
                            w = write_files(proot, payload)
                            t_fio = time.monotonic()
                            res = fio_read(mnt, "randread", "4k", run_for, self.work)
                        fio_end = time.monotonic()
                        dur, bad = wait_durable(self.server, d, prefix, payload, w["t0"],
                                                self.args.durable_timeout)
                    at = poll.at if poll.at is not None else fio_end
                    res["writer_s"] = w["seconds"]
                    # wait_durable starts after fio: the poller's time is the accurate one.
                    res["durable_s"] = (poll.at - w["t0"]) if poll.at is not None and not bad \
                        else dur
                    # The share of fio's window during which the store did not hold the
                    # burst yet (1.0: every read ran while uploads were pending).
                    res["overlap"] = max(0.0, min(1.0, (at - t_fio) / max(fio_end - t_fio,
                                                                            1e-9)))
                    res["verify_problems"] = bad
                    cell[phase] = res
                    cell.setdefault("verify_problems", []).extend(bad)
                cell["idle_after"] = fio_read(mnt, "randread", "4k", window, self.work)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            cell["error"] = f"{type(exc).__name__}: {exc}"
        self.finish_cell(name, cell)
        return cell

    # -- kv ---------------------------------------------------------------------------------
    def kv(self, name: str, payload: Payload) -> dict[str, Any]:
        prefix = f"kv/{name}"
        cell: dict[str, Any] = {"scenario": "kv", "target": name, "files": len(payload.names),
                                "file_KiB": payload.size / KiB, "error": None}
        os.sync()
        try:
            with self.root_of(name, "kv", payload) as root:
                assert root is not None
                w = write_files(root, payload)
                lat = w["lat_s"]
                cell.update(write_s=w["seconds"], write_files_per_s=len(lat) / w["seconds"],
                            write_p50_ms=1e3 * pct(lat, 50), write_p99_ms=1e3 * pct(lat, 99))
                cell["dropped_caches"] = drop_caches()
                r = read_back(root, payload, self.work)
                cell.update(read_s=r["seconds"], read_files_per_s=r["files_per_s"],
                            read_p50_ms=r["p50_ms"], read_p99_ms=r["p99_ms"])
                problems = [f"read back {p}" for p in r["problems"]]
                if name == "direct":
                    cell["durable_s"] = w["seconds"]
                    problems += verify_local(root, payload)
                else:
                    dur, bad = wait_durable(self.server, self.store / prefix, prefix, payload,
                                            w["t0"], self.args.durable_timeout)
                    cell["durable_s"] = dur
                    problems += bad
                if name.startswith("tierfs"):
                    cell["pending_after"] = tierfs_pending(root)
                cell["verify_problems"] = problems
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            cell["error"] = f"{type(exc).__name__}: {exc}"
        self.finish_cell(name, cell)
        return cell


def make_dir(path: Path) -> None:
    """A directory with one empty ``.keep`` file: S3 lists no empty directory, and a
    target must not have to mkdir through its mount (s3fs writes a marker object that
    rclone serve s3 stores as a file)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".keep").touch()


def tierfs_pending(path: Path) -> int | None:
    """The mount's write-back queue length (`tierfs stats --json`), None if not known."""
    mnt = path
    while not T.is_mounted(mnt) and mnt.parent != mnt:
        mnt = mnt.parent
    res = subprocess.run([sys.executable, "-m", "fusefs.cli", "stats", str(mnt), "--json"],
                         capture_output=True, text=True, timeout=60, cwd=HERE.parent)
    if res.returncode != 0:
        return None
    wb = json.loads(res.stdout).get("writeback") or {}
    return wb.get("pending_files", 0)


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


READER = r"""
import hashlib, json, os, random, sys, time
root, names = sys.argv[1], json.load(sys.stdin)
order = list(range(len(names)))
random.Random(7).shuffle(order)
lat, sha = [], {}
t0 = time.monotonic()
for i in order:
    ts = time.monotonic()
    fd = os.open(os.path.join(root, names[i]), os.O_RDONLY)
    try:
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    lat.append(time.monotonic() - ts)
    sha[names[i]] = hashlib.sha256(b"".join(chunks)).hexdigest()
print(json.dumps({"seconds": time.monotonic() - t0, "lat": lat, "sha": sha}))
"""


def read_back(root: Path, payload: Payload, work: Path) -> dict[str, Any]:
    """Another process opens, reads and closes every file in random order."""
    proc = subprocess.run([sys.executable, "-c", READER, str(root)], capture_output=True,
                          input=json.dumps(payload.names).encode(), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"reader exited {proc.returncode}: {proc.stderr.decode()[-600:]}")
    doc = json.loads(proc.stdout)
    problems = [n for i, n in enumerate(payload.names) if doc["sha"].get(n) != payload.sha[i]]
    lat = doc["lat"]
    return {"seconds": doc["seconds"], "files_per_s": len(lat) / doc["seconds"],
            "p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99),
            "problems": [f"{n}: differs" for n in problems[:20]]}


# -- fio ----------------------------------------------------------------------------------
def fio_jobfile(mnt: Path, rw: str, bs: str, runtime: float | None) -> str:
    lines = ["[global]", f"filename={mnt / WARM_FILE}", "ioengine=psync", "direct=1",
             "randrepeat=1", "randseed=1234", "norandommap", "clat_percentiles=1",
             "percentile_list=50:99:99.9", f"rw={rw}", f"bs={bs}"]
    if runtime is not None:
        lines += ["time_based", f"runtime={runtime:g}"]
    return "\n".join(lines + ["[job]"]) + "\n"


def fio_read(mnt: Path, rw: str, bs: str, runtime: float | None, work: Path) -> dict[str, Any]:
    jobfile = work / f"reads-{rw}.fio"
    jobfile.write_text(fio_jobfile(mnt, rw, bs, runtime))
    res = _run(["fio", "--output-format=json", str(jobfile)], timeout=(runtime or 60) + 120,
               preexec=None)
    if res.returncode != 0:
        raise RuntimeError(f"fio exited {res.returncode}: {res.stderr.decode()[-600:]}")
    return parse_fio(res.stdout.decode(errors="replace"))["job"]


class FioBackground:
    """fio in a thread (its own session; killed with the run on Ctrl-C)."""

    def __init__(self, mnt: Path, runtime: float, work: Path) -> None:
        self._out: dict[str, Any] = {}
        self.started = time.monotonic()

        def run() -> None:
            try:
                self._out["res"] = fio_read(mnt, "randread", "4k", runtime, work)
            except BaseException as exc:  # noqa: BLE001 - re-raised in result()
                self._out["exc"] = exc
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> dict[str, Any]:
        self._thread.join()
        if "exc" in self._out:
            raise self._out["exc"]
        return self._out["res"]


# -- tables -------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b != b or a != a or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def num(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return fmt.format(v)


def ckpt_table(cells: list[dict[str, Any]]) -> str:
    by = {c["target"]: c for c in cells if c.get("error") is None}
    d, rc = by.get("direct", {}), by.get("rclone-wb", {})
    pa = by.get("pyarrow", {})
    head = ("| target | writer MiB/s ↑ | writer s ↓ | durable s ↓ | writer vs direct | "
            "durable vs pyarrow upload | writer vs rclone-wb | durable vs rclone-wb | verified |")
    lines = [head, "|" + "---|" * 9]
    for c in cells:
        ok = "yes" if c.get("verified") else "**NO**"
        if c.get("error"):
            lines.append(f"| {c['target']} | error: {c['error'][:80]} | | | | | | | {ok} |")
            continue
        lines.append(
            f"| {c['target']} | {num(c['writer_MiBps'], '{:.0f}')} "
            f"| {num(c['writer_s'], '{:.2f}')} "
            f"| {num(c['durable_s'], '{:.2f}')} | {ratio(c['writer_s'], d.get('writer_s'))} "
            f"| {ratio(c['durable_s'], pa.get('durable_s'))} "
            f"| {ratio(c['writer_s'], rc.get('writer_s'))} "
            f"| {ratio(c['durable_s'], rc.get('durable_s'))} | {ok} |")
    return "\n".join(lines)


def reads_table(cell: dict[str, Any]) -> str:
    if cell.get("error"):
        return f"reads: error: {cell['error']}"
    idle, after = cell["idle"], cell.get("idle_after") or {}
    lines = ["| random 4 KiB reads (tierfs-wb-fast) | IOPS ↑ | p50 µs ↓ | p99 µs ↓ | "
             "p99 vs alone (before) | p99 vs alone (after) | fio window s "
             "| window share with uploads pending |",
             "|" + "---|" * 8]
    for phase, what in (("idle", "alone (before)"), ("destage", "while the burst destages"),
                        ("burst", "during the whole burst (write + destage)"),
                        ("idle_after", "alone (after)")):
        r = cell.get(phase)
        if not r:
            continue
        share = f"{100 * r['overlap']:.0f}%" if "overlap" in r else "-"
        lines.append(f"| {what} | {num(r['iops'], '{:.0f}')} | {num(r['p50_us'], '{:.0f}')} "
                     f"| {num(r['p99_us'], '{:.0f}')} | {ratio(r['p99_us'], idle['p99_us'])} "
                     f"| {ratio(r['p99_us'], after.get('p99_us'))} "
                     f"| {num(r['runtime_s'], '{:.1f}')} | {share} |")
    return "\n".join(lines)


def kv_table(cells: list[dict[str, Any]]) -> str:
    by = {c["target"]: c for c in cells if c.get("error") is None}
    d, rc = by.get("direct", {}), by.get("rclone-wb", {})
    lines = ["| target | write files/s ↑ | write p99 ms ↓ | read files/s ↑ | read p99 ms ↓ "
             "| durable s ↓ | write files/s vs direct | vs rclone-wb | read p99 vs direct "
             "| vs rclone-wb | verified |", "|" + "---|" * 11]
    for c in cells:
        ok = "yes" if c.get("verified") else "**NO**"
        if c.get("error"):
            lines.append(f"| {c['target']} | error: {c['error'][:80]} |" + " |" * 9 + f" {ok} |")
            continue
        lines.append(
            f"| {c['target']} | {num(c['write_files_per_s'], '{:.0f}')} "
            f"| {num(c['write_p99_ms'], '{:.2f}')} | {num(c['read_files_per_s'], '{:.0f}')} "
            f"| {num(c['read_p99_ms'], '{:.2f}')} | {num(c['durable_s'], '{:.2f}')} "
            f"| {ratio(c['write_files_per_s'], d.get('write_files_per_s'))} "
            f"| {ratio(c['write_files_per_s'], rc.get('write_files_per_s'))} "
            f"| {ratio(c['read_p99_ms'], d.get('read_p99_ms'))} "
            f"| {ratio(c['read_p99_ms'], rc.get('read_p99_ms'))} | {ok} |")
    return "\n".join(lines)


def tables(doc: dict[str, Any]) -> str:
    out = []
    if doc.get("ckpt"):
        c = doc["ckpt"][0]
        out += [f"Checkpoint burst: {c['files']} x {c['file_MiB']:g} MiB, write + fsync + "
                "close each\n",
                ckpt_table(doc["ckpt"]), ""]
    for c in doc.get("reads", []):
        out += ["Random 4 KiB reads of a warm file during a checkpoint destage\n",
                reads_table(c), ""]
    if doc.get("kv"):
        c = doc["kv"][0]
        out += [f"KV-cache blocks: {c['files']} x {c['file_KiB']:g} KiB, fsync each; read back by "
                "another process\n", kv_table(doc["kv"]), ""]
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------
def count_x_size(text: str) -> tuple[int, int]:
    try:
        n, s = text.lower().split("x", 1)
        return int(n), parse_size(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected COUNTxSIZE, e.g. 8x64M") from exc


def csv_list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=count_x_size, default=None,
                   help="checkpoint burst, COUNTxSIZE (default 8x64M; --quick 2x8M)")
    p.add_argument("--kv", type=count_x_size, default=None,
                   help="KV-cache blocks, COUNTxSIZE (default 2000x64K; --quick 100x64K)")
    p.add_argument("--warm-size", type=parse_size, default=None,
                   help="the warm file the reads scenario reads (default 128M; --quick 16M)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   type=lambda s: csv_list(s, ALL_TARGETS, "target"))
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   type=lambda s: csv_list(s, SCENARIOS, "scenario"))
    p.add_argument("--durable-timeout", type=float, default=600.0,
                   help="seconds a target may take to make a burst durable on the store")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="print the tables of an earlier run's JSON and exit")
    p.add_argument("--out", default=None,
                   help="JSON (default benchmarks/results/writes.json; --quick: writes-quick.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        print(tables(doc))
        return 0 if doc.get("passed") else 1
    args.size = args.size or ((2, 8 * MiB) if args.quick else (8, 64 * MiB))
    args.kv = args.kv or ((100, 64 * KiB) if args.quick else (2000, 64 * KiB))
    args.warm_size = args.warm_size or (16 * MiB if args.quick else 128 * MiB)
    out = Path(args.out or HERE / "results" / ("writes-quick.json" if args.quick
                                               else "writes.json"))
    started = time.monotonic()
    if shutil.which("fio") is None:
        print("fio is not installed (apt-get install fio)", file=sys.stderr)
        return 2

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)

    for stale in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        for m in T.cleanup_stale(stale):
            print(f"unmounted a stale mount: {m}")
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX + "writes-"))
    ds = Dataset(DatasetSpec(0, 0, 0, 0), work / "store")
    ds.root.mkdir(parents=True)
    ctx = T.RunContext(dataset=ds, work=work)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "fio": subprocess.run(["fio", "--version"], capture_output=True,
                                          text=True).stdout.strip()},
        "ckpt_size": {"files": args.size[0], "file_bytes": args.size[1]},
        "kv_size": {"files": args.kv[0], "file_bytes": args.kv[1]},
        "notes": ["store = rclone serve s3 on 127.0.0.1 (--dir-cache-time 2s) over a "
                  "directory on the same disk as the local baseline and every cache directory"],
    }
    bench = Bench(args, work, ctx, out, meta)
    bench.meta = meta
    run_targets = []
    for name in args.targets:
        why = bench.missing(name)
        if why:
            print(f"skip {name}: {why}")
            bench.skipped.append({"target": name, "reason": why})
        else:
            run_targets.append(name)
    interrupted = False
    try:
        with contextlib.ExitStack() as stack:
            ck = ckpt_payload(*args.size)
            kvp = kv_payload(*args.kv)
            # Every directory any cell writes to exists before the server starts (with a
            # 2 s directory cache it might not see one made later for a while).
            for sc, names, payload in (("ckpt", run_targets, ck), ("kv", run_targets, kvp),
                                       ("reads", ["tierfs-wb-fast"], ck)):
                for name in names:
                    for d in {str(Path(n).parent) for n in payload.names}:
                        make_dir((bench.local if name == "direct" else ds.root) / sc / name / d)
            for ph in ("destage", "burst"):
                make_dir(ds.root / "reads" / f"tierfs-wb-fast-{ph}")
            warm = ds.root / WARM_FILE
            warm.parent.mkdir(parents=True, exist_ok=True)
            with open(warm, "wb") as f:
                for _ in range(0, args.warm_size, 4 * MiB):
                    f.write(os.urandom(4 * MiB))
            ctx.s3 = stack.enter_context(T.S3Server(ds.s3root, work / "rclone-serve.log",
                                                    dir_cache_time="2s"))
            print(f"S3 server (rclone serve s3) on {ctx.s3.endpoint}; work dir {work}")
            print(f"payloads: checkpoint {args.size[0]} x {args.size[1] / MiB:g} MiB, "
                  f"kv {args.kv[0]} x {args.kv[1] / KiB:g} KiB (random bytes, hashed)")
            if "ckpt" in args.scenarios:
                print("== checkpoint burst")
                for name in run_targets:
                    c = bench.ckpt(name, ck)
                    bench.results["ckpt"].append(c)
                    print(f"  {name:20s} writer {num(c.get('writer_s'), '{:.2f}')} s "
                          f"({num(c.get('writer_MiBps'), '{:.0f}')} MiB/s), durable "
                          f"{num(c.get('durable_s'), '{:.2f}')} s, verified {c['verified']}"
                          + (f"  ERROR {c['error']}" if c.get("error") else ""))
                    bench.save()
            if "reads" in args.scenarios and "tierfs-wb-fast" in run_targets:
                print("== random reads during a destage (tierfs-wb-fast)")
                ref = {c["target"]: c for c in bench.results["ckpt"] if c.get("error") is None}
                wb = ref.get("tierfs-wb-fast")
                lag = (wb["durable_s"] - wb["writer_s"]) if wb else 5.0
                # fio takes whole seconds of runtime.
                window = int(min(30, max(3, round(0.9 * lag if lag == lag else 5.0))))
                burst = int(min(60, max(3, round(wb["durable_s"] if wb else 10.0))))
                c = bench.reads(ck, window, burst)
                bench.results["reads"].append(c)
                print(reads_table(c) if not c.get("error") else f"  ERROR {c['error']}")
                bench.save()
            if "kv" in args.scenarios:
                print("== KV-cache blocks")
                for name in [t for t in run_targets if t in KV_TARGETS]:
                    c = bench.kv(name, kvp)
                    bench.results["kv"].append(c)
                    print(f"  {name:20s} write {num(c.get('write_files_per_s'), '{:.0f}')} "
                          f"files/s p99 {num(c.get('write_p99_ms'), '{:.2f}')} ms; read "
                          f"{num(c.get('read_files_per_s'), '{:.0f}')} files/s p99 "
                          f"{num(c.get('read_p99_ms'), '{:.2f}')} ms; durable "
                          f"{num(c.get('durable_s'), '{:.2f}')} s; verified {c['verified']}"
                          + (f"  ERROR {c['error']}" if c.get("error") else ""))
                    bench.save()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: unmounted everything; partial results kept", file=sys.stderr)
        meta["notes"].append("interrupted")
    finally:
        for m in T.cleanup_stale(work):
            print(f"warning: had to force-unmount {m}", file=sys.stderr)
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        bench.save()
        shutil.rmtree(ds.s3root, ignore_errors=True)
        shutil.rmtree(work / "local", ignore_errors=True)
        print(f"logs: {work}")
    print()
    print(tables(bench.save()))
    for s in bench.skipped:
        print(f"skipped {s['target']}: {s['reason']}")
    for f in bench.failures:
        print(f"FAILED: {f}")
    print(f"results: {out}  ({meta['elapsed_s']:.0f} s)")
    if bench.failures:
        print("VERIFICATION FAILED", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
