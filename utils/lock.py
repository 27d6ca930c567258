"""One writer at a time: an advisory lock held for the whole run on an output folder (or while a file is fetched into
the cache). The operating system releases it when the process ends, however it ends (a kill leaves no stale lock
behind)."""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
import time
from typing import Callable, Optional

from utils.io import OutputError, open_regular

__all__ = ["FolderLock", "LockTimeout"]

#: Seconds between tries while waiting for a lock with a time limit.
_POLL = 0.05


class LockTimeout(OutputError):
    """Another process still held the lock when the wait's time limit ran out; ``holder``: what it wrote in the lock
    file (process, host, start time)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class FolderLock:
    """``flock`` on the lock file ``path`` in the output folder (created, never a link); messages name the folder
    by its flag or config ``key``. A context manager, or call :meth:`acquire` and :meth:`release`."""

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key
        self.fd: Optional[int] = None

    def acquire(self, wait: bool = False, timeout: Optional[float] = None,
                on_wait: Optional[Callable[[str], None]] = None) -> "FolderLock":
        """Take the lock, or refuse when another process holds it (an :class:`OutputError` naming its process, host
        and start time). With ``wait``, wait until the holder lets go instead: for ``timeout`` seconds at most (None:
        as long as it takes), then a :class:`LockTimeout`; ``on_wait`` is called once, with what the holder wrote in
        the lock file, when the lock is busy."""
        fix = f"remove it or use another {self.key}"
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while self.fd is None:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, fix=fix)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                if not wait:
                    os.close(fd)
                    raise OutputError(f"'{os.path.dirname(self.path) or '.'}' is being written by another run "
                                      f"({holder}); wait for it to end or use another {self.key}") from None
                if on_wait is not None and not told:
                    on_wait(holder)
                told = True
                if not self._wait(fd, deadline):
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockTimeout(f"'{os.path.dirname(self.path) or '.'}' was still being written by another "
                                      f"run ({holder}) after {timeout:g} s; wait for it to end or use another "
                                      f"{self.key}", holder) from None
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

    @staticmethod
    def _holder(fd: int) -> str:
        return os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "starting"

    @staticmethod
    def _wait(fd: int, deadline: Optional[float]) -> bool:
        """Wait for the lock on ``fd`` until ``deadline`` (``time.monotonic``; None: for good); whether it was taken."""
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL, left))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                continue

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
