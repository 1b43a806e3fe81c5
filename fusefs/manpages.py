"""Generates the man pages from the argument parser and the config schema.

``python -m fusefs.manpages man/`` writes ``tierfs.1`` (from `cli.build_parser`),
``tierfs.toml.5`` (from the dataclasses in `config`) and ``mount.tierfs.8`` (fstab,
mount -t and systemd), so the reference cannot drift from the code; a test checks
the committed pages are current. setup.py installs them into share/man/man{1,5,8}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import __version__
from .cli import MOUNT_OPTIONS, build_parser
from .config import SECTIONS, Rule, toml_key
from .units import format_size


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-").replace("'", "\\(aq")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


_EXAMPLES = [
    ("Mount a local dataset and read it through the tiers:",
     "tierfs mount /data/imagenet /mnt/imagenet\n"
     "python train.py --data /mnt/imagenet\ntierfs stats /mnt/imagenet\n"
     "tierfs umount /mnt/imagenet"),
    ("Mount an S3 prefix with a 200 GiB NVMe cache and a config file (credentials come "
     "from the environment, never the URI):",
     "tierfs mount 's3://bucket/corpus?region=us-east-1' /mnt/corpus \\\n"
     "    --cache /nvme/tierfs-corpus --config serving.toml"),
    ("Copy a RAG index into the fast tier before traffic arrives, and keep it there:",
     "tierfs pin /mnt/corpus/index"),
    ("Check a cache directory after a crash (offline), or a live mount (read-only):",
     "tierfs fsck /nvme/tierfs-corpus\ntierfs fsck /mnt/corpus"),
    ("Warm a directory of many small files (parallel; a terminal shows progress), then "
     "drop what is not pinned; --unpin drops the pinned files too:",
     "tierfs warm /mnt/corpus/docs\n"
     "warm: /mnt/corpus/docs: 2000 files, 7.8MiB cached, 7.8MiB copied now\n"
     "tierfs evict /mnt/corpus\n"
     "tierfs evict --unpin /mnt/corpus/index"),
    ("See which files are read most, how (class), and which tier served them; then "
     "watch the rates live (Ctrl-C ends it; piped, it prints one block per refresh):",
     "tierfs stats --by-path --top 10 /mnt/corpus\n"
     "tierfs stats --by-path --top 10 --sort misses /mnt/corpus\n"
     "tierfs stats --watch --interval 1 /mnt/corpus"),
    ("The form mount.fuse3 runs for `mount -t fuse.tierfs` and fstab lines "
     "(see mount.tierfs(8)):",
     "tierfs /data/imagenet /mnt/imagenet -o cache=/nvme/tierfs,nofail"),
]

# mount.tierfs(8): fstab, mount -t and systemd.
_HELPER_EXAMPLES = [
    ("Mount by hand, as mount(8) does for the type fuse.tierfs:",
     "mount -t fuse.tierfs /data/imagenet /mnt/imagenet -o cache=/nvme/tierfs-imagenet"),
    ("An /etc/fstab line for a local dataset, mounted at boot (nofail: boot goes on "
     "without it):",
     "/data/imagenet  /mnt/imagenet  fuse.tierfs  cache=/nvme/tierfs-imagenet,nofail  0 0"),
    ("An /etc/fstab line for an S3 prefix (credentials in the config file, 0600, "
     "never in fstab):",
     "s3://bucket/corpus?region=us-east-1  /mnt/corpus  fuse.tierfs  "
     "config=/etc/tierfs/corpus.toml,cache=/nvme/tierfs-corpus,_netdev,nofail  0 0"),
    ("Unmount (the daemon uploads pending writes and saves its state before it exits):",
     "umount /mnt/imagenet        # or: tierfs umount /mnt/imagenet"),
    ("A systemd mount unit, /etc/systemd/system/mnt-data.mount (examples/systemd/ in "
     "the source tree): mounted at boot, unmounted (and flushed) at shutdown:",
     "[Unit]\nDescription=tierfs: /srv/dataset through DRAM and NVMe tiers\n"
     "Wants=network-online.target\nAfter=network-online.target\n\n"
     "[Mount]\nWhat=/srv/dataset\nWhere=/mnt/data\nType=fuse.tierfs\n"
     "Options=cache=/var/cache/tierfs/data,config=/etc/tierfs/tierfs.toml,_netdev,nofail\n"
     "TimeoutSec=300\n\n[Install]\nWantedBy=multi-user.target\n\n"
     "systemctl daemon-reload && systemctl enable --now mnt-data.mount"),
]

# tierfs.toml(5): a complete small file.
_TOML_EXAMPLE = """\
# /etc/tierfs/corpus.toml: a RAG corpus on S3, served to a retriever
[cache]
size = "200GiB"            # the NVMe fast tier
dram = "8GiB"              # the DRAM page cache

[policy]
name = "workload_aware"

[source]
access_key = "AKIA..."     # this file must then be 0600
secret_key = "..."

[[rule]]
path = "index/**"          # the vector index: always on NVMe
pin = true

[[rule]]
path = "logs/**"           # never cached (tierfs warm refuses it too)
cache = false
"""


def _examples(items: list[tuple[str, str]]) -> list[str]:
    out = [".SH EXAMPLES"]
    for text, cmd in items:
        out += [".PP", _esc(text), ".PP", ".RS", ".nf", _esc(cmd), ".fi", ".RE"]
    return out


def tierfs_1() -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal's width
    parser = build_parser()
    out = [f'.TH TIERFS 1 "" "tierfs {__version__}" "User Commands"',
           ".SH NAME", "tierfs \\- tiering FUSE filesystem for AI datasets",
           ".SH SYNOPSIS"]
    subs = _subparsers(parser)
    for name, sub in subs.items():
        usage = sub.format_usage().replace("usage: ", "").strip()
        out += [".PP", f".B {_esc(usage)}"]
    out += [".SH DESCRIPTION", _esc(parser.description or "")]
    for name, sub in subs.items():
        out += [f".SH {name.upper()}", _esc(sub.description or "")]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(action.option_strings) or action.metavar or action.dest
            if action.metavar and action.option_strings:
                flags += f" {action.metavar}"
            if not action.help:
                raise ValueError(f"tierfs {name}: {flags} has no help text for the man page")
            out += [".TP", f".B {_esc(flags)}", _esc(action.help)]
    out += [".SH MOUNT OPTIONS", "Given with \\-o, comma-separated, or in /etc/fstab "
            "(see mount.tierfs(8))."]
    for opt, doc in MOUNT_OPTIONS.items():
        out += [".TP", f".B {_esc(opt)}", _esc(doc)]
    out += _examples(_EXAMPLES)
    out += [".SH FILES",
            ".TP", ".B <cache>/TIERFS\\-CACHE",
            "Marks a directory as a tierfs cache; tierfs uses no other non-empty directory.",
            ".TP", ".B <cache>/catalog.db, <cache>/data/",
            "The fast tier's catalog (sqlite) and cached bytes, checked by tierfs fsck.",
            ".TP", ".B <cache>/tierfs.log",
            "The daemon's log when it runs in the background."]
    out += [".SH EXIT STATUS",
            "0 mounted; 1 other failure; 2 bad arguments or mount options; 3 invalid config; "
            "4 source missing or unreachable; 5 mount point missing, not a directory or busy; "
            "6 FUSE unavailable. Every command: 1 the mount (or its daemon) cannot be "
            "reached, 2 bad arguments, 130 interrupted, 141 its output pipe was closed "
            "(as when killed by SIGPIPE); fsck as fsck(8). stats \\-\\-watch: 0 when ended "
            "by Ctrl-C or after \\-\\-count refreshes, 1 when the mount goes away. "
            "Failures are one line on stderr.",
            ".SH ENVIRONMENT",
            ".TP", ".B TIERFS_TRACEBACK",
            "Set: an unexpected error shows its Python traceback, not one line.",
            ".SH SECURITY",
            _esc("Credentials in a source URI (s3://KEY:SECRET@bucket/prefix) never stay in "
                 "the daemon's command line: tierfs mount re-executes itself without them "
                 "and hands them over in its (private) environment; logs and messages show "
                 "s3://***@. The environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or "
                 "the config ([source] access_key, secret_key) keep them out of the shell "
                 "history too. Files tierfs writes for itself (cache, log, trace, listing "
                 "snapshot) are 0600 in 0700 directories; a snapshot or trace that is not "
                 "the user's own, or that others may write, is not read."),
            ".SH SEE ALSO", "tierfs.toml(5), mount.tierfs(8), fstab(5)"]
    return "\n".join(out) + "\n"


def _default(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    d = f.default
    kind = f.metadata["kind"]
    if d is None:
        return "unset"
    if kind == "size":
        return format_size(d).replace(".0 ", " ").replace(" ", "")
    if kind == "bool":
        return "true" if d else "false"
    if kind == "duration":
        return f"{d:g}s"
    return f'"{d}"' if isinstance(d, str) else str(d)


def tierfs_toml_5() -> str:
    out = [f'.TH TIERFS.TOML 5 "" "tierfs {__version__}" "File Formats"',
           ".SH NAME", "tierfs.toml \\- tierfs configuration file",
           ".SH DESCRIPTION",
           "A TOML file given to \\fBtierfs mount \\-\\-config\\fR. Unknown tables and keys "
           "are errors that name the file, the line and the allowed keys. Sizes are integers "
           "of bytes or strings such as \"256KiB\" or \"4GiB\"; durations are seconds or "
           "strings such as \"500ms\" or \"5m\"."]
    tables = [(f"[{name}]", cls) for name, cls in SECTIONS.items()]
    tables.append(("[[rule]]", Rule))
    for title, cls in tables:
        out += [f".SH {_esc(title)}"]
        if cls is Rule:
            out.append("Per-path rules, tried in order; the first whose path matches wins.")
        for f in dataclasses.fields(cls):
            choices = f.metadata["choices"]
            extra = f" One of: {', '.join(choices)}." if choices else ""
            out += [".TP", f".B {_esc(toml_key(f))} \\fR({f.metadata['kind']}, default "
                           f"{_esc(_default(f))})",
                    _esc(f.metadata["doc"] + extra)]
    out += _examples([("A configuration for a RAG corpus on S3 (tierfs mount --config "
                       "FILE, or config=FILE in fstab):", _TOML_EXAMPLE)])
    out += [".SH SEE ALSO", "tierfs(1), mount.tierfs(8)"]
    return "\n".join(out) + "\n"


def mount_tierfs_8() -> str:
    from .cli import MOUNT_OPTIONS

    out = [f'.TH MOUNT.TIERFS 8 "" "tierfs {__version__}" "System Administration"',
           ".SH NAME", "mount.tierfs \\- mount a tierfs dataset from fstab, mount(8) or systemd",
           ".SH SYNOPSIS",
           ".B mount.tierfs", ".I SOURCE MOUNTPOINT", "[\\fB\\-o\\fR \\fIOPTIONS\\fR]",
           ".PP", ".B mount \\-t fuse.tierfs", ".I SOURCE MOUNTPOINT",
           "[\\fB\\-o\\fR \\fIOPTIONS\\fR]",
           ".PP", ".B tierfs", ".I SOURCE MOUNTPOINT", "[\\fB\\-o\\fR \\fIOPTIONS\\fR]",
           ".SH DESCRIPTION",
           _esc("What mount(8) runs for a filesystem of type fuse.tierfs (an /etc/fstab "
                "line, mount -t fuse.tierfs, a systemd .mount unit). It mounts SOURCE at "
                "MOUNTPOINT exactly as tierfs mount SOURCE MOUNTPOINT -o OPTIONS does and "
                "returns once the mount is live; the daemon stays in the background and "
                "logs to <cache>/tierfs.log (or log=FILE)."),
           ".PP",
           _esc("mount(8) first looks for /sbin/mount.fuse.tierfs (make install links it to "
                "mount.tierfs); without it, mount.fuse3 runs tierfs SOURCE MOUNTPOINT -o "
                "OPTIONS through /bin/sh, so tierfs must be on the PATH that mount(8) and "
                "systemd give it (/usr/local/bin or /usr/bin: a system-wide pip install, "
                "or make install). mount.tierfs itself answers mount -t tierfs."),
           ".SH ARGUMENTS",
           ".TP", ".I SOURCE",
           _esc("The dataset: a directory, file:///path, s3://bucket/prefix or "
                "gs://bucket/prefix (query parameters as pyarrow.fs takes them, e.g. "
                "?region=us-east-1). Credentials belong in the config file, not in fstab."),
           ".TP", ".I MOUNTPOINT",
           _esc("An existing directory. A non-empty one is mounted over with a warning "
                "(stderr and the daemon's log): what it holds is hidden until the unmount."),
           ".TP", ".BI \\-o \" OPTIONS\"",
           _esc("Comma-separated mount options, below. mount(8)'s own flags (-n, -s, -v, "
                "-f, -t TYPE, -N NS) are accepted and ignored.")]
    out += [".SH OPTIONS"]
    for opt, doc in MOUNT_OPTIONS.items():
        out += [".TP", f".B {_esc(opt)}", _esc(doc)]
    out += _examples(_HELPER_EXAMPLES)
    out += [".SH EXIT STATUS",
            "As tierfs mount: 0 mounted; 1 other failure; 2 bad arguments or mount options; "
            "3 invalid config; 4 source missing or unreachable; 5 mount point missing, not a "
            "directory or busy; 6 FUSE unavailable. The reason is one line on stderr.",
            ".SH FILES",
            ".TP", ".B /sbin/mount.fuse.tierfs",
            "A link to mount.tierfs, made by make install: mount(8) runs it for fuse.tierfs.",
            ".TP", ".B /etc/fstab", "Mount lines, type fuse.tierfs.",
            ".SH SEE ALSO",
            "tierfs(1), tierfs.toml(5), mount(8), fstab(5), systemd.mount(5), mount.fuse3(8)"]
    return "\n".join(out) + "\n"


PAGES = {"tierfs.1": tierfs_1, "tierfs.toml.5": tierfs_toml_5, "mount.tierfs.8": mount_tierfs_8}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    outdir = args[0] if args else "man"
    os.makedirs(outdir, exist_ok=True)
    for name, fn in PAGES.items():
        with open(os.path.join(outdir, name), "w") as f:
            f.write(fn())
    return 0


if __name__ == "__main__":
    sys.exit(main())
