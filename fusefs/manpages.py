"""Generates the man pages from the argument parser and the config schema.

``python -m fusefs.manpages man/`` writes ``tierfs.1`` (from `cli.build_parser`)
and ``tierfs.toml.5`` (from the dataclasses in `config`), so the reference
cannot drift from the code; a test checks the committed pages are current.
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
    ("An /etc/fstab line (after `make install`, which puts tierfs where mount(8) looks):",
     "/data/imagenet  /mnt/imagenet  fuse.tierfs  cache=/nvme/tierfs,nofail  0 0"),
]


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
            out += [".TP", f".B {_esc(flags)}", _esc(action.help or "")]
    out += [".SH MOUNT OPTIONS", "Given with \\-o, comma-separated, or in /etc/fstab."]
    for opt, doc in MOUNT_OPTIONS.items():
        out += [".TP", f".B {_esc(opt)}", _esc(doc)]
    out += [".SH EXAMPLES"]
    for text, cmd in _EXAMPLES:
        out += [".PP", _esc(text), ".PP", ".RS", ".nf", _esc(cmd), ".fi", ".RE"]
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
            "(as when killed by SIGPIPE); fsck as fsck(8). Failures are one line on stderr.",
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
            ".SH SEE ALSO", "tierfs.toml(5)"]
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
    out += [".SH SEE ALSO", "tierfs(1)"]
    return "\n".join(out) + "\n"


PAGES = {"tierfs.1": tierfs_1, "tierfs.toml.5": tierfs_toml_5}


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
