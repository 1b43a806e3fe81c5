"""Credentials in a source URI: never in the daemon's command line, its log or an error.

Against the loopback S3 server (`rclone serve s3`), whose keys are given only in the
URI (``s3://KEY:SECRET@bucket``), so a mount that works shows they reached the daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mounting import Mounted, is_mounted, tierfs_cmd
from s3server import S3Server

from fusefs.credentials import merge, redact, split


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tierfs_cmd(*args), check=False, capture_output=True, text=True,
                          timeout=120, **kw)


def uri_with_keys(server: S3Server, bucket: str | None = None) -> str:
    return (f"s3://{server.access_key}:{server.secret_key}@{bucket or server.bucket}"
            f"?endpoint_override={server.endpoint}&scheme=http&request_timeout=60")


def config(tmp_path: Path) -> str:
    p = tmp_path / "c.toml"
    p.write_text("[source]\ndir_markers = false\n")  # rclone: see s3server.py
    return str(p)


def test_redact_and_split() -> None:
    line = "source s3://AKIA:wJalr/K7MDENG+bPx@bucket/p?x=1 and gs://u:p@b, s3://bucket/a:b@c"
    assert redact(line) == "source s3://***@bucket/p?x=1 and gs://***@b, s3://bucket/a:b@c"
    assert redact("secret_key=abc&access_key=def") == "secret_key=***&access_key=***"
    bare, info = split("s3://K:S@bucket/pre?endpoint_override=h:1")
    assert (bare, info) == ("s3://bucket/pre?endpoint_override=h:1", "K:S")
    assert merge(bare, info) == "s3://K:S@bucket/pre?endpoint_override=h:1"
    assert split("/local/dir") == ("/local/dir", None)


def test_uri_credentials_stay_out_of_ps_and_logs(s3: S3Server, tmp_path: Path) -> None:
    (s3.bucket_dir / "hello").write_bytes(b"hi")
    mnt = tmp_path / "m"
    mnt.mkdir()
    cache = tmp_path / "cache"
    res = run("mount", uri_with_keys(s3), str(mnt), "--cache", str(cache),
              "--config", config(tmp_path))
    assert res.returncode == 0, res.stderr
    try:
        assert (mnt / "hello").read_bytes() == b"hi"  # the keys reached the daemon
        stats = json.loads(run("stats", str(mnt), "--json").stdout)
        pid = stats["mount"]["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert s3.secret_key.encode() not in cmdline
        assert b"s3://" + s3.bucket.encode() in cmdline  # the bare URI is there
        # The environment that carried them is scrubbed too (and private anyway).
        assert s3.secret_key.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        assert s3.secret_key not in json.dumps(stats)
    finally:
        res = run("umount", str(mnt))
    assert res.returncode == 0, res.stderr
    assert s3.secret_key not in (cache / "tierfs.log").read_text()

    # A failed mount: its message and its log name the source, without the secret.
    res = run("mount", uri_with_keys(s3, bucket="no-such-bucket"), str(mnt), "--cache",
              str(cache), "--config", config(tmp_path))
    assert res.returncode == 4, res.stderr
    assert "no-such-bucket" in res.stderr and "s3://***@" in res.stderr
    assert s3.secret_key not in res.stderr and "Traceback" not in res.stderr
    log = (cache / "tierfs.log").read_text()
    assert "no-such-bucket" in log and s3.secret_key not in log
    assert not is_mounted(str(mnt))


def test_foreground_mount_hides_them_too(s3: S3Server, tmp_path: Path) -> None:
    (s3.bucket_dir / "f").write_bytes(b"data")
    m = Mounted(uri_with_keys(s3), str(tmp_path / "m"), cache=str(tmp_path / "c"),
                log=str(tmp_path / "log"), config=config(tmp_path))
    with m:
        assert m.proc is not None
        # `tierfs mount -f` re-executed itself: same pid, arguments without the keys.
        cmdline = Path(f"/proc/{m.proc.pid}/cmdline").read_bytes()
        assert b"mount\0-f\0" in cmdline and s3.secret_key.encode() not in cmdline
        assert (Path(m.mountpoint) / "f").read_bytes() == b"data"
    assert s3.secret_key not in m.read_log() + m.read_stderr()


def test_credentials_that_cannot_leave_argv_are_refused(tmp_path: Path) -> None:
    # Inside a `python -c` program the URI is no argument of its own: re-executing
    # cannot hide it, so the mount refuses and says where credentials belong.
    uri = "s3://KEY:SECRETVALUE@bucket"
    code = ("import sys; from fusefs.cli import main; "
            f"sys.exit(main(['mount', {uri!r}, {str(tmp_path)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "AWS_SECRET_ACCESS_KEY" in res.stderr and "SECRETVALUE" not in res.stderr
    assert "Traceback" not in res.stderr


def test_a_slash_in_the_secret_is_refused_not_leaked(tmp_path: Path) -> None:
    # Unencoded, the '/' would end the URI's authority: the secret would be read as a
    # path and stay in the daemon's command line.
    res = run("mount", "s3://KEY:SEC/RET@bucket/p", str(tmp_path))
    assert res.returncode == 2
    assert "%2F" in res.stderr and "SEC/RET" not in res.stderr and "Traceback" not in res.stderr
