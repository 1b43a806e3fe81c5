"""The life of a test server on loopback: spawn, wait until it answers, stop.

`LoopbackServer` owns what every server the tests run has in common (``rclone serve
s3``, moto's S3 server, fake-gcs-server): one process on 127.0.0.1 and a port of its
own, its output appended to a log file beside its data (never a pipe nobody reads), in
its own session (a Ctrl-C of pytest does not reach it: the fixtures stop it), started
and stopped as often as a test likes on the same port. A subclass says how to start it
(`command`) and how to know it answers (`answers`; by default: the port accepts).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


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


class LoopbackServer:
    """One server process; `start`/`stop` may be called repeatedly.

    Subclasses set ``name`` (for messages), ``port``, ``log_path`` and ``proc = None``
    in their ``__init__`` and define `command`.
    """

    name = "server"
    start_timeout = 30.0
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    @property
    def endpoint(self) -> str:
        """``host:port``, as pyarrow's ``endpoint_override`` wants it."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        return port_answers(self.port)

    def started(self) -> None:
        """Called once the server answers (e.g. to create a bucket)."""

    def start(self, timeout: float | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        timeout = self.start_timeout if timeout is None else timeout
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise RuntimeError(f"{self.name} exited with {rc}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer on {self.endpoint} in {timeout}s")
            time.sleep(0.05)
        self.started()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> LoopbackServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
