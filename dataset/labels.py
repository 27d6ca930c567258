"""eDifFIQA label optimisation data, as pure functions (arrays in, arrays out; no file access).

Semantics of the official ``prepare_data.py``, reproduced to the byte:

1. identity of a path = ``path.rsplit("/", 1)[0]``;
2. threshold = the quality at index ``int(beta * N)`` of all N labels sorted in descending order;
3. per identity, the chosen images are those with quality ``>=`` threshold; identities with fewer than
   ``min_images`` (10) chosen images are dropped;
4. the centre of a kept identity is the float32 ``torch.mean`` of its chosen images' embeddings, stacked in the
   official order (quality descending, ties in label order), so that the float32 sums round as the official ones do;
5. training items are ``(path, quality, centre row)`` for every image of every kept identity, grouped by identity
   in order of first appearance and in label order within an identity (the official dict iteration order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["MIN_IMAGES", "group_identities", "quality_threshold", "select_identities", "centre_order",
           "identity_windows", "identity_centres", "centre_distances", "training_items", "Selection"]

#: The official floor on chosen images per identity.
MIN_IMAGES = 10


def group_identities(paths: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """``(names, ids)``: identity names in order of first appearance and an ``(N,)`` int64 array with the identity
    number of each path."""
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
    """Which images and identities the label optimisation uses."""

    chosen: np.ndarray                 # (N,) bool: quality at or above the threshold
    chosen_per_identity: np.ndarray    # (n_identities,) counts of chosen images
    kept: np.ndarray                   # (n_identities,) bool: at least min_images chosen images
    row: np.ndarray                    # (n_identities,) centre row of each kept identity, -1 for dropped ones


def select_identities(qualities: np.ndarray, ids: np.ndarray, n_identities: int, threshold: float,
                      min_images: int = MIN_IMAGES) -> Selection:
    """Mark chosen images (``>= threshold``) and the identities with at least ``min_images`` of them."""
    chosen = np.asarray(qualities, dtype=np.float64) >= threshold
    counts = np.bincount(ids[chosen], minlength=n_identities)
    kept = counts >= min_images
    row = np.full(n_identities, -1, dtype=np.int64)
    row[kept] = np.arange(int(kept.sum()))
    return Selection(chosen=chosen, chosen_per_identity=counts, kept=kept, row=row)


def centre_order(qualities: np.ndarray, ids: np.ndarray, selection: Selection) -> Tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the chosen images of kept identities in the order the official code stacks them for the
    mean, ``(M,)`` label indices grouped by centre row, quality descending within a row (ties in label order, as
    Python's stable ``sorted(..., reverse=True)``), and ``(n_kept + 1,)`` offsets: the images of centre row ``r`` are
    ``order[starts[r]:starts[r + 1]]``."""
    index = np.flatnonzero(selection.chosen & selection.kept[ids])
    rows = selection.row[ids[index]]
    quality = np.asarray(qualities, dtype=np.float64)[index]
    order = index[np.lexsort((index, -quality, rows))]
    counts = np.bincount(rows, minlength=int(selection.kept.sum()))
    return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def identity_windows(starts: np.ndarray, size: int = 16384) -> Iterator[Tuple[int, int]]:
    """Ranges ``[lo, hi)`` of centre rows whose images total about ``size`` (at least one row each), so that
    callers gather one window of embeddings at a time."""
    lo, n = 0, len(starts) - 1
    while lo < n:
        hi = int(np.searchsorted(starts, starts[lo] + size, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def identity_centres(embeddings: Callable[[int, int], np.ndarray], starts: np.ndarray, dim: int,
                     size: int = 16384) -> "torch.Tensor":
    """Official centres, ``(n_kept, D)`` float32: the ``torch.mean`` over dim 0 of each identity's stacked
    embeddings, bit-identical to the official mean of ``torch.cat``-ed rows (numpy sums in another order).
    ``embeddings(a, b)`` gives the ``(b - a, D)`` float32 embeddings of positions ``a..b`` of the :func:`centre_order`
    order (``starts`` its offsets), read ``size`` images at a time so that memory stays at one window."""
    centres = torch.empty((len(starts) - 1, dim), dtype=torch.float32)
    for lo, hi in identity_windows(starts, size):
        block = torch.from_numpy(np.ascontiguousarray(embeddings(int(starts[lo]), int(starts[hi])), dtype=np.float32))
        base = int(starts[lo])
        for row in range(lo, hi):
            centres[row] = torch.mean(block[int(starts[row]) - base:int(starts[row + 1]) - base], dim=0)
    return centres


def centre_distances(embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``1 - cos`` of each ``(N, D)`` embedding with its ``(N, D)`` identity centre: the angular distance ``ad`` that
    label optimisation subtracts (times epsilon) from a label; ``(N,)`` float64."""
    a = np.asarray(embeddings, dtype=np.float64)
    b = np.asarray(centres, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return 1.0 - np.einsum("ij,ij->i", a, b) / norms


def training_items(paths: Sequence[str], values: Sequence[Any], ids: np.ndarray,
                   selection: Selection) -> List[Tuple[str, Any, int]]:
    """``(path, quality, centre row)`` for every image of every kept identity, in the official order: identities
    in order of first appearance, images in label order within each. ``values`` are the labels' own quality
    objects (kept as they are, so the pickled items are the official bytes)."""
    item_rows = selection.row[ids]
    keep = np.flatnonzero(item_rows >= 0)
    keep = keep[np.argsort(ids[keep], kind="stable")]
    return [(paths[i], values[i], r) for i, r in zip(keep.tolist(), item_rows[keep].tolist())]
