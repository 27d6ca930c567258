"""Files fetched by URL into torch's cache (``$TORCH_HOME/hub/checkpoints``), verified and used offline afterwards.

A small downloader on ``urllib``: only ``http``/``https``; every connect and every read waits at most
``$EDIFFIQA_FETCH_TIMEOUT`` seconds (default 15); a transient failure (a refused or reset connection, a 5xx answer, a
cut transfer, a timeout) is tried again after a pause, :data:`ATTEMPTS` tries in all. A download lands in a temporary
file in the cache folder and is renamed into place only when it is complete (``Content-Length`` and the published
size), matches its pinned SHA-256 and passes the caller's check (for a checkpoint: it loads as its variant's); only
then is an unpinned file's SHA-256 recorded beside it (``<file>.sha256``, trust on first use) and checked at every
later use. A cached file that verifies is used with no lock and no write; the lock (:class:`utils.lock.FolderLock`)
is taken only to download, so that processes fetching the same file at once get one good file.
``$EDIFFIQA_MIRROR`` serves mirrors and air-gapped sites.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import re
import stat
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit

from utils.errors import CheckpointError, ConfigError, first_line
from utils.io import OutputError, _file_mode, sha256_of
from utils.lock import FolderLock, LockTimeout

__all__ = ["MIRROR_ENV", "TIMEOUT_ENV", "DEFAULT_TIMEOUT", "ATTEMPTS", "WAIT_TIMEOUTS", "Check", "cache_dir",
           "source_url", "fetch_timeout", "fetch"]

_logger = logging.getLogger(__name__)

#: Replaces the scheme and host of every source URL (the path is kept): ``http://127.0.0.1:8765``.
MIRROR_ENV = "EDIFFIQA_MIRROR"
#: Seconds each connect and each read may wait for the server.
TIMEOUT_ENV = "EDIFFIQA_FETCH_TIMEOUT"
DEFAULT_TIMEOUT = 15.0
#: Tries of a download in all (the first and the retries after a transient failure).
ATTEMPTS = 3
#: A process waiting for another's download gives up when that download has not grown for this many timeouts.
WAIT_TIMEOUTS = 4
#: ``check(path, label)`` raises :class:`CheckpointError` unless the file at ``path`` is what was asked for; its
#: messages name the file as ``label``.
Check = Callable[[str, str], None]

_SCHEMES = ("http", "https")
_BLOCK = 1 << 16


def cache_dir() -> str:
    """torch's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() in _SCHEMES and bool(parts.hostname)


def source_url(url: str) -> str:
    """``url``, or its path on the mirror ``$EDIFFIQA_MIRROR`` when that is set.

    Raises:
        ConfigError: The mirror, or ``url`` where no mirror is set, is not an ``http``/``https`` address.
    """
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        if not _is_http(url):
            raise ConfigError(f"the source address {url!r} is not an http:// or https:// URL; only those are "
                              f"fetched: set {MIRROR_ENV} to an http(s) mirror, or pass the file with --weights")
        return url
    if not _is_http(mirror):
        raise ConfigError(f"{MIRROR_ENV}={mirror!r} is not an http:// or https:// address; set it to the mirror's "
                          "http(s)://host[:port] (each source URL's path is kept), or unset it to fetch from the "
                          "published sources")
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def fetch_timeout() -> float:
    """Seconds each connect and read may wait: ``$EDIFFIQA_FETCH_TIMEOUT``, else :data:`DEFAULT_TIMEOUT`.

    Raises:
        ConfigError: The variable is not a finite number above 0.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds above 0; set it to how long each "
                          f"connect and read may wait (default {DEFAULT_TIMEOUT:g}), or unset it")
    return value


def fetch(url: str, name: str, what: str, sha256: Optional[str] = None, size: Optional[int] = None,
          progress: bool = True, check: Optional[Check] = None) -> str:
    """The cached file ``name`` from ``url``, fetched first if the cache does not hold it.

    Args:
        url: Where the file is published (see :func:`source_url` for mirrors).
        name: Its file name in the cache (the source's own name).
        what: What it is, for messages (``eDifFIQA(T) weights``).
        sha256: Its pinned SHA-256, or None (then the first download's is recorded and checked later).
        size: Its size in bytes, when known.
        progress: Show a progress bar while downloading.
        check: Checks that a file is what was asked for (see :data:`Check`); run on a download before it is kept
            and on a cached file that is not pinned before it is used.

    Returns:
        The path of the verified file.

    Raises:
        ConfigError: ``$EDIFFIQA_MIRROR`` or ``$EDIFFIQA_FETCH_TIMEOUT`` is not usable (before any network or lock).
        CheckpointError: The download failed or did not verify (the message says what arrived; nothing of it is
            kept), another process held the download lock too long, or the cached file does not verify (the
            message names the files to delete).
    """
    url = source_url(url)
    timeout = fetch_timeout()
    folder = cache_dir()
    path = os.path.join(folder, name)
    found = _cached(path, what, sha256, check)
    if found is not None:
        return found
    lock = _lock(path, what, timeout)
    try:
        found = _cached(path, what, sha256, check)  # fetched by the process we waited for
        if found is not None:
            return found
        for stale in _partials(path):  # left by a download that was killed
            try:
                os.remove(stale)
            except OSError:
                pass
        _download(url, path, what, sha256, size, progress, check, timeout)
        return path
    finally:
        lock.release()


def _partials(path: str) -> List[str]:
    return sorted(glob.glob(glob.escape(path) + ".*.partial"))


def _amount(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


def _fraction(got: int, total: int) -> str:
    if got >= 1_000_000:
        return f"{got / 1e6:.1f} of {total / 1e6:.1f} MB"
    return f"{got:,} of {total:,} bytes"


def _delete(path: str, record: Optional[str]) -> str:
    both = f"'{path}' and '{record}'" if record else f"'{path}'"
    return f"delete {both} to fetch it again"


# --------------------------------------------------------------------------------------------------- the cache


def _cached(path: str, what: str, sha256: Optional[str], check: Optional[Check]) -> Optional[str]:
    """``path`` when the cache holds the verified file there, None when it holds nothing there; reads only, except
    that the SHA-256 of a file placed by hand is recorded (when the folder can be written)."""
    if not os.path.lexists(path):
        return None
    record = None if sha256 is not None else path + ".sha256"
    delete = _delete(path, record if record and os.path.lexists(record) else None)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"the cache path of the {what} '{path}' cannot be used ({exc.strerror or exc}); "
                              f"{delete}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"the cache path of the {what} '{path}' is {kind}; {delete}")
    label = f"the cached file for the {what} ('{path}')"
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}; make it readable, or {delete}") from None
    if sha256 is not None:
        if digest != sha256:
            raise CheckpointError(f"{label} does not match its published SHA-256 ({digest} instead of {sha256}); "
                                  f"{delete}")
        return path
    expected = _read_record(record, label, delete)
    if expected is not None and digest != expected:
        raise CheckpointError(f"{label} does not match the SHA-256 recorded at its download ('{record}'): {digest} "
                              f"instead of {expected}, so the file changed after it was fetched; {delete}")
    if check is not None:
        try:
            check(path, label)
        except CheckpointError as exc:
            raise CheckpointError(f"{first_line(exc)}; {_delete(path, record if expected else None)}") from None
    if expected is None:  # placed in the cache by hand: its hash is recorded now, where the folder can be written
        try:
            _write_text(record, digest + "\n")
        except OutputError as exc:
            _logger.warning("using the %s placed at '%s' (SHA-256 %s) without recording its SHA-256 (%s)", what,
                            path, digest, first_line(exc))
        else:
            print(f"using the {what} placed at '{path}' (SHA-256 {digest}; recorded, and every later use is checked "
                  "against it)", file=sys.stderr)
    return path


def _read_record(record: str, label: str, delete: str) -> Optional[str]:
    """The SHA-256 recorded in ``record``, or None when there is no record."""
    if not os.path.lexists(record):
        return None
    try:
        mode = os.stat(record).st_mode
    except OSError as exc:
        problem = f"cannot be used ({exc.strerror or exc})"
    else:
        if stat.S_ISDIR(mode):
            problem = "is a folder"
        elif not stat.S_ISREG(mode):
            problem = "is not a regular file"
        else:
            try:
                with open(record, "rb") as handle:
                    raw = handle.read(4096)
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror or exc})"
            else:
                try:
                    words = raw.decode("utf-8").split()
                except UnicodeDecodeError:
                    problem = "is not UTF-8 text"
                else:
                    # Ours holds the digest; sha256sum's form ("<digest>  <name>") is read too.
                    if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
                        return words[0].lower()
                    problem = "does not hold a SHA-256 (64 hexadecimal digits)"
    raise CheckpointError(f"the SHA-256 record '{record}' of {label} {problem}; {delete}")


def _write_text(path: str, text: str) -> None:
    from utils.io import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------------------------------- the lock


def _lock(path: str, what: str, timeout: float) -> FolderLock:
    """The download lock of ``path``, taken: a process that must wait says so once, and gives up when the holder's
    download has not grown for ``WAIT_TIMEOUTS * timeout`` seconds."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CheckpointError(f"torch's cache folder '{folder}' does not hold the {what} and cannot be written "
                              f"({exc.strerror or exc}); set TORCH_HOME to a writable folder, save the file by hand "
                              f"as '{path}', or pass its path with --weights") from None
    lock = FolderLock(path + ".lock", "TORCH_HOME")
    bound = WAIT_TIMEOUTS * timeout

    told = []

    def waiting(holder: str) -> None:
        if told:
            return
        told.append(holder)
        print(f"waiting for another process to fetch the {what} into '{path}' ({holder}; giving up after {bound:g} s "
              "without progress)", file=sys.stderr)

    grown = _grown(path)
    while True:
        try:
            return lock.acquire(wait=True, timeout=bound, on_wait=waiting)
        except LockTimeout as exc:
            now = _grown(path)
            if now and now != grown:  # the holder's download is still growing: wait on
                grown = now
                continue
            raise CheckpointError(f"another process holds the download lock '{lock.path}' ({exc.holder}) and its "
                                  f"download of the {what} has not grown for {bound:g} s ({WAIT_TIMEOUTS} times "
                                  f"{TIMEOUT_ENV}); wait for it to end or stop it, then run again, or pass the file "
                                  "with --weights") from None
        except OutputError as exc:  # the lock file is a link, a folder, ...: the message names it and the fix
            raise CheckpointError(f"{first_line(exc)}, or pass the {what} with --weights") from None


def _grown(path: str) -> Tuple[Tuple[str, int], ...]:
    """Names and sizes of the downloads in progress of ``path``."""
    out = []
    for partial in _partials(path):
        try:
            out.append((partial, os.path.getsize(partial)))
        except OSError:
            pass
    return tuple(out)


# ------------------------------------------------------------------------------------------------ the transfer


class _Failed(Exception):
    """A try that failed: its one-line reason, and whether another try may succeed."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def _download(url: str, path: str, what: str, sha256: Optional[str], size: Optional[int], progress: bool,
              check: Optional[Check], timeout: float) -> None:
    """Fetch ``url`` into ``path`` (the lock held), trying a transient failure again; nothing is kept of a download
    that does not verify."""
    by_hand = (f"check the network or the mirror ({MIRROR_ENV}), download the file by hand and save it as '{path}', "
               "or pass its path with --weights")
    for attempt in range(ATTEMPTS):
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial",
                                       dir=os.path.dirname(path))
        except OSError as exc:
            raise CheckpointError(f"cannot write the {what} into torch's cache folder '{os.path.dirname(path)}' "
                                  f"({exc.strerror or exc}); set TORCH_HOME to a writable folder, or pass the file "
                                  "with --weights") from None
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    got, kind, digest = _transfer(url, handle, size, timeout, progress, os.path.basename(path))
                    handle.flush()
                    os.fsync(handle.fileno())
            except _Failed as exc:
                if exc.transient and attempt + 1 < ATTEMPTS:
                    pause = min(2.0 ** attempt, timeout / 5)
                    _logger.info("fetching %s failed (%s); trying again in %g s", url, exc.reason, pause)
                    time.sleep(pause)
                    continue
                tries = f"; {attempt + 1} tries" if exc.transient else ""
                raise CheckpointError(f"cannot fetch the {what} from {url} ({exc.reason}{tries}); {by_hand}") from None
            except OSError as exc:  # writing the temporary file: a full disk, a quota
                raise CheckpointError(f"cannot write the {what} into torch's cache folder '{os.path.dirname(path)}' "
                                      f"({exc.strerror or exc}); free some space or set TORCH_HOME to another "
                                      "folder") from None
            _keep(tmp, path, url, what, sha256, size, check, got, kind, digest, by_hand)
            return
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)


def _keep(tmp: str, path: str, url: str, what: str, sha256: Optional[str], size: Optional[int],
          check: Optional[Check], got: int, kind: str, digest: str, by_hand: str) -> None:
    """Move the complete download ``tmp`` into place once it verifies; otherwise say what arrived."""
    label = f"the file downloaded for the {what} from {url} ({_amount(got)})"
    nothing = f"nothing was kept; {by_hand}"
    with open(tmp, "rb") as handle:
        head = handle.read(512)
    if _is_html(head, kind):
        raise CheckpointError(f"the file downloaded for the {what} from {url} is an HTML page ({kind}, {got:,} bytes), "
                              f"not the file; {nothing}")
    if size is not None and got != size:
        raise CheckpointError(f"{label} is not the published {size:,} bytes; {nothing}")
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"{label} does not have the published SHA-256 {sha256} (a damaged transfer or another "
                              f"file); {nothing}")
    if check is not None:
        try:
            check(tmp, label)
        except CheckpointError as exc:
            raise CheckpointError(f"{first_line(exc)}; {nothing}") from None
    os.chmod(tmp, _file_mode())
    if sha256 is None:
        # Recorded before the file is in place, so that a process looking at the cache meanwhile finds both. Without
        # a record the next use checks the file and records it then.
        try:
            _write_text(path + ".sha256", digest + "\n")
        except OutputError as exc:
            _logger.warning("the SHA-256 of the %s was not recorded (%s)", what, first_line(exc))
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"cannot put the {what} in place at '{path}' ({exc.strerror or exc}); delete what is "
                              "there, or pass the file with --weights") from None
    print(f"fetched the {what} from {url} into '{path}' ({got:,} bytes, SHA-256 {digest}"
          f"{'' if sha256 else '; recorded, and every later use is checked against it'})", file=sys.stderr)


def _is_html(head: bytes, kind: str) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return True
    return kind in ("text/html", "application/xhtml+xml") and start.startswith(b"<")


def _opener():
    """urllib for http and https only: proxies from the environment, redirects followed (to http/https only, as no
    other scheme has a handler)."""
    import urllib.request as request

    opener = request.OpenerDirector()
    for handler in (request.ProxyHandler(), request.UnknownHandler(), request.HTTPHandler(),
                    request.HTTPDefaultErrorHandler(), request.HTTPRedirectHandler(), request.HTTPErrorProcessor(),
                    request.HTTPSHandler()):
        opener.add_handler(handler)
    return opener


def _transfer(url: str, handle, size: Optional[int], timeout: float, progress: bool,
              name: str) -> Tuple[int, str, str]:
    """Stream ``url`` into ``handle``; ``(bytes received, content type, SHA-256)`` of a transfer that ended as the
    server announced.

    Raises:
        _Failed: No answer, an HTTP error, a stall, a cut, or more (or, by ``Content-Length``, other) bytes than the
            published ``size``.
    """
    import urllib.request

    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "ediffiqa-fetch", "Accept-Encoding": "identity"})
    try:
        response = _opener().open(request, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeouts, OSError, HTTPException: classified
        if hasattr(exc, "close"):  # an HTTPError holds the answer open
            exc.close()
        raise _failure(exc, timeout, 0) from None
    got = 0
    with response:
        kind = response.headers.get_content_type()
        length = _content_length(response.headers.get("Content-Length"))
        if size is not None and length is not None and length != size:
            what = "an HTML page" if kind in ("text/html", "application/xhtml+xml") else "a file"
            raise _Failed(f"the server announces {what} of {length:,} bytes ({kind}), not the published {size:,} "
                          "bytes; nothing was downloaded", False)
        total = length if length is not None else size
        digest = hashlib.sha256()
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
                  file=sys.stderr) as bar:
            while True:
                try:
                    block = response.read1(_BLOCK)  # what has arrived: a stall after it loses nothing
                except Exception as exc:  # noqa: BLE001 - timeouts, resets, IncompleteRead: classified
                    raise _failure(exc, timeout, got, total) from None
                if not block:
                    break
                got += len(block)
                if size is not None and got > size:
                    raise _Failed(f"more than the published {size:,} bytes arrived; stopped at {got:,}", False)
                digest.update(block)
                handle.write(block)
                bar.update(len(block))
    if total is not None and got < total:
        raise _Failed(f"{_fraction(got, total)} (the transfer was cut)", True)
    return got, kind, digest.hexdigest()


def _content_length(value: Optional[str]) -> Optional[int]:
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _failure(exc: BaseException, timeout: float, got: int, total: Optional[int] = None) -> _Failed:
    """What a failed open or read means, in one line, and whether another try may succeed."""
    import http.client
    from urllib.error import HTTPError, URLError

    if isinstance(exc, HTTPError):
        return _Failed(f"HTTP {exc.code} {exc.reason}", exc.code >= 500 or exc.code in (408, 429))
    if isinstance(exc, URLError):
        if not isinstance(exc.reason, BaseException):
            return _Failed(str(exc.reason), False)
        exc = exc.reason
    sofar = "" if not got else (f" after {_fraction(got, total)}" if total else f" after {_amount(got)}")
    if isinstance(exc, TimeoutError):
        what = "the server stalled: no data" if got else "no answer"
        return _Failed(f"{what} for {timeout:g} s{sofar}; {TIMEOUT_ENV} sets the seconds to wait", True)
    if isinstance(exc, http.client.IncompleteRead):
        return _Failed(f"the transfer was cut{sofar}", True)
    if isinstance(exc, ConnectionRefusedError):
        return _Failed("connection refused", True)
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe, closed without an answer
        return _Failed(f"the connection was closed{sofar} ({first_line(exc)})", True)
    if isinstance(exc, http.client.HTTPException):
        return _Failed(f"not an HTTP answer ({first_line(exc)})", False)
    if isinstance(exc, OSError):
        return _Failed(exc.strerror or first_line(exc), False)
    return _Failed(first_line(exc), False)
