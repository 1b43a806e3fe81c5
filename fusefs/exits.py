"""Exit codes of the `tierfs` command and the error that carries one.

Kept apart from `fusefs.mount` (which imports the engine, pyfuse3 and pyarrow) so that
the commands that only talk to a running mount (warm, evict, stats...) start fast.
"""

from __future__ import annotations

from .credentials import redact

# Exit codes of `tierfs mount`, documented in tierfs(1).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_SOURCE = 4
EXIT_MOUNTPOINT = 5
EXIT_FUSE = 6


class MountError(Exception):
    """A mount that cannot proceed; ``code`` is the process exit code.

    The message never shows a source URI's credentials.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(redact(message))
        self.code = code
