"""Per-image values of a benchmark (one FR model's embeddings, one method's qualities) computed once and kept in the
output folder's ``cache/``: each file is an ``.npz`` written atomically with a record of what it holds, and read back
only when that record is the one the run would compute and the values verify (their count, digest and finiteness).
Anything else there (a damaged file, another computation, a link) is said and computed again."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from utils.errors import UserError, first_line
from utils.io import OutputError, atomic_open, read_regular, values_digest

__all__ = ["CACHE_VERSION", "check_entries", "cache_file", "load_cached", "store", "cached"]

_logger = logging.getLogger(__name__)

#: Changes when the layout or the meaning of cache files changes: older files are then computed again.
CACHE_VERSION = 1


def check_entries(paths: List[str]) -> None:
    """Before any work: nothing at a cache file's path that a new file cannot replace (a folder; a device, pipe or
    socket, which a run does not remove): an :class:`OutputError` naming it (a link or a damaged file is replaced
    with a warning once its values are computed, :func:`load_cached`)."""
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise OutputError(f"cache entry '{path}' is {what} where a cache file goes; remove it (it would be "
                              "computed and then not stored) and run again")


def cache_file(folder: str, kind: str, benchmark: str, model: str, weights_sha256: str) -> str:
    """``<folder>/<kind>-<benchmark>-<model>-<sha12>.npz``: one file per benchmark, model and weights."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return os.path.join(folder, f"{kind}-{benchmark}-{safe}-{weights_sha256[:12]}.npz")


def _differences(stored: Dict[str, Any], record: Dict[str, Any]) -> str:
    keys = sorted(set(stored) | set(record), key=str)
    return ", ".join(str(k) for k in keys if stored.get(k) != record.get(k))


def load_cached(path: str, record: Dict[str, Any]) -> Optional[np.ndarray]:
    """The values of cache file ``path`` when it holds the computation ``record`` describes (``record["keys"]``: the
    number of images, the values' first dimension) and they verify; None when there is no file, or (said in a
    warning) when it does not verify."""
    if not os.path.lexists(path):
        return None
    why = ""
    try:
        data = read_regular(path, fix="it is replaced")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            stored = json.loads(str(npz["record"][()]))
            values = npz["values"]
    except UserError as exc:  # a link or not a regular file
        why = first_line(exc)
    except Exception as exc:  # noqa: BLE001 - zipfile, np.load and json raise several types on damaged files
        why = f"unreadable ({type(exc).__name__}: {first_line(exc)})"
    else:
        if not isinstance(stored, dict) or stored.get("record") != record:
            held = stored.get("record") if isinstance(stored, dict) else None
            why = ("it holds another computation (differs in: "
                   f"{_differences(held, record) if isinstance(held, dict) else 'everything'})")
        elif values.ndim < 1 or len(values) != record["keys"]:
            why = f"it holds {values.shape[0] if values.ndim else 0} values for {record['keys']} images"
        elif stored.get("values_sha256") != values_digest(values):
            why = "its values do not match their recorded digest"
        elif values.dtype.kind != "f" or not np.isfinite(values).all():
            why = "it holds NaN or infinite values"
    if why:
        _logger.warning("cache file '%s' is not used: %s; computing it again", path, why)
        return None
    return values


def store(path: str, record: Dict[str, Any], values: np.ndarray) -> None:
    """Write ``values`` with ``record`` to ``path`` atomically (a kill leaves the previous file or none)."""
    text = json.dumps({"record": record, "values_sha256": values_digest(values), "version": CACHE_VERSION},
                      sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as handle:
        np.savez(handle, values=values, record=np.array(text))


def cached(path: str, record: Dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The values of ``path`` (:func:`load_cached`), else ``compute()``'s, stored there first."""
    record = {**record, "version": CACHE_VERSION}
    values = load_cached(path, record)
    if values is not None:
        _logger.info("reusing %s", path)
        return values
    values = compute()
    store(path, record, values)
    return values
