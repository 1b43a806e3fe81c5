"""The `tierfs` command: mount, umount, stats; and `mount.tierfs` for fstab.

User mistakes end with one line on stderr and a documented exit code (see
`fusefs.mount`), never a traceback. `tierfs mount` returns once the mount is
live: unless ``-f``, it forks a daemon and waits for it to report success or
the reason it failed.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import trio

from . import __version__, credentials
from .config import Config, ConfigError, load_config, with_overrides
from .control import ControlError, call
from .exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, MountError
from .pathstats import SORT_KEYS, TIERS
from .safefiles import open_private_log
from .units import format_size

log = logging.getLogger("fusefs")

# `tierfs` exit status when its output pipe was closed (as a process killed by SIGPIPE).
EXIT_PIPE = 141

# -o options accepted by `tierfs mount` and mount.tierfs (fstab).
MOUNT_OPTIONS = {
    "allow_other": "let other users access the mount",
    "cache=DIR": "fast-tier directory",
    "config=FILE": "TOML configuration file",
    "immutable": "the source never changes: keep kernel caches across opens",
    "log=FILE": "daemon log file",
    "noxattr": "no extended attributes: the kernel stops asking for them (as [mount] "
               "xattrs = \"off\")",
    "snapshot=FILE": "object stores: listing snapshot file, loaded at mount and saved at "
                     "unmount (as [source] listing_snapshot)",
    "debug": "log at DEBUG level",
    # accepted for fstab compatibility; no effect
    "rw": "(accepted, default)",
    "defaults": "(accepted)",
    "auto": "(accepted)",
    "noauto": "(accepted)",
    "user": "(accepted)",
    "nouser": "(accepted)",
    "_netdev": "(accepted)",
    "nofail": "(accepted)",
    "dev": "(accepted)",
    "suid": "(accepted)",
    "exec": "(accepted)",
    "x-*": "(ignored: options for other programs, e.g. x-systemd.automount)",
    "comment=TEXT": "(ignored)",
}


class UsageError(Exception):
    pass


def build_parser(*, replay: bool = True) -> argparse.ArgumentParser:
    """The `tierfs` argument parser; ``replay=False`` leaves out the options of `replay` and
    `report` (they import pyarrow, which the other commands do not need)."""
    p = argparse.ArgumentParser(
        prog="tierfs",
        description="Serve a dataset (local directory or object store) through DRAM and "
                    "NVMe tiers as a FUSE mount.")
    p.add_argument("--version", action="version", version=f"tierfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser("mount", help="mount a dataset",
                       description="Mount SOURCE (a directory, file:// or any URI "
                                   "pyarrow.fs understands, e.g. s3://bucket/prefix) at "
                                   "MOUNTPOINT.")
    m.add_argument("source", metavar="SOURCE",
                   help="the dataset: a directory, file:///path, s3://bucket/prefix, "
                        "gs://bucket/prefix (query parameters as pyarrow.fs takes them)")
    m.add_argument("mountpoint", metavar="MOUNTPOINT",
                   help="an existing directory to mount on (an empty one: what a "
                        "non-empty one holds is hidden while mounted)")
    m.add_argument("--cache", metavar="DIR", help="fast-tier directory (created 0700)")
    m.add_argument("--config", metavar="FILE", help="TOML configuration (tierfs.toml(5))")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground and log to stderr")
    m.add_argument("-o", dest="options", metavar="OPTS", action="append", default=[],
                   help="comma-separated mount options: " + ", ".join(
                       k for k, v in MOUNT_OPTIONS.items() if not v.startswith("(")))
    m.add_argument("--log", metavar="FILE", help="daemon log file (default: in the cache dir)")
    m.add_argument("--debug", action="store_true", help="log at DEBUG level")

    u = sub.add_parser("umount", help="unmount and wait for the daemon to finish",
                       description="Unmount MOUNTPOINT and wait for its daemon to finish: it "
                                   "uploads the writes still pending for an object store "
                                   "and saves the listing snapshot first. Works on a mount "
                                   "whose daemon died too.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tierfs mount is")
    u.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the daemon (default 120; a daemon still "
                        "uploading pending writes goes on after it)")

    details = {
        "warm": " The daemon copies many files at once; a terminal shows progress. Files "
                "a [[rule]] with cache = false matches are not copied: warm says so on "
                "stderr, and exits 1 if that left nothing to warm. The sizes printed are "
                "what the fast tier holds afterwards, not what passed through it.",
        "evict": " Pinned files stay (their pin too) and are counted apart; --unpin "
                 "removes the pins at or below PATH first and drops those files as well. "
                 "The kernel's cached pages of every file under PATH are dropped before "
                 "evict answers, so the next read reaches the mount.",
        "pin": " Prints the bytes the fast tier holds pinned afterwards.",
        "unpin": " Their bytes stay cached until the policy evicts them.",
    }
    for name, text in (("warm", "copy files into the fast tier (resumable)"),
                       ("evict", "drop files from the caches"),
                       ("pin", "keep files on the fast tier, warmed now and at every mount"),
                       ("unpin", "let pinned files be evicted again")):
        c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] +
                           ". PATHs are files or directories inside a tierfs mount." +
                           details[name])
        c.add_argument("paths", metavar="PATH", nargs="+",
                       help="a file or directory inside a tierfs mount (directories: every "
                            "file below)")
        if name == "warm":
            c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
            c.add_argument("-j", "--jobs", type=int, metavar="N",
                           help="files copied at once (default 16; 1 to 256)")
        if name == "evict":
            c.add_argument("--unpin", action="store_true",
                           help="unpin PATH (and pins below it) first, then drop it all")

    replay_help = "replay an access trace through a policy, beside Belady"
    report_help = "write an HTML page with charts from an access trace"
    if replay:
        from .replay import _build_parser as replay_parser

        sub.add_parser("replay", help=replay_help, description=replay_parser().description,
                       add_help=False, parents=[replay_parser()])
        from .report import _build_parser as report_parser

        sub.add_parser("report", help=report_help, description=report_parser().description,
                       add_help=False, parents=[report_parser()])
    else:  # their options need pyarrow: only for `tierfs replay`/`report` (and the man page)
        sub.add_parser("replay", help=replay_help)
        sub.add_parser("report", help=report_help)

    n = sub.add_parser("snapshot", help="save a mount's cached directory listings now",
                       description="Save the cached directory listings of an object-store "
                                   "mount to FILE (default: its listing_snapshot), as the "
                                   "mount does at unmount.")
    n.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tierfs mount is")
    n.add_argument("file", metavar="FILE", nargs="?",
                   help="where to write (default: [source] listing_snapshot)")

    k = sub.add_parser(
        "fsck", help="check (and repair) a fast-tier cache",
        description="Check a cache directory offline (unmounted; with --repair, drop what "
                    "is damaged: cached bytes are refetched on use), or a live mount "
                    "read-only. Exit codes as fsck(8): 0 clean, 1 errors corrected, "
                    "4 errors left, 8 could not run.")
    k.add_argument("target", metavar="CACHE_DIR|MOUNTPOINT",
                   help="a cache directory (offline) or a tierfs mount point (live)")
    k.add_argument("--repair", action="store_true", help="fix what can be fixed (offline)")
    k.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("stats", help="show a mount's counters",
                       description="Print what a live mount has done: bytes served by tier "
                                   "and access class, hit ratios, read amplification "
                                   "(source bytes over bytes served) with the bytes each "
                                   "kind of speculative fetch fetched, used and wasted, "
                                   "errors answered, pending "
                                   "uploads, counters, latency percentiles and each tier's "
                                   "occupancy (--json: the same as one JSON object). "
                                   "--by-path: the files read most, and totals per rule. "
                                   "--watch: a live view of rates, refreshed every "
                                   "--interval seconds until Ctrl-C (exit 0) or until the "
                                   "mount goes away (one line, exit 1); when stdout is not "
                                   "a terminal it prints one plain-text block per refresh.")
    s.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tierfs mount is")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--by-path", action="store_true",
                   help="the files with the most bytes read (--top of them): class, "
                        "serving tiers, hit ratio, opens the kernel cached, errors; then "
                        "totals per [[rule]]. The daemon keeps figures for "
                        "[stats] path_limit files (4096), the heaviest")
    s.add_argument("-n", "--top", metavar="N", type=int, default=20,
                   help="--by-path: how many files (default 20)")
    s.add_argument("--sort", choices=SORT_KEYS, default="bytes",
                   help="order of --by-path: bytes read (default), misses (bytes from the "
                        "capacity tier), requests, errors or opens")
    s.add_argument("--watch", action="store_true",
                   help="live view of rates (reads/s, MiB/s per tier and class, hit "
                        "ratios, errors, occupancy, busiest files) until Ctrl-C")
    s.add_argument("--interval", metavar="SECONDS", type=float, default=2.0,
                   help="--watch: seconds between refreshes (default 2)")
    s.add_argument("--count", metavar="N", type=int,
                   help="--watch: stop after N refreshes (default: until Ctrl-C)")
    return p


def parse_mount_options(opts: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in opts:
        for item in group.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            if key.startswith("x-") or key == "comment":
                continue  # fstab conventions for other programs (systemd's x-systemd.*)
            spec = f"{key}=FILE" if key in ("config", "log", "snapshot") else \
                f"{key}=DIR" if key == "cache" else key
            if spec not in MOUNT_OPTIONS:
                allowed = ", ".join(k for k, v in MOUNT_OPTIONS.items() if not v.startswith("("))
                raise UsageError(f"unknown mount option '{item}'; allowed: {allowed}")
            if ("=" in spec) != bool(eq):
                raise UsageError(f"mount option '{key}' " +
                                 ("needs a value" if "=" in spec else "takes no value"))
            out[key] = value if eq else True
    return out


class _PrivateFileHandler(logging.FileHandler):
    """A log file created 0600 (it names paths and errors of the mount)."""

    def _open(self):  # type: ignore[no-untyped-def]
        return os.fdopen(open_private_log(self.baseFilename), "a", encoding=self.encoding,
                         errors=self.errors)


def _setup_logging(log_file: str | None, debug: bool) -> None:
    handler: logging.Handler
    if log_file:
        handler = _PrivateFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(credentials.RedactFilter())  # on the handler: every logger's records
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def _source_with_credentials(source: str) -> str:
    """``source`` with its credentials, which this process's command line no longer shows.

    A URI holding ``user:secret@`` re-executes this process (same pid, so a caller
    waiting for it is not fooled) with the bare URI in its arguments and the
    credentials in the environment (`credentials.ENV`, private to the user); the new
    image takes them back out of its environment, so no child inherits them.
    """
    hidden = os.environ.get(credentials.ENV)
    if hidden is not None:
        credentials.scrub_environ()
        return credentials.merge(source, hidden)
    bare, userinfo = credentials.split(source)
    if userinfo is None:
        if credentials.redact(source) != source:  # user:se/cret@: the URI ends at the '/'
            raise UsageError(f"source {credentials.redact(source)}: a '/' in the credentials "
                             f"must be written %2F (or give them in the environment: "
                             f"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
        return source
    argv = list(sys.orig_argv)
    if source not in argv[1:]:
        if any(userinfo in a for a in argv):
            raise UsageError("the source URI's credentials would stay visible in this "
                             "process's command line: give them in the environment "
                             "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or in the config "
                             "([source] access_key, secret_key)")
        return source  # called with arguments of its own: ps shows none of them
    argv = [sys.executable] + [bare if a == source else a for a in argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {**os.environ, credentials.ENV: userinfo})
    raise AssertionError("unreachable")  # pragma: no cover


def cmd_mount(args: argparse.Namespace) -> int:
    # Imported here: the engine, pyfuse3 and pyarrow are for mounting, and the other
    # commands (warm, stats...) start faster without them.
    from .mount import check_fuse, check_mountpoint, default_cache_dir, prepare_cache_dir
    from .policies import get_policy

    source = _source_with_credentials(args.source)
    opts = parse_mount_options(args.options)
    config_file = args.config or opts.get("config")
    cfg: Config = load_config(config_file)
    try:
        get_policy(cfg.policy.name)
    except LookupError as exc:
        raise ConfigError(f"{config_file or 'config'}: policy.name: {exc}") from None
    if opts.get("allow_other"):
        cfg = with_overrides(cfg, "mount", allow_other=True)
    if opts.get("immutable"):
        cfg = with_overrides(cfg, "mount", consistency="immutable")
    if opts.get("noxattr"):
        cfg = with_overrides(cfg, "mount", xattrs="off")
    if "://" not in source:
        if not os.path.isdir(source):
            what = "does not exist" if not os.path.exists(source) else "is not a directory"
            raise MountError(f"source {source} {what}", 4)
        source = os.path.abspath(source)
    if opts.get("snapshot"):
        cfg = with_overrides(cfg, "source", listing_snapshot=opts["snapshot"])
    if cfg.stats.trace:  # the daemon runs in "/": make paths absolute now
        cfg = with_overrides(cfg, "stats", trace=os.path.abspath(cfg.stats.trace))
    if cfg.source.listing_snapshot:
        cfg = with_overrides(cfg, "source",
                             listing_snapshot=os.path.abspath(cfg.source.listing_snapshot))
    warnings: list[str] = []  # for the log too, once it is open
    mountpoint = check_mountpoint(args.mountpoint, warnings)
    check_fuse()
    cache_dir = prepare_cache_dir(args.cache or opts.get("cache") or cfg.cache.dir
                                  or default_cache_dir(mountpoint))
    cfg = with_overrides(cfg, "cache", dir=cache_dir)
    debug = args.debug or bool(opts.get("debug"))
    log_file = args.log or opts.get("log")
    if not args.foreground:
        log_file = log_file or os.path.join(cache_dir, "tierfs.log")
    if log_file:
        # Opened here too, so that a log the daemon could not write is reported
        # on the terminal, not lost with the daemon's stderr.
        try:
            os.close(open_private_log(log_file))
        except OSError as exc:
            raise MountError(f"log file {log_file}: {exc.strerror}", EXIT_USAGE) from None
    if args.foreground:
        from .mount import serve

        _setup_logging(log_file, debug)
        for text in warnings:
            log.warning("%s", text)
        trio.run(serve, source, mountpoint, cfg)
        return 0
    return _daemonize(source, mountpoint, cfg, log_file, debug, warnings)


def _daemonize(source: str, mountpoint: str, cfg: Config, log_file: str | None,
               debug: bool, warnings: Sequence[str] = ()) -> int:
    """Fork a daemon; return once it reports that the mount is live (or why not)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode(errors="replace")
        if msg.startswith("ok"):
            return 0
        code, _, text = msg.partition(" ")
        text = credentials.redact(text.strip())
        print(f"tierfs: {text or 'the daemon exited before mounting'}", file=sys.stderr)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        return int(code) if code.isdigit() else EXIT_FAILURE
    # child
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)  # the grandchild is re-parented: no zombie for the caller
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready() -> None:
        nonlocal wfd
        if wfd >= 0:
            os.write(wfd, b"ok\n")
            os.close(wfd)
            wfd = -1

    code = 0
    try:
        # Inside the try: whatever fails here reaches the waiting parent's terminal.
        from .mount import serve

        _setup_logging(log_file, debug)
        for text in warnings:
            log.warning("%s", text)
        trio.run(functools.partial(serve, source, mountpoint, cfg, ready=ready))
    except (MountError, ConfigError) as exc:
        log.error("%s", exc)
        code = exc.code if isinstance(exc, MountError) else EXIT_CONFIG
        if wfd >= 0:
            os.write(wfd, credentials.redact(f"{code} {exc}").encode())
    except BaseException as exc:  # report, then exit non-zero
        log.exception("daemon failed")
        code = EXIT_FAILURE
        if wfd >= 0:
            os.write(wfd, credentials.redact(f"{EXIT_FAILURE} daemon failed: {exc}").encode())
    finally:
        if wfd >= 0:
            os.close(wfd)
        logging.shutdown()
    os._exit(code)


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        pid = call(mountpoint, "ping", timeout=5)["pid"]
    except (ControlError, OSError):
        pid = None
    if not _listed_mount(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "--", mountpoint] if tool else ["umount", "--", mountpoint]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"tierfs: cannot unmount {mountpoint}: {res.stderr.strip()}", file=sys.stderr)
        return EXIT_FAILURE
    if pid is not None:
        deadline = time.monotonic() + args.timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                print(f"tierfs: daemon {pid} still running after {args.timeout:.0f}s",
                      file=sys.stderr)
                return EXIT_FAILURE
            time.sleep(0.05)
    return 0


def _listed_mount(path: str) -> bool:
    """Something is mounted at ``path`` (also a mount whose daemon died, which
    `os.path.ismount` cannot stat)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return False
    # /proc/self/mounts escapes space, tab, newline and backslash as \\ooo.
    unescape = functools.partial(re.sub, r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)))
    return any(unescape(p) == path for p in points)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (only in tests) is finished.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def cmd_stats(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UsageError(f"--top takes a number of files from 1, not {args.top}")
    if args.watch:
        if args.json or args.by_path:
            raise UsageError("--watch shows its own view: it takes no --json or --by-path")
        if not 0.05 <= args.interval <= 3600:
            raise UsageError(f"--interval must be 0.05 to 3600 seconds, not {args.interval}")
        if args.count is not None and args.count < 1:
            raise UsageError(f"--count must be at least 1, not {args.count}")
        from .watch import watch  # rich only here

        return watch(os.path.abspath(args.mountpoint), interval=args.interval,
                     count=args.count)
    if args.by_path:
        res = call(args.mountpoint, "by_path", limit=args.top, sort=args.sort)["by_path"]
        if args.json:
            print(json.dumps(res, indent=2, sort_keys=True))
        else:
            print(render_by_path(res))
        return EXIT_OK
    snap = call(args.mountpoint, "stats")["stats"]
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    print(render_stats(snap))
    return 0


def _ellipsize(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, its start replaced by '...' (the file name
    at the end is what tells files apart)."""
    return text if len(text) <= width else "..." + text[len(text) - width + 3:]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render_by_path(res: dict[str, Any]) -> str:
    """The ``tierfs stats --by-path`` tables of a ``by_path`` answer."""
    size = format_size
    paths, rules = res.get("paths", []), res.get("rules", [])
    tiers = [t for t in TIERS if t != "ahead" or any(p["tiers"].get("ahead") for p in
                                                          paths + rules)]
    head = (f"{'read':>9}{'reqs':>8}  {'class':<16}" + "".join(f"{t:>10}" for t in tiers)
            + f"{'hit':>6}{'opens':>7}{'kept':>6}{'errors':>7}")

    def row(f: dict[str, Any]) -> str:
        n = f["bytes"]
        cls = f.get("class") or "-"
        if n and f["classes"].get(cls, 0) < n:
            cls += f" {_share(f['classes'][cls], n)}"
        hit = f"{100 * f['hit_ratio']:.0f}%" if f.get("hit_ratio") is not None else "-"
        mark = "*" if f.get("uncounted_max") else " "
        return (f"{size(n):>8}{mark}{f['requests']:>8}  {cls:<16}"
                + "".join(f"{size(f['tiers'].get(t, 0)):>10}" for t in tiers)
                + f"{hit:>6}{f['opens']:>7}{f['kernel_kept_opens']:>6}{f['errors']:>7}")

    lines = [f"files by {res.get('sort', 'bytes')}: top {len(paths)} of "
             f"{res.get('tracked', 0)} tracked (figures for at most {res.get('limit')} "
             f"files; {res.get('evicted', 0)} light ones let go to make room)"]
    if not res.get("limit"):
        lines = ["no per-file figures: [stats] path_limit is 0"]
    width = max([4, *(len(p["path"]) for p in paths)])
    width = min(width, 48)
    if paths:
        lines.append(f"{'file':<{width}} {head}")
        lines += [f"{_ellipsize(p['path'], width):<{width}} {row(p)}" for p in paths]
    if rules:
        rw = min(48, max(len(r["rule"]) for r in rules))
        lines += ["", "totals by rule (every file opened, tracked or not):",
                  f"{'rule':<{rw}} {head}"]
        lines += [f"{_ellipsize(r['rule'], rw):<{rw}} {row(r)}" for r in rules]
    lines += ["", "class: the access class of most of the bytes (and its share); tier "
                  "columns: bytes each tier served; hit: bytes not fetched from the "
                  "capacity tier while the reader waited; kept: opens at which the kernel "
                  "kept its cached pages, whose reads it may answer without tierfs (those "
                  "reads are not counted here)."]
    if any(p.get("uncounted_max") for p in paths):
        lines.append("*: tracked since other files were let go; up to "
                     f"{size(max(p.get('uncounted_max', 0) for p in paths))} read before "
                     "that is not counted.")
    return "\n".join(lines)


def _render_speculation(amp: Any, c: dict[str, int]) -> list[str]:
    """Read amplification and, per kind of speculative fetch, bytes fetched, used, wasted."""
    lines: list[str] = []
    if isinstance(amp, dict) and amp.get("read_amplification") is not None:
        lines += ["", f"read amplification {amp['read_amplification']:.2f}: "
                      f"{format_size(amp['source_bytes'])} fetched from the source for "
                      f"{format_size(amp['served_bytes'])} served"]
    kinds = [  # kind, fetched, used, wasted (None: not measured)
        ("walk-ahead", c.get("walk.fetched_bytes", 0), c.get("walk.used_bytes", 0),
         c.get("walk.wasted_bytes", 0)),
        ("read-ahead", c.get("readahead.bytes.capacity", 0) + c.get("readahead.bytes.fast", 0),
         c.get("readahead.used_bytes", 0), c.get("readahead.wasted_bytes", 0)),
        ("widening", c.get("speculative.widen.fetched_bytes", 0), None, None),
        ("fill", c.get("source.bytes.fill", 0), c.get("fill.used_bytes", 0), None),
    ]
    kinds = [k for k in kinds if k[1]]
    if kinds:
        lines += ["", "speculative fetches (wasted: gone unread; -: not measured):",
                  f"{'kind':<12}{'fetched':>12}{'used':>12}{'wasted':>12}"]
        for name, fetched, used, wasted in kinds:
            lines.append(f"{name:<12}{format_size(fetched):>12}"
                         + "".join(f"{format_size(v) if v is not None else '-':>12}"
                                   for v in (used, wasted)))
        if c.get("walk.backoffs"):
            lines.append(f"walk-ahead backed off {c['walk.backoffs']} times "
                         f"({c.get('walk.probes', 0)} probes since)")
    return lines


def render_stats(snap: dict[str, Any]) -> str:
    """A human table of a stats snapshot."""
    lines = []
    mount = snap.get("mount", {})
    if mount:
        lines.append(f"{mount.get('source')} on {mount.get('mountpoint')} "
                     f"(pid {mount.get('pid')}, up {snap.get('uptime_s', 0):.0f}s)")
    c = snap.get("counters", {})
    classes = ("random", "sequential", "unknown")
    tiers = ("dram", "fast", "ahead", "capacity")
    by = {(t, k): c.get(f"read.bytes.{t}.{k}", 0) for t in tiers for k in classes}
    # The walk-ahead buffer's row only where it served something.
    shown = [t for t in tiers if t != "ahead" or any(by[t, k] for k in classes)]
    total = sum(by.values())
    if total:
        lines += ["", "bytes served by tier and access class (share of all bytes read):",
                  f"{'tier':<10}" + "".join(f"{k:>14}" for k in classes) + f"{'total':>14}"
                  + f"{'share':>8}"]
        for t in shown:
            row = sum(by[t, k] for k in classes)
            lines.append(f"{t:<10}" + "".join(f"{format_size(by[t, k]):>14}" for k in classes)
                         + f"{format_size(row):>14}{100 * row / total:>7.1f}%")
        hits = {k: sum(by[t, k] for t in ("dram", "fast", "ahead")) for k in classes}
        failed = sum(v for k, v in c.items() if k.startswith("errors.read."))
        if failed:
            lines.append(f"{'':<10}{failed} read requests FAILED (not in the ratios below)")
        lines.append(f"{'hit ratio':<10}" + "".join(
            f"{(100 * hits[k] / s if (s := sum(by[t, k] for t in tiers)) else 0):>13.1f}%"
            for k in classes))
    lines += _render_speculation(snap.get("amplification"), c)
    opens = c.get("meta.open", 0)
    if opens:
        lines += ["", f"opens: {opens}, {c.get('open.kernel_cache_kept', 0)} with the kernel's "
                  f"cached pages kept (reads it answers from them never reach tierfs and are "
                  f"not counted above); {format_size(c.get('kernel.pushed_bytes', 0))} pushed "
                  f"into the kernel's page cache; per file: tierfs stats --by-path"]
    errors = {k: v for k, v in c.items() if k.startswith("errors.")}
    if errors:
        lines += ["", f"errors answered: {errors.get('errors.total', 0)} "
                  "(by operation and errno; EIO by cause)"]
        lines += [f"  {k[7:]:<38}{v:>14}" for k, v in errors.items() if k != "errors.total"]
    wb = snap.get("writeback")
    if isinstance(wb, dict) and "pending_files" in wb:
        lines += ["", f"write-back ({wb.get('durability')}): {wb['pending_files']} files "
                  f"({format_size(wb.get('pending_bytes', 0))}) waiting for their upload; "
                  f"{format_size(c.get('writeback.uploaded_bytes', 0))} uploaded, "
                  f"{c.get('writeback.upload_failures', 0)} failed uploads (retried)"]
        if wb.get("damaged_rows"):
            lines.append(f"  {wb['damaged_rows']} pending writes have a missing or short "
                         f"spool: see tierfs fsck")
    others = {k: v for k, v in c.items()
              if not k.startswith("read.bytes.") and not k.startswith("errors.")}
    if others:
        lines.append("")
        lines.append(f"{'counter':<40}{'value':>14}")
        for k, v in others.items():
            lines.append(f"{k:<40}{v:>14}")
    lat = snap.get("latency", {})
    if lat:
        lines.append("")
        lines.append(f"{'latency':<20}{'count':>10}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}")
        for k, h in lat.items():
            lines.append(f"{k:<20}{h['count']:>10}{h['p50_us']:>10.0f}{h['p99_us']:>10.0f}"
                         f"{h['p999_us']:>10.0f}")
    for name, section in snap.items():
        if name in ("mount", "counters", "latency", "uptime_s") or not isinstance(section, dict) \
                or not section:  # e.g. a local source's capacity tier: nothing to show
            continue
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in section.items():
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def _check_reachable(path: str, full: str) -> None:
    """A one-line reason why ``path`` cannot be used, as a `UsageError`/`ControlError`."""
    try:
        os.stat(full)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ControlError(f"{path}: the daemon of this mount is gone ({exc.strerror}); "
                               f"unmount it with 'tierfs umount' and mount again") from None
        raise UsageError(f"{path}: {exc.strerror}") from None


def _in_mount(path: str) -> tuple[str, str]:
    """(mount point, path relative to it) of a path inside a mount."""
    full = os.path.abspath(path)
    _check_reachable(path, full)
    mnt = full
    while not os.path.ismount(mnt):
        mnt = os.path.dirname(mnt)
    if mnt == "/":
        raise UsageError(f"{path} is not inside a tierfs mount")
    return mnt, os.path.relpath(full, mnt) if full != mnt else ""


def _files(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


def cmd_move(args: argparse.Namespace) -> int:
    """warm / evict / pin / unpin: one line per PATH, ``COMMAND: PATH: N files, SIZE ...``.

    Sizes are `format_size`'s; what they count is what the fast tier holds after the
    command (warm, pin), what it dropped (evict) or what is no longer pinned (unpin).
    warm exits 1 if a PATH had files and a ``cache = false`` rule refused all of them.
    """
    code = 0
    if getattr(args, "jobs", None) is not None and not 1 <= args.jobs <= 256:
        raise UsageError(f"--jobs must be 1 to 256, not {args.jobs}")
    for path in args.paths:
        mnt, rel = _in_mount(path)
        if args.command == "warm":
            code = max(code, _warm(path, mnt, rel, quiet=args.quiet, jobs=args.jobs))
            continue
        req: dict[str, Any] = {"path": rel}
        if args.command == "evict" and args.unpin:
            req["unpin"] = True
        res = call(mnt, args.command, timeout=3600, **req)
        print(f"{args.command}: {path}: " + describe(args.command, res))
        _say_refused(args.command, path, res)
    return code


def _say_refused(command: str, path: str, res: dict[str, Any]) -> bool:
    """Name on stderr the files a ``cache = false`` rule kept out (warm, pin); True if
    that was every file found under ``path``."""
    if not res.get("refused"):
        return False
    rules = ", ".join(repr(r) for r in res.get("refused_rules", []))
    print(f"tierfs: {command}: {path}: {_files(res['refused'])} "
          f"({format_size(res.get('refused_bytes', 0))}) not "
          f"{'pinned' if command == 'pin' else 'warmed'}: rule {rules} says cache = false",
          file=sys.stderr)
    return not res.get("files") and not res.get("vanished")


def describe(command: str, res: dict[str, Any]) -> str:
    """The part after ``COMMAND: PATH:`` of the line warm/evict/pin/unpin print."""
    size = format_size
    n = _files(res.get("files", 0))
    if command in ("warm", "pin"):
        kept, total = res.get("kept", 0), res.get("total", 0)
        what = "cached and pinned" if command == "pin" else "cached"
        out = f"{n}, {size(kept)} {what}"
        if kept < total:
            out += f" (of {size(total)}: the fast tier is too small to keep them all)"
        out += f", {size(res.get('bytes', 0))} copied now"
        if res.get("vanished"):
            out += f"; {res['vanished']} vanished while warming"
        return out
    if command == "evict":
        out = f"{n}, {size(res.get('bytes', 0))} dropped"
        if res.get("unpinned"):
            out += f", {_files(res['unpinned'])} unpinned first"
        if res.get("pinned"):
            why = ", ".join(res.get("pinned_by", []))
            out += (f"; {_files(res['pinned'])} kept, {size(res.get('pinned_bytes', 0))} "
                    f"pinned ({why})")
            out += (": change the rule to let them go" if res.get("unpinned") or
                    all(w.startswith("rule ") for w in res.get("pinned_by", []))
                    else ": 'tierfs evict --unpin' drops them too")
        return out
    if command == "unpin":
        return f"{n}, {size(res.get('bytes', 0))} unpinned (still cached, now evictable)"
    return ", ".join(f"{v} {k}" for k, v in res.items() if k != "ok")


def _warm(path: str, mnt: str, rel: str, *, quiet: bool, jobs: int | None = None) -> int:
    """One warm request (the daemon copies files in parallel); progress on a terminal."""
    show = not quiet and sys.stderr.isatty()
    job = f"{os.getpid()}-{time.monotonic_ns()}"
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            extra = {"parallel": jobs} if jobs is not None else {}
            result.update(call(mnt, "warm", path=rel, job=job, timeout=24 * 3600, **extra))
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    def progress(p: dict[str, Any]) -> None:
        print(f"\rwarm: {path}: {p['files_done']}/{p['files_total']} files, "
              f"{format_size(p['bytes_done'])} of {format_size(p['bytes_total'])} "
              f"({100 * p['bytes_done'] / (p['bytes_total'] or 1):5.1f}%)",
              end="", file=sys.stderr, flush=True)

    if show:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            try:
                p = call(mnt, "warm_progress", job=job, timeout=5)
            except ControlError:
                continue
            if p.get("files_total"):
                progress(p)
        if result:  # the last state (also of a warm quicker than the first poll)
            n, b = result.get("files", 0), result.get("total", 0)
            progress({"files_done": n, "files_total": n, "bytes_done": b, "bytes_total": b})
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    else:
        run()
    if failure:
        exc = failure[0]
        if isinstance(exc, ControlError) and exc.errno in (errno.ENOENT, errno.ESTALE):
            raise UsageError(f"{path}: no such file in the source (removed since "
                             f"the mount listed it)") from None
        raise exc
    res = result
    print(f"warm: {path}: " + describe("warm", res))
    return EXIT_FAILURE if _say_refused("warm", path, res) else 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {}
    if args.file:
        req["path"] = os.path.abspath(args.file)  # the daemon runs in "/"
    res = call(os.path.abspath(args.mountpoint), "snapshot", timeout=3600, **req)
    print(f"{res['path']}: {res['entries']} entries")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from . import fsck

    target = os.path.abspath(args.target)
    try:
        if os.path.ismount(target):
            if args.repair:
                raise UsageError("--repair works on an unmounted cache directory; "
                                 "a live mount is checked read-only")
            report = fsck.Report(**call(target, "fsck")["report"])
        else:
            report = fsck.check_cache_dir(target, repair=args.repair)
    except fsck.FsckError as exc:
        print(f"tierfs: fsck: {exc}", file=sys.stderr)
        return fsck.EXIT_OPERATIONAL
    except ControlError as exc:
        print(f"tierfs: fsck: {exc}", file=sys.stderr)
        return fsck.EXIT_OPERATIONAL
    if args.json:
        print(json.dumps({**report.to_dict(), "exit": report.exit_code}, indent=2))
    else:
        print(fsck.render(report, target))
    return report.exit_code


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import main as replay_main

    return replay_main(args.raw_argv[1:])


def cmd_report(args: argparse.Namespace) -> int:
    from .report import main as report_main  # matplotlib only here, never in the daemon

    return report_main(args.raw_argv[1:])


COMMANDS = {"replay": cmd_replay, "report": cmd_report, "mount": cmd_mount, "umount": cmd_umount, "stats": cmd_stats,
            "snapshot": cmd_snapshot, "fsck": cmd_fsck,
            "warm": cmd_move, "evict": cmd_move, "pin": cmd_move, "unpin": cmd_move}


def _fail(message: str) -> None:
    print(f"tierfs: {credentials.redact(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a documented exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # now, inside the try: a closed pipe must not fail at exit
        return code
    except BrokenPipeError:
        # The reader went away (`tierfs stats | head -1`): stop quietly, as a
        # process killed by SIGPIPE would, and keep the exit-time flush from failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def _main(argv: Sequence[str] | None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(replay="replay" in raw or "report" in raw)
    if raw and not raw[0].startswith("-") and raw[0] not in COMMANDS:
        # `tierfs SOURCE MOUNTPOINT -o OPTS`: what mount.fuse3 runs for a `fuse.tierfs`
        # fstab entry or `mount -t fuse.tierfs`.
        return mount_helper(raw)
    args = parser.parse_args(raw)
    args.raw_argv = (raw[raw.index(args.command):] if args.command in ("replay", "report")
                     else raw)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_CONFIG
    except MountError as exc:
        _fail(str(exc))
        return exc.code
    except (UsageError, ControlError) as exc:
        _fail(str(exc))
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except OSError as exc:
        _fail(f"{exc.filename + ': ' if isinstance(exc.filename, str) else ''}"
              f"{exc.strerror or exc}")
        return EXIT_FAILURE
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("TIERFS_TRACEBACK"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} "
              f"(TIERFS_TRACEBACK=1 shows where)")
        return EXIT_FAILURE


def mount_helper(argv: Sequence[str] | None = None) -> int:
    """``mount.tierfs SOURCE MOUNTPOINT [-o OPTS]``, as mount(8) calls it.

    Installed as ``mount.tierfs`` (``mount -t tierfs``) and, linked as
    /sbin/mount.fuse.tierfs, called by mount(8) for ``fuse.tierfs`` fstab lines with
    ``SOURCE MOUNTPOINT -o OPTS -t fuse.tierfs``. Without that link, mount.fuse3 runs
    ``tierfs SOURCE MOUNTPOINT -o OPTS`` through /bin/sh: `main` takes that form too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pos, opts = [], []
    it = iter(argv)
    for a in it:
        if a == "-o":
            opts.append(next(it, ""))
        elif a.startswith("-o") and len(a) > 2:
            opts.append(a[2:])
        elif a in ("-n", "-s", "-v", "-f"):
            continue  # mount(8) flags: no mtab, sloppy, verbose, fake
        elif a in ("-t", "-N"):
            next(it, None)  # /sbin/mount.fuse.tierfs gets "-t fuse.tierfs" (and -N NS)
        else:
            pos.append(a)
    if len(pos) != 2:
        print("usage: mount.tierfs SOURCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return EXIT_USAGE
    args = [ "mount", pos[0], pos[1]]
    for o in opts:
        args += ["-o", o]
    return main(args)


if __name__ == "__main__":
    sys.exit(main())
