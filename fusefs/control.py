"""The control channel between the `tierfs` command and a running mount.

Each mount listens on a UNIX socket in a per-user runtime directory (mode 0700,
socket 0600), so only the mounting user (and root) can talk to it. Requests
and answers are one JSON object per line: ``{"op": "stats"}`` ->
``{"ok": true, ...}``. The daemon registers handlers by name; the client side
(`call`) is synchronous because the CLI is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_MAX_REQUEST = 1 << 20


class ControlError(Exception):
    """The mount could not be reached or refused a request; ``errno`` is the daemon's
    errno for a refusal that had one (e.g. ``ENOENT``: the path is gone)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def runtime_dir() -> str:
    """The per-user directory holding control sockets, created 0700."""
    if os.geteuid() == 0:
        base = "/run/tierfs"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = os.path.join(os.environ["XDG_RUNTIME_DIR"], "tierfs")
    else:
        base = f"/tmp/tierfs-{os.geteuid()}"
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ControlError(f"{base} is not a directory owned by uid {os.geteuid()}")
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base


def socket_path(mountpoint: str) -> str:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:20]
    return os.path.join(runtime_dir(), key + ".sock")


class ControlServer:
    """Serves control requests for one mount until cancelled."""

    def __init__(self, mountpoint: str) -> None:
        self.path = socket_path(mountpoint)
        self.handlers: dict[str, Handler] = {}

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener])
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            try:
                while b"\n" not in buf and len(buf) < _MAX_REQUEST:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                req = json.loads(buf.split(b"\n", 1)[0])
                handler = self.handlers.get(req.get("op")) if isinstance(req, dict) else None
                if handler is None:
                    reply = {"ok": False, "error": f"unknown request; known: "
                                                  f"{', '.join(sorted(self.handlers))}"}
                else:
                    try:
                        reply = {"ok": True, **(await handler(req))}
                    except BaseExceptionGroup as group:
                        raise _leaf(group) from None
            except OSError as exc:
                reply = {"ok": False, "error": exc.strerror or str(exc), "errno": exc.errno}
            except (ValueError, KeyError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except Exception as exc:  # a bad request must not kill the daemon
                log.exception("control request failed")
                reply = {"ok": False, "error": f"internal error: {exc}"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) group: a task's failure, as the user should
    read it (not "Exceptions from Trio nursery")."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    for exc in _leaves(group):
        if isinstance(exc, OSError):
            return exc  # an OSError explains itself best
    return first


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def call(mountpoint: str, op: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request to the mount at ``mountpoint`` and return its answer."""
    path = socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError:
            raise ControlError(f"{mountpoint} is not a tierfs mount of this user "
                               f"(no control socket)") from None
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"{mountpoint}: the daemon closed the connection") from None
    if not reply.get("ok"):
        code = reply.get("errno")
        raise ControlError(f"{mountpoint}: {reply.get('error', 'request failed')}",
                           code if isinstance(code, int) else None)
    return reply
