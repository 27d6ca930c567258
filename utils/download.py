"""Files fetched by URL into torch's cache (``$TORCH_HOME/hub/checkpoints``), verified and used offline afterwards.

A small downloader on ``urllib``: only ``http``/``https``; with ``timeout`` = ``$EDIFFIQA_FETCH_TIMEOUT`` seconds
(default 15, at most 3600), connecting waits at most ``timeout``, the answer (status line and headers, through any
redirects) must arrive within ``timeout`` of the request, and the body must bring at least :data:`MIN_BYTES` in every
``timeout`` seconds, so a server that stalls or trickles fails in about ``timeout`` seconds. A transient failure (a
refused, reset or early-closed connection, a 5xx answer, a cut transfer, a stall) is tried again after a pause,
:data:`ATTEMPTS` tries in all. Only a ``200 OK`` answer with the file itself (no ``Content-Encoding``) is taken. A
download lands in a temporary file in the cache folder and is renamed into place only when it is complete
(``Content-Length`` and the published size), matches its pinned SHA-256 and passes the caller's check (for a
checkpoint: it loads as its variant's); only then is an unpinned file's SHA-256 recorded beside it (``<file>.sha256``,
trust on first use) and checked at every later use. A cached file that verifies is used with no lock and no write; the
lock (:class:`utils.lock.FolderLock`) is taken only to download, so that processes fetching the same file at once get
one good file. ``$EDIFFIQA_MIRROR`` serves mirrors and air-gapped sites.
"""
from __future__ import annotations

import errno
import functools
import glob
import hashlib
import http.client
import io
import logging
import math
import os
import re
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit

import torch.hub
from tqdm import tqdm

from utils.errors import CheckpointError, ConfigError, RunError, first_line
from utils.io import OutputError, _file_mode, atomic_open, sha256_of
from utils.lock import FolderLock, LockTimeout

__all__ = ["MIRROR_ENV", "TIMEOUT_ENV", "DEFAULT_TIMEOUT", "MAX_TIMEOUT", "MIN_BYTES", "ATTEMPTS", "WAIT_TIMEOUTS",
           "Check", "cache_dir", "source_url", "fetch_timeout", "fetch"]

_logger = logging.getLogger(__name__)

#: Replaces the scheme and host of every source URL, whose path is appended to the mirror's: ``http://host:8765``
#: or ``https://host/weights`` (no user name, query or fragment).
MIRROR_ENV = "EDIFFIQA_MIRROR"
#: Seconds a connect, the answer's headers, and each :data:`MIN_BYTES` of the body may take.
TIMEOUT_ENV = "EDIFFIQA_FETCH_TIMEOUT"
DEFAULT_TIMEOUT = 15.0
#: The largest ``$EDIFFIQA_FETCH_TIMEOUT`` taken (an hour); larger values are refused at start-up.
MAX_TIMEOUT = 3600.0
#: A body that brings fewer bytes than this in any ``$EDIFFIQA_FETCH_TIMEOUT`` seconds has stalled (64 KiB: 4.4 kB/s
#: at the default timeout; a server that trickles a byte at a time fails instead of holding the fetch for days).
MIN_BYTES = 1 << 16
#: Tries of a download in all (the first and the retries after a transient failure).
ATTEMPTS = 3
#: A process waiting for another's download gives up when that download has not grown for this many timeouts (a
#: download that goes on writes at least :data:`MIN_BYTES` to its temporary file in each).
WAIT_TIMEOUTS = 4
#: ``check(path, label)`` raises :class:`CheckpointError` unless the file at ``path`` is what was asked for; its
#: messages name the file as ``label``.
Check = Callable[[str, str], None]

_SCHEMES = ("http", "https")
_BLOCK = 1 << 16


def cache_dir() -> str:
    """torch's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() in _SCHEMES and bool(parts.hostname)


def source_url(url: str) -> str:
    """``url``, or its path on the mirror ``$EDIFFIQA_MIRROR`` when that is set; a mirror that is not
    ``http(s)://host[:port][/path]``, or else a ``url`` that is not ``http``/``https``, is a :class:`ConfigError`."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        if not _is_http(url):
            raise ConfigError(f"the source address {url!r} is not an http:// or https:// URL; only those are "
                              f"fetched: set {MIRROR_ENV} to an http(s) mirror, or pass the file with --weights")
        return url
    problem = _mirror_problem(mirror)
    if problem:
        shown = re.sub(r"//.*@", "//***@", mirror)  # a password is never echoed
        raise ConfigError(f"{MIRROR_ENV}={shown!r} is not an http(s)://host[:port][/path] address ({problem}); set "
                          "it to the mirror's address (each source URL's path is appended to it), or unset it to "
                          "fetch from the published sources")
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _mirror_problem(mirror: str) -> str:
    """Why ``mirror`` is not ``http(s)://host[:port][/path]``; empty when it is."""
    if "@" in mirror:
        return "it holds a user name or password; a mirror is fetched without them"
    if any(c.isspace() or not c.isprintable() for c in mirror):
        return "it holds a space or a control character"
    if "?" in mirror or "#" in mirror:
        return f"it has a {'query' if '?' in mirror else 'fragment'}, which would not reach the server as meant"
    try:
        parts = urlsplit(mirror)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return "its host or port cannot be read"
    if parts.scheme.lower() not in _SCHEMES:
        return "its scheme is not http or https"
    return "" if parts.hostname else "it names no host"


def fetch_timeout() -> float:
    """Seconds a connect, the answer's headers, and each :data:`MIN_BYTES` of the body may take:
    ``$EDIFFIQA_FETCH_TIMEOUT``, else :data:`DEFAULT_TIMEOUT`; a :class:`ConfigError` unless it is a number above 0
    and at most :data:`MAX_TIMEOUT`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_TIMEOUT):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT:g}; set "
                          f"it to how long a connect, the answer's headers and each {MIN_BYTES // 1024} KiB of the "
                          f"file may take (default {DEFAULT_TIMEOUT:g}), or unset it")
    return value


def fetch(url: str, name: str, what: str, sha256: Optional[str] = None, size: Optional[int] = None,
          progress: bool = True, check: Optional[Check] = None) -> str:
    """The path of the verified cached file ``name`` (the source's own name) from ``url`` (or its mirror,
    :func:`source_url`), fetched first if the cache does not hold it; ``what`` names it in messages (``eDifFIQA(T)
    weights``). Without a pinned ``sha256`` the first download's is recorded and checked later. ``check``
    (:data:`Check`) runs on a download before it is kept and on a cached file that is not pinned before it is used.

    Raises:
        ConfigError: ``$EDIFFIQA_MIRROR`` or ``$EDIFFIQA_FETCH_TIMEOUT`` is not usable (before any network or lock).
        CheckpointError: The download failed or did not verify (the message says what arrived; nothing of it is
            kept), another process held the download lock too long, or the cached file does not verify (the
            message names the files to delete).
        RunError: The download cannot be written into the cache (a full disk, the file-size limit).
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
    if got >= 1_000_000 and f"{got / 1e6:.1f}" != f"{total / 1e6:.1f}":
        return f"{got / 1e6:.1f} of {total / 1e6:.1f} MB"
    return f"{got:,} of {total:,} bytes"


def _shown(text: str, limit: int = 160) -> str:
    """A server's text for a one-line message: on one line, and at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


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
    problem = _not_a_file(path)
    if problem:
        raise CheckpointError(f"the cache path of the {what} '{path}' {problem}; {delete}")
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
            _logger.info("using the %s placed at '%s' (SHA-256 %s; recorded, and every later use is checked against "
                         "it)", what, path, digest)
    return path


def _read_record(record: str, label: str, delete: str) -> Optional[str]:
    """The SHA-256 recorded in ``record``, or None when there is no record."""
    if not os.path.lexists(record):
        return None
    problem = _not_a_file(record)
    if not problem:
        try:
            with open(record, "rb") as handle:
                words = handle.read(4096).decode("utf-8").split()
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        else:
            # Ours holds the digest; sha256sum's form ("<digest>  <name>") is read too.
            if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
                return words[0].lower()
            problem = "does not hold a SHA-256 (64 hexadecimal digits)"
    raise CheckpointError(f"the SHA-256 record '{record}' of {label} {problem}; {delete}")


def _not_a_file(path: str) -> str:
    """Why ``path`` cannot be read as a regular file ("" when it can)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be used ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    return "" if stat.S_ISREG(mode) else "is not a regular file"


def _write_text(path: str, text: str) -> None:
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
    folder = os.path.dirname(path)
    full = (f"cannot write the {what} into torch's cache folder '{folder}' ({{}}); make room (or raise the file-size "
            "limit) and run again, or set TORCH_HOME to another folder")
    for attempt in range(ATTEMPTS):
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=folder)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunError(full.format(exc.strerror or exc)) from None
            raise CheckpointError(f"cannot write the {what} into torch's cache folder '{folder}' "
                                  f"({exc.strerror or exc}); set TORCH_HOME to a writable folder, or pass the file "
                                  "with --weights") from None
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    got, kind, digest = _transfer(url, handle, size, timeout, progress, os.path.basename(path))
                    os.fsync(handle.fileno())
            except _Failed as exc:
                if exc.transient and attempt + 1 < ATTEMPTS:
                    pause = min(2.0 ** attempt, timeout / 5)
                    _logger.info("fetching %s failed (%s); trying again in %g s", url, exc.reason, pause)
                    time.sleep(pause)
                    continue
                tries = f"; {attempt + 1} tries" if exc.transient else ""
                raise CheckpointError(f"cannot fetch the {what} from {url} ({exc.reason}{tries}); {by_hand}") from None
            except OSError as exc:  # writing the temporary file (the network's errors are _Failed): not the input's
                raise RunError(full.format(exc.strerror or exc)) from None
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
        raise CheckpointError(f"the file downloaded for the {what} from {url} is an HTML page ({_kind(kind)}, "
                              f"{got:,} bytes), not the file; {nothing}")
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
    _logger.info("fetched the %s from %s into '%s' (%s bytes, SHA-256 %s%s)", what, url, path, f"{got:,}", digest,
                 "" if sha256 else "; recorded, and every later use is checked against it")


def _is_html(head: bytes, kind: str) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return True
    return kind in ("text/html", "application/xhtml+xml") and start.startswith(b"<")


def _kind(kind: str) -> str:
    """The answer's ``Content-Type`` for messages."""
    return _shown(kind) if kind else "no Content-Type"


def _transfer(url: str, handle, size: Optional[int], timeout: float, progress: bool,
              name: str) -> Tuple[int, str, str]:
    """Stream ``url`` into ``handle``; ``(bytes received, content type or "", SHA-256)`` of a transfer that ended as
    the server announced. What arrives is written through at once, so that a process waiting for this download sees
    it grow. :class:`_Failed`: no answer in time, an answer other than ``200 OK`` with the file itself, a stall (less
    than :data:`MIN_BYTES` in ``timeout`` seconds), a cut, or more (or, by ``Content-Length``, other) bytes than the
    published ``size``.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "ediffiqa-fetch", "Accept-Encoding": "identity"})
    try:
        response = _opener(time.monotonic() + timeout).open(request, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeouts, OSError, HTTPException: classified
        if hasattr(exc, "close"):  # an HTTPError holds the answer open
            exc.close()
        raise _failure(exc, timeout, 0) from None
    got = 0
    with response:
        if response.status != 200:  # 206 (a part), 204 (nothing), ...: never the whole file
            raise _Failed(f"HTTP {response.status} {_shown(response.reason)}, not 200 OK with the file", False)
        encoding = (response.headers.get("Content-Encoding") or "").strip()
        if encoding.lower() not in ("", "identity"):
            raise _Failed(f"the server sent it {_shown(encoding, 20)}-encoded (Content-Encoding), not as the file "
                          "itself", False)
        kind = response.headers.get_content_type() if response.headers.get("Content-Type") else ""
        length = _content_length(response.headers.get("Content-Length"))
        if size is not None and length is not None and length != size:
            what = "an HTML page" if kind in ("text/html", "application/xhtml+xml") else "a file"
            raise _Failed(f"the server announces {what} of {length:,} bytes ({_kind(kind)}), not the published "
                          f"{size:,} bytes; nothing was downloaded", False)
        total = length if length is not None else size
        digest = hashlib.sha256()
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=name, disable=not progress,
                  file=sys.stderr) as bar:  # MB of 10^6 bytes, as the messages count
            while True:
                try:
                    block = response.read1(_BLOCK)  # what has arrived: a stall after it loses nothing
                except Exception as exc:  # noqa: BLE001 - stalls, resets, IncompleteRead: classified
                    raise _failure(exc, timeout, got, total) from None
                if not block:
                    break
                got += len(block)
                if size is not None and got > size:
                    raise _Failed(f"more than the published {size:,} bytes arrived; stopped at {got:,}", False)
                digest.update(block)
                handle.write(block)
                handle.flush()
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


class _Slow(TimeoutError):
    """The server was slower than the clock allows (:class:`_Clock`): ``body`` false, the headers were not complete
    in time (``received`` bytes of them had come); true, ``window`` bytes came in the last ``timeout`` seconds."""

    def __init__(self, body: bool, received: int, window: int) -> None:
        super().__init__("too slow")
        self.body, self.received, self.window = body, received, window


class _Closed(ConnectionError):
    """The connection was closed before the answer's headers were complete (``received`` bytes of them came)."""

    def __init__(self, received: int) -> None:
        super().__init__("closed early")
        self.received = received


class _Clock(io.RawIOBase):
    """A connection's reader that holds the server to the fetch's pace: the answer's status line and headers by
    ``deadline`` (``time.monotonic()``), then at least :data:`MIN_BYTES` of the body in every ``timeout`` seconds
    (each window starts when the one before has its bytes). Each socket read waits only for what is left of the
    current window, so a trickle fails when its window ends (:class:`_Slow`), not at a per-read timeout it keeps
    resetting."""

    def __init__(self, raw, sock, deadline: float, timeout: float) -> None:
        super().__init__()
        self.raw, self.sock, self.deadline, self.timeout = raw, sock, deadline, timeout
        self.body = False
        self.received = 0  # bytes of the status line and headers (and what came with them)
        self.window = 0  # bytes of the body in the current window
        self.eof = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def start_body(self) -> None:
        self.body, self.window, self.deadline = True, 0, time.monotonic() + self.timeout

    def readinto(self, buffer) -> Optional[int]:
        try:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            n = self.raw.readinto(buffer)
        except TimeoutError:
            raise _Slow(self.body, self.received, self.window) from None
        if n is None:  # nothing yet (a non-blocking socket): as the socket's own reader says
            return n
        if not n:
            self.eof = True
        elif not self.body:
            self.received += n
        else:
            self.window += n
            if self.window >= MIN_BYTES:
                self.window, self.deadline = 0, time.monotonic() + self.timeout
        return n

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    """An answer read through a :class:`_Clock`; an answer whose headers end in a closed connection is
    :class:`_Closed` (http.client would take the headers that came, and an empty body)."""

    def __init__(self, sock, *args, deadline: float, timeout: float, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self.clock = _Clock(self.fp.detach(), sock, deadline, timeout)
        self.fp = io.BufferedReader(self.clock)

    def begin(self) -> None:
        try:
            super().begin()
        except http.client.HTTPException:
            if self.clock.eof:
                raise _Closed(self.clock.received) from None
            raise
        if self.clock.eof:
            raise _Closed(self.clock.received)
        self.clock.start_body()


def _clocked(base):
    """``base`` (an ``http.client`` connection class) answering through :class:`_Response`, due by ``deadline``."""
    class Connection(base):
        def __init__(self, *args, deadline: float, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.response_class = functools.partial(_Response, deadline=deadline, timeout=self.timeout)

    return Connection


_Plain, _Secure = _clocked(http.client.HTTPConnection), _clocked(http.client.HTTPSConnection)


class _HTTPHandler(urllib.request.HTTPHandler):
    deadline = 0.0  # set by _opener

    def http_open(self, req):
        return self.do_open(functools.partial(_Plain, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    deadline = 0.0  # set by _opener

    def https_open(self, req):
        return self.do_open(functools.partial(_Secure, deadline=self.deadline), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only; one line for a loop or an address that cannot be read."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI") or ""
        answer = f"HTTP {code} {_shown(msg)}"
        try:
            scheme = urlsplit(location).scheme.lower()
        except ValueError:
            scheme = None
        if scheme not in ("", "http", "https"):
            fp.close()
            raise _Failed(f"{answer} redirects to {_shown(location)!r}, not an http(s) address", False)
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as exc:
            if not str(exc.msg).startswith(self.inf_msg):
                raise
            exc.close()
            raise _Failed(f"a redirect loop ({answer}, to an address already visited {self.max_repeats} times "
                          f"or after {self.max_redirections} redirects)", False) from None
        except ValueError:
            raise _Failed(f"{answer} redirects to an address that cannot be read ({_shown(location)!r})",
                          False) from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    """urllib for http and https only: proxies from the environment, redirects to http(s) followed, the answer
    (through all redirects) due by ``deadline`` (``time.monotonic()``) and its body read under the clock
    (:class:`_Clock`)."""
    request = urllib.request
    opener = request.OpenerDirector()
    http_handler, https_handler = _HTTPHandler(), _HTTPSHandler()
    http_handler.deadline = https_handler.deadline = deadline
    for handler in (request.ProxyHandler(), request.UnknownHandler(), http_handler, request.HTTPDefaultErrorHandler(),
                    _Redirects(), request.HTTPErrorProcessor(), https_handler):
        opener.add_handler(handler)
    return opener


def _failure(exc: BaseException, timeout: float, got: int, total: Optional[int] = None) -> _Failed:
    """What a failed open or read means, in one line, and whether another try may succeed."""
    if isinstance(exc, _Failed):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        return _Failed(f"HTTP {exc.code} {_shown(exc.reason)}", exc.code >= 500 or exc.code in (408, 429))
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return _Failed(_shown(exc.reason), False)
        exc = exc.reason
    sofar = "" if not got else (f" after {_fraction(got, total)}" if total else f" after {_amount(got)}")
    wait = f"; {TIMEOUT_ENV} sets the seconds to wait"
    if isinstance(exc, _Slow):
        if not exc.body:
            if exc.received:
                return _Failed(f"the answer's headers did not arrive within {timeout:g} s ({exc.received:,} bytes of "
                               f"them did){wait}", True)
            return _Failed(f"no answer for {timeout:g} s{wait}", True)
        came = f"{exc.window:,} bytes" if exc.window else "no data"
        return _Failed(f"the server stalled: {came} in {timeout:g} s{sofar} (at least {MIN_BYTES // 1024} KiB must "
                       f"arrive in every {timeout:g} s){wait}", True)
    if isinstance(exc, _Closed):
        if exc.received:
            return _Failed(f"the connection was closed before the answer's headers were complete ({exc.received:,} "
                           "bytes of them arrived)", True)
        return _Failed("the connection was closed before an answer arrived", True)
    if isinstance(exc, TimeoutError):  # connecting, or sending the request
        return _Failed(f"no answer for {timeout:g} s{wait}", True)
    if isinstance(exc, http.client.IncompleteRead):
        return _Failed(f"the transfer was cut{sofar}", True)
    if isinstance(exc, ConnectionRefusedError):
        return _Failed("connection refused", True)
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return _Failed(f"the connection was closed{sofar} ({_shown(first_line(exc))})", True)
    if isinstance(exc, http.client.BadStatusLine):
        return _Failed(f"not an HTTP answer: it begins with {_shown(repr(exc.line), 60)}", False)
    if isinstance(exc, http.client.HTTPException):
        return _Failed(f"not an HTTP answer ({_shown(first_line(exc))})", False)
    if isinstance(exc, OSError):
        return _Failed(_shown(exc.strerror or first_line(exc)), False)
    return _Failed(_shown(first_line(exc)), False)
