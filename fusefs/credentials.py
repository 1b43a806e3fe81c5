"""Credentials in source URIs: kept out of the daemon's command line, logs and errors.

Owns where a URI carries credentials (the userinfo of
``scheme://ACCESS:SECRET@bucket/prefix``), how they travel from `tierfs mount`
to its daemon, and their redaction. ``tierfs mount`` moves them out of its own
command line at once: it re-executes itself with the bare URI in ``argv`` and the
credentials in the environment variable `ENV` (``/proc/PID/environ`` is readable
by the user alone, ``/proc/PID/cmdline`` by everyone), which the daemon takes
out of its environment again before it starts anything. Every log line and every
error message goes through `redact`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ENV", "RedactFilter", "merge", "redact", "scrub_environ", "split"]

ENV = "TIERFS_SOURCE_CREDENTIALS"

# scheme://user:secret@  (the secret may hold anything but '@' and white space)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s@/:]*:[^\s@]*@")
_QUERY = re.compile(r"\b(access_key|secret_key|session_token)=[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every ``scheme://user:secret@`` as ``scheme://***@`` (and key=... hidden)."""
    return _QUERY.sub(r"\1=***", _USERINFO.sub(r"\1***@", text))


def split(uri: str) -> tuple[str, str | None]:
    """(the URI without ``user:secret@``, ``user:secret`` or None)."""
    if "://" not in uri:
        return uri, None
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return uri, None
    return urlunsplit(parts._replace(netloc=host)), userinfo


def merge(uri: str, userinfo: str) -> str:
    """Put ``userinfo`` (from `split`) back into a URI that has none."""
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        return uri  # the URI names its own credentials
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def scrub_environ() -> None:
    """Take `ENV` out of this process's environment, and its value out of the memory
    ``/proc/PID/environ`` shows (unsetenv alone leaves the bytes there)."""
    value = os.environ.get(ENV)
    if value is None:
        return
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_void_p
    ptr = libc.getenv(ENV.encode())
    if ptr:
        ctypes.memset(ptr, 0, len(os.fsencode(value)))
    os.environ.pop(ENV, None)


class RedactFilter(logging.Filter):
    """Redacts credentials from a record's message and traceback (on a handler: every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
