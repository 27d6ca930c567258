"""Atomic file writing and safe reading of the official pickle formats.

torch is imported only where a file holds tensors: ``evaluate.py`` reads score and embedding pickles without it.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import pickle
import stat
import tempfile
import warnings
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from utils.errors import DataError, UserError, first_line

__all__ = ["atomic_open", "file_set", "write_pickle", "write_json", "write_csv", "pickle_writer", "json_writer",
           "csv_writer", "check_output_dir", "torch_load", "torch_load_reason", "safe_pickle_load", "open_regular",
           "read_regular", "read_json", "sha256_of", "file_fingerprints",
           "changed_files", "file_list", "OutputError", "TEXT_ERRORS", "PICKLE_TYPES"]

#: Text files carry file names as the OS gives them: names that are not valid UTF-8 keep their bytes
#: (``surrogateescape``), so every path written can be read back exactly.
TEXT_ERRORS = "surrogateescape"


class OutputError(UserError):
    """An output cannot be written (read-only folder, a file where a folder should be, a full disk)."""


def _file_mode() -> int:
    """``0o666`` less the process umask: what ``open`` would give a new file (``mkstemp`` gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def open_regular(path: str, flags: int = os.O_RDONLY, fix: str = "remove it") -> int:
    """The descriptor of ``os.open`` that never follows a symbolic link and admits only a regular file (``O_CREAT``
    in ``flags`` creates one); for files in an output folder, which a run must not trust. Anything else is an
    :class:`OutputError` with ``fix``."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if os.path.islink(path):
            raise OutputError(f"'{path}' is a symbolic link; a run does not follow links in its output folder: "
                              f"{fix}") from None
        raise OutputError(f"cannot open '{path}': {exc.strerror or exc}; {fix}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"'{path}' is not a regular file; {fix}")
    if getattr(os, "O_NONBLOCK", 0):
        os.set_blocking(fd, True)
    return fd


def read_regular(path: str, fix: str) -> bytes:
    """The bytes of a file of an output folder, opened by :func:`open_regular`."""
    with os.fdopen(open_regular(path, fix=fix), "rb") as handle:
        return handle.read()


def read_json(path: str, fix: str) -> Any:
    """A JSON file of an output folder (no links followed); a damaged one is one line naming it and ``fix``."""
    data = read_regular(path, fix)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is damaged ({first_line(exc)}); {fix}") from None
    except RecursionError:
        raise DataError(f"'{path}' is damaged (values nested too deeply); {fix}") from None
    except MemoryError:
        raise DataError(f"'{path}' is damaged (more values than the memory of this machine holds); {fix}") from None


def sha256_of(path: str) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def values_digest(values: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def file_fingerprints(files: Dict[str, str], values: Optional[Dict[str, Callable[[str], str]]] = None
                      ) -> Dict[str, Dict[str, Any]]:
    """``{what: {"path", "size", "sha256"}}`` of each existing file of ``files`` (``{what: path}``, ``what`` naming
    the file in messages: ``items file``); a missing file is left out (whoever reads it reports it). ``values``
    (``{what: digest function}``) adds ``values_sha256``, a digest of what the file holds, for files whose bytes
    differ between two writes of the same values; :func:`changed_files` then compares that."""
    out = {what: {"path": path, "size": os.path.getsize(path), "sha256": sha256_of(path)}
           for what, path in files.items() if os.path.isfile(path)}
    for what, digest in (values or {}).items():
        if what in out:
            out[what]["values_sha256"] = digest(out[what]["path"])
    return out


def _compared(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    """The digest two fingerprints of a file are compared by: of the values where both have it, else of the bytes."""
    return "values_sha256" if "values_sha256" in old and "values_sha256" in new else "sha256"


def changed_files(before: Dict[str, Dict[str, Any]], now: Dict[str, Dict[str, Any]]) -> List[str]:
    """What differs between two :func:`file_fingerprints` (one phrase per file, naming it and what changed): a file
    whose content differs, or one that is there on one side only."""
    changes = []
    for what in [*before, *(k for k in now if k not in before)]:
        old, new = before.get(what), now.get(what)
        if old is None or new is None:
            shown = (new or old)["path"]
            changes.append(f"{what} '{shown}' {'is new' if old is None else 'is gone'}")
        elif old[digest := _compared(old, new)] != new[digest]:
            size = (f"{old['size']} -> {new['size']} bytes" if old["size"] != new["size"] else
                    f"same size, {old['size']} bytes")
            changes.append(f"{what} '{new['path']}' has other content (SHA-256 {old['sha256'][:12]} -> "
                           f"{new['sha256'][:12]}, {size})")
    return changes


def check_output_dir(folder: str, key: str) -> None:
    """Before any work: ``folder`` exists or can be made, is a folder, and a file can be created in it; else an
    :class:`OutputError` naming the folder, its config key or flag (``key``) and the reason."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"output folder '{folder}' ({key}) is a file; choose a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"output folder '{folder}' ({key}) cannot be written: {exc.strerror or exc}; choose "
                          "another folder") from None


@contextlib.contextmanager
def file_set() -> Iterator[Callable[..., IO]]:
    """Write files that belong together as one set: each is written to a temporary beside it, and only when all
    are written are they renamed into place, so a failure (a full disk, say) leaves the previous set as it was.
    ``open_new(path, mode, encoding=None, newline=None)`` opens the next file of the set. A failed write is an
    :class:`OutputError` naming the file and what is left (the previous files unchanged, or nothing written)."""
    pending: list = []
    current = ""
    replaced = 0

    def open_new(path: str, mode: str = "wb", encoding: str | None = None, newline: str | None = None) -> IO:
        nonlocal current
        current = path  # named if its temporary cannot be created
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        errors = TEXT_ERRORS if "b" not in mode else None
        handle = os.fdopen(fd, mode, encoding=encoding, newline=newline, errors=errors)
        pending.append((handle, tmp, path))
        return handle

    try:
        yield open_new
        mode = _file_mode()
        for handle, tmp, path in pending:
            current = path
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(tmp, mode)
        for _, tmp, path in pending:
            current = path
            os.replace(tmp, path)
            replaced += 1
    except BaseException as exc:
        for handle, tmp, _ in pending:
            with contextlib.suppress(OSError):
                handle.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            failed = current or (pending[-1][2] if pending else "?")
            targets = [p for _, _, p in pending] or [failed]
            raise OutputError(f"cannot write '{failed}': {exc.strerror or exc}; "
                              f"{_left_as_it_was(targets, replaced)}") from None
        raise


def _left_as_it_was(targets: Sequence[str], replaced: int) -> str:
    """What a failed :func:`file_set` left: the first ``replaced`` of ``targets`` were renamed into place; of the
    others, those that exist are the previous files, unchanged, and the rest were never written."""
    def names(paths: Sequence[str], one: str, more: str) -> str:
        return f"{', '.join(os.path.basename(p) for p in paths)} {one if len(paths) == 1 else more}"

    done, rest = targets[:replaced], targets[replaced:]
    kept = [p for p in rest if os.path.lexists(p)]
    absent = [p for p in rest if not os.path.lexists(p)]
    if not done and not kept:
        return "nothing was written"
    parts = [names(done, "was", "were") + " written"] if done else []
    if kept:
        parts.append(f"the previous {names(kept, 'is', 'are')} unchanged")
    if absent:
        parts.append(names(absent, "was", "were") + " not written")
    return "; ".join(parts)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step, on error it is removed.

    A reader never sees a half-written file and an interrupted run never destroys an earlier result.
    """
    with file_set() as open_new:
        yield open_new(path, mode, encoding=encoding)


def pickle_writer(obj: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> Tuple[str, Callable[[IO], None]]:
    """``(mode, write)`` for :func:`write_together`: ``obj`` pickled."""
    return "wb", lambda handle: pickle.dump(obj, handle, protocol=protocol)


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as None: JSON has no such numbers (``NaN`` tokens are not JSON)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def json_writer(obj: Any) -> Tuple[str, Callable[[IO], None]]:
    """``(mode, write)`` for :func:`write_together`: ``obj`` as indented JSON (non-finite numbers as ``null``)."""
    def write(handle: IO) -> None:
        json.dump(_json_safe(obj), handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")

    return "w", write


def csv_writer(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Tuple[str, Callable[[IO], None]]:
    """``(mode, write)`` for :func:`write_together`: a CSV (RFC 4180 quoting, so paths with commas survive)."""
    def write(handle: IO) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    return "w", write


def write_together(files: Sequence[Tuple[str, Tuple[str, Callable[[IO], None]]]]) -> None:
    """Write ``[(path, writer), ...]`` as one set (see :func:`file_set`); writers come from :func:`pickle_writer`,
    :func:`json_writer` and :func:`csv_writer`."""
    with file_set() as open_new:
        for path, (mode, write) in files:
            write(open_new(path, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else ""))


def file_list(paths: Sequence[str]) -> str:
    """``paths`` for a summary line: the first as given, the others by name where they share its folder."""
    if not paths:
        return "nothing"
    folder = os.path.dirname(paths[0])
    return ", ".join([paths[0], *(os.path.basename(p) if os.path.dirname(p) == folder else p for p in paths[1:])])



def write_pickle(path: str, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    write_together([(path, pickle_writer(obj))])


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_together([(path, json_writer(obj))])


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file atomically; file names keep their bytes (:data:`TEXT_ERRORS`)."""
    write_together([(path, csv_writer(header, rows))])


def _numpy_array_globals() -> Dict[Tuple[str, str], Any]:
    """``(module, name)`` -> object: what a pickled NumPy array needs (its class, dtype and rebuilding functions)."""
    found: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # NumPy 1.x pickles name numpy.core, NumPy 2.x numpy._core; both resolve to the installed functions.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # pickle protocol 5 stores arrays out of band
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        found[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return found


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles of bytes at protocol 2 call (``_codecs.encode(text, "latin1")``); only that encoding,
    so a pickle cannot reach other codecs through it."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"refusing '_codecs.encode' with encoding {encoding!r} (bytes are latin1)")
    return text.encode("latin1")


def _bytes_from(kind: type) -> Callable[..., Any]:
    """``bytes``/``bytearray`` as a pickle may call them: from bytes or from text and its encoding (what their
    pickles hold), never from a number, which would ask for that many bytes of memory from a file of a few."""
    def build(*args: Any) -> Any:
        if not args or isinstance(args[0], (bytes, bytearray)) and len(args) == 1:
            return kind(*args)
        if isinstance(args[0], str) and 2 <= len(args) <= 3 and all(isinstance(a, str) for a in args[1:]):
            return kind(*args)
        given = ", ".join(type(a).__name__ for a in args)
        raise pickle.UnpicklingError(f"refusing '{kind.__name__}' called with {given} (its pickles give bytes or "
                                     "text; a number asks for that much memory)")
    return build


@functools.lru_cache(maxsize=None)
def _safe_globals(types: str = "official") -> Dict[Tuple[str, str], Any]:
    """``(module, name)`` -> object that a pickle of format ``types`` may name (:data:`PICKLE_TYPES`):

    - ``official``: the official pickle files (builtin containers, NumPy arrays and scalars);
    - ``verification``: insightface verification ``.bin`` files (bytes, bytearray, lists, tuples, bools, ints and
      plain NumPy arrays; no dicts, no objects).

    Python 2 pickles name ``__builtin__`` where Python 3 ones name ``builtins``: both are listed."""
    if types == "verification":
        builtin = {"list": list, "tuple": tuple, "bool": bool, "int": int, "bytes": _bytes_from(bytes),
                   "bytearray": _bytes_from(bytearray)}
        found = {(module, name): obj for module in ("builtins", "__builtin__") for name, obj in builtin.items()}
        found[("_codecs", "encode")] = _latin1_bytes
        found.update(_numpy_array_globals())
        return found
    found = {
        ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "str"): str,
        ("builtins", "int"): int, ("builtins", "float"): float, ("builtins", "bool"): bool,
        ("builtins", "bytes"): _bytes_from(bytes), ("builtins", "complex"): complex,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    found.update(_numpy_array_globals())
    scalar = np.float32(0).__reduce__()[0]
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "scalar")] = scalar
    for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool_"):
        found[("numpy", name)] = getattr(np, name)
    for cls_name in ("Float32DType", "Float64DType", "Float16DType", "Int64DType", "Int32DType", "UInt8DType",
                     "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), cls_name, None)
        if cls is not None:
            found[("numpy", cls_name)] = found[("numpy.dtypes", cls_name)] = cls
    return found


#: The pickle formats :func:`safe_pickle_load` reads, each with its own allow list (see :func:`_safe_globals`).
PICKLE_TYPES = ("official", "verification")


def torch_load_reason(exc: BaseException, source: str | bytes | None = None) -> str:
    """A one-line reason for a failed ``torch.load(weights_only=True)`` of ``source`` (a path or the bytes, when
    known), without torch's advice to retry with ``weights_only=False`` (which would run whatever code the file
    holds), and saying what the file is where torch's own text would not (random bytes fail inside its parser with
    texts like "pop from empty list")."""
    head = _head(source)
    zipped = head is not None and head.startswith(b"PK\x03\x04")
    if head is not None and not zipped and not head.startswith(b"\x80"):
        if not head:
            return "the file is empty"
        if head.startswith(b"\x1f\x8b"):
            return "it is gzip-compressed data, not a checkpoint"
        return f"it is neither a zip archive nor a pickle, as checkpoints are; it begins with bytes {head.hex(' ')}"
    text = str(exc)
    if "Unsupported operand" in text:  # an opcode the safe unpickler lacks: damage, or a plain pickle of objects
        return ("it holds pickle instructions that are not loaded safely: it is damaged, or holds objects that could "
                "run code when loaded")
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain containers, which could run code when loaded"
    if "PytorchStreamReader" in text:  # torch's zip reader: its first sentence says what failed, the rest is advice
        return f"a zip archive that is not a readable checkpoint ({first_line(exc).split('. ')[0]})"
    if head is not None and not isinstance(exc, (OSError, MemoryError, RuntimeError)):
        # Python's errors from inside torch's parser ("pop from empty list", a KeyError of a number) say nothing
        return f"a {'zip archive' if zipped else 'pickle'} that is not a readable checkpoint (damaged or cut short)"
    return first_line(exc)


def _head(source: str | bytes | None) -> bytes | None:
    """The first 8 bytes of a file or of bytes; None when unknown (no source, or the file cannot be read)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:8])
    if source is None:
        return None
    try:
        with open(source, "rb") as handle:
            return handle.read(8)
    except (OSError, TypeError):
        return None


def torch_load(source: Any) -> Any:
    """``torch.load(source, map_location="cpu", weights_only=True)`` without torch's pickle-protocol warnings."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(source, map_location="cpu", weights_only=True)


def _load_torch_storage_bytes(data: bytes) -> Any:
    try:
        return torch_load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - torch raises many types; one line is enough
        raise pickle.UnpicklingError(f"refusing the tensor data inside it: {torch_load_reason(exc, data)}") from None


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only containers, numbers, strings, NumPy arrays and (safely re-loaded) torch tensors."""

    def __init__(self, handle: IO[bytes], allow_torch: bool, types: str = "official", encoding: str = "ASCII"
                 ) -> None:
        super().__init__(handle, encoding=encoding)
        self._allow_torch = allow_torch
        self._types = types

    def find_class(self, module: str, name: str) -> Any:
        found = _safe_globals(self._types).get((module, name))
        if found is not None:
            return found
        if self._allow_torch:
            import torch

            # A tensor pickled with plain pickle.dump stores its data as torch.save bytes; reload those with
            # weights_only=True instead of torch's own unrestricted _load_from_bytes.
            torch_globals: Dict[Tuple[str, str], Callable[..., Any]] = {
                ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                ("torch.storage", "_load_from_bytes"): _load_torch_storage_bytes,
                ("torch", "FloatStorage"): torch.FloatStorage,
            }
            if (module, name) in torch_globals:
                return torch_globals[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle '{module}.{name}' (not a type this format uses)")


def safe_pickle_load(path: str, allow_torch: bool = False, fix: str | None = None, types: str = "official",
                     py2_bytes: bool = False) -> Any:
    """Unpickle a data file admitting only the types format ``types`` uses (:data:`PICKLE_TYPES`). A file that is
    missing, unreadable, holds other types (which could run code when loaded) or claims more memory than there is: a
    one-line :class:`DataError`. ``fix`` (a file of an output folder): links and non-regular files are refused too,
    and every error ends with this advice. ``py2_bytes``: a Python 2 pickle whose byte strings are not ASCII (a plain
    load fails with ``UnicodeDecodeError``) is read again with ``encoding="bytes"``, as insightface's ``load_bin``
    reads its verification files."""
    if types not in PICKLE_TYPES:
        raise ValueError(f"unknown pickle format {types!r}; one of {', '.join(PICKLE_TYPES)}")
    if fix is None and not os.path.isfile(path):
        raise DataError(f"file '{path}' not found")
    advice = f"; {fix}" if fix else ""

    def load(encoding: str) -> Any:
        handle = os.fdopen(open_regular(path, fix=fix), "rb") if fix is not None else open(path, "rb")
        with handle:
            return _RestrictedUnpickler(handle, allow_torch, types, encoding).load()

    try:
        try:
            return load("ASCII")
        except UnicodeDecodeError:
            if not py2_bytes:
                raise
            return load("bytes")
    except UserError:
        raise
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refusing"):
            raise DataError(f"cannot read '{path}': {exc}{advice}") from None
        raise DataError(f"cannot read '{path}' as a pickle file ({first_line(exc)}){advice}") from None
    except MemoryError:
        raise DataError(f"cannot read '{path}': it holds an object larger than the memory of this machine"
                        f"{advice}") from None
    except Exception as exc:  # corrupt files raise many types (EOFError, ValueError, RuntimeError from torch, ...)
        raise DataError(f"cannot read '{path}' as a pickle file ({type(exc).__name__}: {first_line(exc)})"
                        f"{advice}") from None
