"""One writer at a time: an advisory lock held for the whole run on an output folder (or while a file is fetched into
the cache). The operating system releases it when the process ends, however it ends (a kill leaves no stale lock
behind)."""
from __future__ import annotations

import datetime
import os
import socket
from typing import Optional

from utils.io import OutputError, open_regular

__all__ = ["FolderLock"]


class FolderLock:
    """``flock`` on ``path`` (created, never a link). Use as a context manager or call :meth:`acquire` and
    :meth:`release`.

    Args:
        path: The lock file inside the output folder.
        key: The flag or config key that names the folder, for the message.
    """

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key
        self.fd: Optional[int] = None

    def acquire(self, wait: bool = False) -> "FolderLock":
        """Take the lock, or refuse when another process holds it (``wait``: wait until it lets go).

        Raises:
            OutputError: Another run holds it and ``wait`` is false (the message names its process, host and start
                time), or the lock file cannot be opened.
        """
        import fcntl

        fix = f"remove it or use another {self.key}"
        while self.fd is None:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, fix=fix)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "starting"
                os.close(fd)
                raise OutputError(f"'{os.path.dirname(self.path) or '.'}' is being written by another run "
                                  f"({holder}); wait for it to end or use another {self.key}") from None
            # A run that ended removes the file while it holds the lock; if that happened between our open and our
            # flock, we hold a lock on a removed file: open the path again.
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            started = datetime.datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
            self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while holding it, so a waiting run re-opens it) and let go."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
