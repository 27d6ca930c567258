"""eDifFIQA label optimisation data, as pure functions (arrays in, arrays out; no file access).

Semantics of the official ``prepare_data.py``:

1. identity of a path = ``path.rsplit("/", 1)[0]``;
2. threshold = the quality at index ``int(beta * N)`` of all N labels sorted in descending order;
3. per identity, the chosen images are those with quality ``>=`` threshold; identities with fewer than
   ``min_images`` (10) chosen images are dropped;
4. the centre of a kept identity is the plain (not normalised) mean of its chosen images' embeddings;
5. training items are ``(path, quality, centre row)`` for every image of every kept identity.

Identities are numbered in order of first appearance in the labels, and items keep the labels' order, which is the
order the official dict-based code produces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["MIN_IMAGES", "identity_of", "group_identities", "quality_threshold", "select_identities",
           "accumulate_centres", "identity_centres", "training_items", "Selection"]

#: The official floor on chosen images per identity.
MIN_IMAGES = 10


def identity_of(path: str) -> str:
    """Identity of an image path: everything before the last ``/``."""
    return path.rsplit("/", 1)[0]


def group_identities(paths: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """Number identities in order of first appearance.

    Returns:
        ``(names, ids)``: identity names and an ``(N,)`` int64 array with the identity number of each path.
    """
    index: dict = {}
    number = index.setdefault
    ids = [number(p.rsplit("/", 1)[0], len(index)) for p in paths]
    return list(index), np.asarray(ids, dtype=np.int64)


def quality_threshold(qualities: np.ndarray, beta: float) -> float:
    """The quality at index ``int(beta * N)`` of the labels sorted in descending order."""
    q = np.asarray(qualities, dtype=np.float64)
    k = int(beta * len(q))
    if not 0 <= k < len(q):
        raise ValueError(f"beta={beta} gives index {k} outside 0..{len(q) - 1}")
    # k-th largest without a full sort: the k-th smallest of -q.
    return float(-np.partition(-q, k)[k])


@dataclass
class Selection:
    """Which images and identities the label optimisation uses.

    Attributes:
        chosen: ``(N,)`` bool, quality at or above the threshold.
        chosen_per_identity: ``(n_identities,)`` counts of chosen images.
        kept: ``(n_identities,)`` bool, identities with at least ``min_images`` chosen images.
        row: ``(n_identities,)`` centre row of each kept identity, -1 for dropped ones.
    """

    chosen: np.ndarray
    chosen_per_identity: np.ndarray
    kept: np.ndarray
    row: np.ndarray


def select_identities(qualities: np.ndarray, ids: np.ndarray, n_identities: int, threshold: float,
                      min_images: int = MIN_IMAGES) -> Selection:
    """Mark chosen images (``>= threshold``) and the identities with at least ``min_images`` of them."""
    chosen = np.asarray(qualities, dtype=np.float64) >= threshold
    counts = np.bincount(ids[chosen], minlength=n_identities)
    kept = counts >= min_images
    row = np.full(n_identities, -1, dtype=np.int64)
    row[kept] = np.arange(int(kept.sum()))
    return Selection(chosen=chosen, chosen_per_identity=counts, kept=kept, row=row)


def accumulate_centres(chunks: Iterable[Tuple[np.ndarray, np.ndarray]], n_rows: int, dim: int) -> np.ndarray:
    """Plain means of embeddings grouped by centre row, from ``(rows (k,), embeddings (k, D))`` chunks.

    Chunks keep the peak memory at one chunk beyond the inputs, whatever the number of images.

    Returns:
        ``(n_rows, D)`` float32 centres (accumulated in float64).
    """
    from scipy import sparse  # one sparse-dense product per chunk; far lighter to import than torch

    sums = np.zeros((n_rows, dim), dtype=np.float64)
    counts = np.zeros(n_rows, dtype=np.int64)
    for rows, embeddings in chunks:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            continue
        indicator = sparse.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n_rows, len(rows)))
        sums += indicator @ np.asarray(embeddings, dtype=np.float64)
        counts += np.bincount(rows, minlength=n_rows)
    if np.any(counts == 0):
        raise ValueError("every centre row needs at least one embedding")
    return (sums / counts[:, None]).astype(np.float32)


def identity_centres(embeddings: np.ndarray, rows: np.ndarray, n_rows: int, chunk_size: int = 16384) -> np.ndarray:
    """Plain means of ``(M, D)`` embeddings grouped by their ``(M,)`` centre rows; ``(n_rows, D)`` float32."""
    embeddings = np.asarray(embeddings)
    rows = np.asarray(rows)
    chunks = ((rows[i:i + chunk_size], embeddings[i:i + chunk_size]) for i in range(0, len(rows), chunk_size))
    return accumulate_centres(chunks, n_rows, embeddings.shape[1])


def training_items(paths: Sequence[str], qualities: np.ndarray, ids: np.ndarray,
                   selection: Selection) -> List[Tuple[str, float, int]]:
    """``(path, quality, centre row)`` for every image of every kept identity, in label order."""
    item_rows = selection.row[ids]
    keep = np.flatnonzero(item_rows >= 0)
    q = np.asarray(qualities, dtype=np.float64)
    kept_paths = paths if len(keep) == len(paths) else [paths[i] for i in keep.tolist()]
    return list(zip(kept_paths, q[keep].tolist(), item_rows[keep].tolist()))
