"""Files fetched by URL into torch's cache (``$TORCH_HOME/hub/checkpoints``), verified and used offline afterwards.

``torch.hub.download_url_to_file`` does the transfer (a progress bar, a temporary file renamed into place, an
optional SHA-256 check). Around it: a lock (:class:`utils.lock.FolderLock`), so that processes fetching the same file
at once get one good file; a pinned SHA-256 (and size) where one is known; otherwise the SHA-256 of the first
download recorded beside the file (``<file>.sha256``) and checked at every later use; ``EDIFFIQA_MIRROR`` for mirrors
and air-gapped sites.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Optional
from urllib.parse import urlsplit

from utils.errors import CheckpointError, first_line
from utils.io import OutputError, sha256_of
from utils.lock import FolderLock

__all__ = ["MIRROR_ENV", "cache_dir", "source_url", "fetch"]

#: Replaces the scheme and host of every source URL (the path is kept): ``http://127.0.0.1:8765``.
MIRROR_ENV = "EDIFFIQA_MIRROR"


def cache_dir() -> str:
    """torch's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def source_url(url: str) -> str:
    """``url``, or its path on the mirror ``$EDIFFIQA_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def fetch(url: str, name: str, what: str, sha256: Optional[str] = None, size: Optional[int] = None,
          progress: bool = True) -> str:
    """The cached file ``name`` from ``url``, fetched first if the cache does not hold it.

    Args:
        url: Where the file is published (see :func:`source_url` for mirrors).
        name: Its file name in the cache (the source's own name).
        what: What it is, for messages (``eDifFIQA(T) weights``).
        sha256: Its pinned SHA-256, or None (then the first download's is recorded and checked later).
        size: Its size in bytes, when known.
        progress: Show a progress bar while downloading.

    Returns:
        The path of the verified file.

    Raises:
        CheckpointError: The download failed (names the URL and where to put the file by hand), or the file does not
            match its pinned or recorded SHA-256 (nothing of a failed download is left in the cache).
    """
    folder = cache_dir()
    path = os.path.join(folder, name)
    # Processes fetching the same file at once: the second waits, then finds it in the cache.
    lock = FolderLock(path + ".lock", "TORCH_HOME")
    try:
        os.makedirs(folder, exist_ok=True)
        lock.acquire(wait=True)
    except OutputError as exc:  # the lock file is a link, a folder, ...: the message names it and the fix
        raise CheckpointError(f"{first_line(exc)}, or pass the {what} with --weights") from None
    except OSError as exc:
        raise CheckpointError(f"cannot use torch's cache folder '{folder}' for the {what}: {exc.strerror or exc}; set "
                              "TORCH_HOME to a writable folder, or pass the file with --weights") from None
    try:
        for stale in glob.glob(glob.escape(path) + ".*.partial"):  # left by a download that was killed
            os.remove(stale)
        if not os.path.exists(path):
            _download(source_url(url), path, what, sha256, size, progress)
        return _verified(path, what, sha256, size)
    finally:
        lock.release()


def _download(url: str, path: str, what: str, sha256: Optional[str], size: Optional[int], progress: bool) -> None:
    import torch.hub

    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=sha256, progress=progress)
    except RuntimeError as exc:
        if "invalid hash value" in str(exc):
            raise CheckpointError(f"the {what} downloaded from {url} do not have the published SHA-256 {sha256} "
                                  "(a damaged transfer or another file); nothing was kept, try again or use "
                                  f"another source ({MIRROR_ENV})") from None
        raise CheckpointError(f"cannot fetch the {what} from {url} ({first_line(exc)}); download the file by hand "
                              f"and save it as '{path}', or pass its path with --weights") from None
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeouts, OSError: all mean "not fetched"
        reason = getattr(exc, "reason", None) or first_line(exc)
        raise CheckpointError(f"cannot fetch the {what} from {url} ({reason}); download the file by hand and save it "
                              f"as '{path}', or pass its path with --weights") from None
    if size is not None and os.path.getsize(path) != size:
        got = os.path.getsize(path)
        os.remove(path)
        raise CheckpointError(f"the {what} downloaded from {url} have {got} bytes, not the published {size}; nothing "
                              "was kept, try again")
    digest = sha256_of(path)
    if sha256 is None:
        _write_text(path + ".sha256", digest + "\n")
    print(f"fetched the {what} from {url} into '{path}' ({os.path.getsize(path)} bytes, SHA-256 {digest}"
          f"{'' if sha256 else '; recorded, and every later use is checked against it'})", file=sys.stderr)


def _verified(path: str, what: str, sha256: Optional[str], size: Optional[int]) -> str:
    """``path`` after checking it against its pinned SHA-256, or the one recorded at its first use."""
    record = path + ".sha256"
    digest = sha256_of(path)
    if sha256 is not None:
        expected, where = sha256, "its published SHA-256"
    elif os.path.exists(record):
        with open(record, "r", encoding="utf-8") as handle:
            expected, where = handle.read().strip(), f"the SHA-256 recorded at its download ('{record}')"
    else:  # placed in the cache by hand: its hash is recorded now
        _write_text(record, digest + "\n")
        print(f"using the {what} placed at '{path}' (SHA-256 {digest}; recorded, and every later use is checked "
              "against it)", file=sys.stderr)
        return path
    if digest != expected:
        raise CheckpointError(f"the cached {what} '{path}' do not match {where} ({digest} instead of {expected}): the "
                              "file changed after it was fetched; delete it (and its .sha256) to fetch it again")
    return path


def _write_text(path: str, text: str) -> None:
    from utils.io import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)

