"""Training data of eDifFIQA distillation and DifFIQA(R): the official split, min-max labels, and the Dataset."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.transforms import INPUT_SIZE, load_face

__all__ = ["official_split", "minmax", "TrainingSet", "TrainingFaces", "collate_training"]

_logger = logging.getLogger(__name__)


def official_split(n: int, val_split: float) -> Tuple[np.ndarray, np.ndarray]:
    """The official split of a quality-sorted list: validation = indices ``int(k)`` for ``k`` in
    ``np.arange(0, n, 1 / val_split)``; training = the rest, in order (no ``set``, so the same every run). Returns
    ``(train_indices, val_indices)`` int64 arrays."""
    val = np.unique(np.array([int(k) for k in np.arange(0, n, 1 / val_split)], dtype=np.int64))
    val = val[val < n]
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def minmax(q: np.ndarray) -> np.ndarray:
    """Min-max normalise qualities to [0, 1] (all equal -> zeros)."""
    q = np.asarray(q, dtype=np.float64)
    span = q.max() - q.min()
    return (q - q.min()) / span if span > 0 else np.zeros_like(q)


@dataclass
class TrainingSet:
    """Items after filtering, sorted by quality (ascending, stable), with normalised qualities; ``rows`` and
    ``teacher`` are None for DifFIQA(R)."""

    paths: List[str]                   # relative to the image folder
    quality: np.ndarray                # (N,) float32 min-max normalised labels
    rows: Optional[np.ndarray] = None  # (N,) int64 identity-centre rows
    teacher: Optional[np.ndarray] = None  # (N, D) float32 teacher embeddings

    def subset(self, index: np.ndarray) -> "TrainingSet":
        return TrainingSet([self.paths[i] for i in index.tolist()], self.quality[index],
                           None if self.rows is None else self.rows[index],
                           None if self.teacher is None else self.teacher[index])

    @classmethod
    def build(cls, items: Sequence[Tuple[Any, ...]], teacher: Optional[np.ndarray] = None) -> "TrainingSet":
        """Sort ``items`` (``(path, quality, centre row)``, with their ``(N, D)`` teacher embeddings; or
        ``(path, quality)`` without) by quality and normalise the qualities."""
        raw_q = np.array([float(it[1]) for it in items], dtype=np.float64)
        order = np.argsort(raw_q, kind="stable")
        rows = teach = None
        if teacher is not None:
            rows = np.array([int(items[i][2]) for i in order.tolist()], dtype=np.int64)
            teach = np.ascontiguousarray(teacher[order], dtype=np.float32)
        return cls([items[i][0] for i in order.tolist()], minmax(raw_q[order]).astype(np.float32), rows, teach)


class TrainingFaces(Dataset):
    """Items ``{"image": (3, 112, 112) uint8, "quality", "ok"}`` plus ``"row"`` and ``"teacher"`` (D,) when the set
    has them; a file that cannot be read gives ``ok == False`` (and a blank image) so the step can leave it out
    instead of stopping the run."""

    def __init__(self, root: str, data: TrainingSet) -> None:
        self.root = root
        self.data = data

    def __len__(self) -> int:
        return len(self.data.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = os.path.join(self.root, self.data.paths[index])
        try:
            image, ok = load_face(path), True
        except Exception as exc:  # PIL raises many types for broken files
            _logger.warning("unreadable training image '%s' left out of its batch: %s", path, exc)
            image, ok = torch.zeros((3, *INPUT_SIZE), dtype=torch.uint8), False
        item = {"image": image, "quality": float(self.data.quality[index]), "ok": ok}
        if self.data.rows is not None:
            item["row"] = int(self.data.rows[index])
        if self.data.teacher is not None:
            item["teacher"] = torch.from_numpy(self.data.teacher[index])
        return item


def collate_training(items: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """Stack :class:`TrainingFaces` items: ``image`` (B, 3, 112, 112) uint8, ``quality`` (B,) float32, ``ok`` (B,)
    bool, ``row`` (B,) int64, ``teacher`` (B, D)."""
    dtypes = {"quality": torch.float32, "ok": torch.bool, "row": torch.int64}
    return {key: torch.stack([it[key] for it in items]) if key not in dtypes else
            torch.tensor([it[key] for it in items], dtype=dtypes[key]) for key in items[0]}
