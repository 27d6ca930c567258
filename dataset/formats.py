"""Readers and writers of the official eDifFIQA data files (labels, teacher embeddings, prepared training data).

Pickles are read through :func:`utils.io.safe_pickle_load`, which admits only the types these formats use.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import numpy as np

from utils.errors import DataError
from utils.io import read_scores_csv, safe_pickle_load, write_pickle

__all__ = ["read_labels", "EmbeddingTable", "read_embeddings", "write_embeddings", "centres_file", "items_file",
           "write_prepared", "read_prepared"]


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(repr(x) for x in list(items)[:n]) + (" ..." if len(items) > n else "")


def read_labels(path: str) -> Tuple[List[str], np.ndarray]:
    """Read quality labels: a pickled list of ``(path, quality)`` pairs or dict (official), or a ``path,quality`` CSV.

    Returns:
        ``(paths, qualities)`` with ``qualities`` an ``(N,)`` float64 array; a list with repeated paths keeps the
        last value, as the official ``dict(list)`` does.

    Raises:
        DataError: Unreadable file, wrong structure, or NaN/infinite qualities (count and examples).
    """
    if path.lower().endswith(".csv"):
        if not os.path.isfile(path):
            raise DataError(f"labels file '{path}' not found")
        data: Union[Mapping, Sequence] = read_scores_csv(path)
    else:
        data = safe_pickle_load(path)
    if isinstance(data, Mapping):
        pairs = list(data.items())
    elif isinstance(data, (list, tuple)):
        pairs = list(data)
    else:
        raise DataError(f"labels file '{path}' must hold a list of (path, quality) pairs or a dict, "
                        f"not a {type(data).__name__}")
    labels: Dict[str, float] = {}
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise DataError(f"labels file '{path}': entry {i} is {pair!r}, expected a (path, quality) pair")
        try:
            labels[pair[0]] = float(pair[1])
        except (TypeError, ValueError):
            raise DataError(f"labels file '{path}': quality of '{pair[0]}' is {pair[1]!r}, not a number") from None
    if not labels:
        raise DataError(f"labels file '{path}' holds no labels")
    paths = list(labels)
    qualities = np.fromiter(labels.values(), dtype=np.float64, count=len(labels))
    bad = np.flatnonzero(~np.isfinite(qualities))
    if len(bad):
        raise DataError(f"labels file '{path}': {len(bad)} qualities are NaN or infinite "
                        f"(e.g. {_examples([paths[i] for i in bad])}); fix or remove them")
    return paths, qualities


class EmbeddingTable:
    """Teacher embeddings by image path, from the official pickled dict or an ``.npz`` (``paths``, ``embeddings``)."""

    def __init__(self, source: str, index: Mapping[str, int], rows: Union[np.ndarray, Sequence[np.ndarray]],
                 dim: int) -> None:
        self.source = source
        self._index = index
        self._rows = rows
        self.dim = dim

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, path: str) -> bool:
        return path in self._index

    def missing(self, paths: Sequence[str]) -> List[str]:
        """Paths that have no embedding."""
        return [p for p in paths if p not in self._index]

    def gather(self, paths: Sequence[str]) -> np.ndarray:
        """``(len(paths), D)`` float32 embeddings of ``paths``."""
        if isinstance(self._rows, np.ndarray):
            return np.asarray(self._rows[np.fromiter((self._index[p] for p in paths), dtype=np.int64,
                                                     count=len(paths))], dtype=np.float32)
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        for i, p in enumerate(paths):
            out[i] = self._rows[self._index[p]]
        return out

    def chunks(self, paths: Sequence[str], size: int = 65536) -> Iterator[Tuple[slice, np.ndarray]]:
        """Yield ``(slice of paths, (k, D) embeddings)`` blocks, so callers never hold all of them at once."""
        for start in range(0, len(paths), size):
            window = slice(start, min(start + size, len(paths)))
            yield window, self.gather(paths[window])


def read_embeddings(path: str) -> EmbeddingTable:
    """Read teacher embeddings (pickled dict ``{path: (D,) array}`` or ``.npz``); all must have one dimension D.

    Raises:
        DataError: Unreadable file, wrong structure, or embeddings of different sizes.
    """
    if path.lower().endswith(".npz"):
        if not os.path.isfile(path):
            raise DataError(f"embeddings file '{path}' not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "paths" not in npz or "embeddings" not in npz:
                    raise DataError(f"embeddings file '{path}' must hold arrays 'paths' and 'embeddings', "
                                    f"found {sorted(npz.files)}")
                paths = [str(p) for p in npz["paths"].tolist()]
                matrix = npz["embeddings"]
        except DataError:
            raise
        except Exception as exc:  # zipfile/np.load raise several types on corrupt files
            raise DataError(f"cannot read embeddings file '{path}' as .npz ({type(exc).__name__}: {exc})") from None
        if matrix.ndim != 2 or len(matrix) != len(paths):
            raise DataError(f"embeddings file '{path}': 'embeddings' has shape {matrix.shape}, expected "
                            f"({len(paths)}, D) to match 'paths'")
        return EmbeddingTable(path, {p: i for i, p in enumerate(paths)}, matrix, int(matrix.shape[1]))

    data = safe_pickle_load(path)
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"embeddings file '{path}' must hold a non-empty dict {{image path: embedding}}")
    keys = list(data.keys())
    values = list(data.values())
    first = np.asarray(values[0])
    dim = int(first.shape[-1]) if first.ndim >= 1 else 0
    shapes = {}
    for key, value in zip(keys, values):
        shape = getattr(value, "shape", None)
        if shape != (dim,) and (shape is None or int(np.prod(shape)) != dim):
            shapes.setdefault(str(shape), key)
    if shapes or dim == 0:
        found = "; ".join(f"{shape} (e.g. '{key}')" for shape, key in list(shapes.items())[:3])
        raise DataError(f"embeddings file '{path}': embedding sizes differ: first is {first.shape}, also {found}")
    rows = [np.asarray(v).reshape(-1) for v in values]
    return EmbeddingTable(path, {k: i for i, k in enumerate(keys)}, rows, dim)


def write_embeddings(path: str, paths: Sequence[str], embeddings: np.ndarray) -> None:
    """Write embeddings as the official pickled dict, or as ``.npz`` when ``path`` ends with ``.npz`` (atomically)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if path.lower().endswith(".npz"):
        from utils.io import atomic_open

        with atomic_open(path, "wb") as handle:
            np.savez(handle, paths=np.asarray(list(paths), dtype=str), embeddings=embeddings)
    else:
        write_pickle(path, {p: embeddings[i].copy() for i, p in enumerate(paths)})


def centres_file(save_location: str, name: str) -> str:
    """Path of the official centre file ``average_embedding_batch-<name>.pkl``."""
    return os.path.join(save_location, f"average_embedding_batch-{name}.pkl")


def items_file(save_location: str, name: str) -> str:
    """Path of the official items file ``training_items-<name>.pkl``."""
    return os.path.join(save_location, f"training_items-{name}.pkl")


def write_prepared(save_location: str, name: str, centres: np.ndarray,
                   items: Sequence[Tuple[str, float, int]]) -> Tuple[str, str]:
    """Write the two official files: a pickled float32 torch tensor of centres and the pickled item list."""
    import torch

    centres_path, items_path = centres_file(save_location, name), items_file(save_location, name)
    write_pickle(centres_path, torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32)))
    write_pickle(items_path, list(items))
    return centres_path, items_path


def read_prepared(save_location: str, name: str):
    """Read the two official files back: ``(centres (K, D) float32 tensor, [(path, quality, row), ...])``."""
    import torch

    centres = safe_pickle_load(centres_file(save_location, name), allow_torch=True)
    items = safe_pickle_load(items_file(save_location, name))
    if not isinstance(centres, torch.Tensor) or centres.ndim != 2:
        raise DataError(f"'{centres_file(save_location, name)}' must hold a (n_identities, D) torch tensor")
    if not isinstance(items, list) or not all(isinstance(it, tuple) and len(it) == 3 for it in items[:1000]):
        raise DataError(f"'{items_file(save_location, name)}' must hold a list of (path, quality, row) tuples")
    bad_row = next((it for it in items if not 0 <= int(it[2]) < len(centres)), None)
    if bad_row is not None:
        raise DataError(f"'{items_file(save_location, name)}': item {bad_row!r} points at centre row {bad_row[2]}, "
                        f"but there are {len(centres)} centres")
    return centres, items
