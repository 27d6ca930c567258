"""Atomic file writing and safe reading of the official pickle formats."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import tempfile
from typing import IO, Any, Callable, Dict, Iterable, Iterator, Sequence, Tuple

from utils.errors import DataError

__all__ = ["atomic_open", "write_pickle", "write_json", "write_csv", "safe_pickle_load", "read_scores_csv"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None, newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step, on error it is removed.

    A reader never sees a half-written file and an interrupted run never destroys an earlier result.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_pickle(path: str, obj: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file (RFC 4180 quoting, so paths with commas survive) atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_scores_csv(path: str) -> Dict[str, float]:
    """Read a ``path,quality`` CSV as written by ``inference.py``."""
    with open(path, "r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["path", "quality"]:
            raise DataError(f"'{path}' is not a quality CSV: its first line must be 'path,quality'")
        return {row[0]: float(row[1]) for row in reader if row}


#: (module, name) pairs the official pickle files need: builtin containers and NumPy arrays / scalars.
_SAFE_GLOBALS: Dict[Tuple[str, str], Any] = {}


def _safe_globals() -> Dict[Tuple[str, str], Any]:
    if not _SAFE_GLOBALS:
        import collections

        import numpy as np

        _SAFE_GLOBALS.update({
            ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "str"): str,
            ("builtins", "int"): int, ("builtins", "float"): float, ("builtins", "bool"): bool,
            ("builtins", "bytes"): bytes, ("builtins", "complex"): complex,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        })
        # NumPy 1.x pickles name numpy.core, NumPy 2.x numpy._core; both resolve to the installed functions.
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
        scalar = np.float32(0).__reduce__()[0]
        frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # pickle protocol 5 stores arrays out of band
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            _SAFE_GLOBALS[(module, "_reconstruct")] = reconstruct
            _SAFE_GLOBALS[(module, "scalar")] = scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            _SAFE_GLOBALS[(module, "_frombuffer")] = frombuffer
        for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool_"):
            _SAFE_GLOBALS[("numpy", name)] = getattr(np, name)
        for dtype_module in ("numpy", "numpy.dtypes"):
            for cls_name in ("Float32DType", "Float64DType", "Float16DType", "Int64DType", "Int32DType",
                             "UInt8DType", "BoolDType"):
                cls = getattr(getattr(np, "dtypes", None), cls_name, None)
                if cls is not None:
                    _SAFE_GLOBALS[(dtype_module, cls_name)] = cls
    return _SAFE_GLOBALS


def _load_torch_storage_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only containers, numbers, strings, NumPy arrays and (safely re-loaded) torch tensors."""

    def __init__(self, handle: IO[bytes], allow_torch: bool) -> None:
        super().__init__(handle)
        self._allow_torch = allow_torch

    def find_class(self, module: str, name: str) -> Any:
        found = _safe_globals().get((module, name))
        if found is not None:
            return found
        if self._allow_torch:
            import torch
            import torch._utils

            # A tensor pickled with plain pickle.dump stores its data as torch.save bytes; reload those with
            # weights_only=True instead of torch's own unrestricted _load_from_bytes.
            torch_globals: Dict[Tuple[str, str], Callable[..., Any]] = {
                ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                ("torch.storage", "_load_from_bytes"): _load_torch_storage_bytes,
                ("torch", "FloatStorage"): torch.FloatStorage,
                ("collections", "OrderedDict"): __import__("collections").OrderedDict,
            }
            if (module, name) in torch_globals:
                return torch_globals[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle '{module}.{name}' (not a type this format uses)")


def safe_pickle_load(path: str, allow_torch: bool = False) -> Any:
    """Unpickle a data file admitting only the types the official formats use.

    Raises:
        DataError: The file is missing, unreadable, or holds other types (which could run code when loaded).
    """
    if not os.path.isfile(path):
        raise DataError(f"file '{path}' not found")
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, allow_torch).load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refusing"):
            raise DataError(f"cannot read '{path}': {exc}") from None
        raise DataError(f"cannot read '{path}' as a pickle file ({exc})") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError, OSError) as exc:
        raise DataError(f"cannot read '{path}' as a pickle file ({type(exc).__name__}: {exc})") from None
