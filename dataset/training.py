"""Training data of eDifFIQA distillation: item filtering, the official split, and the Dataset."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.transforms import INPUT_SIZE, load_face

__all__ = ["official_split", "minmax", "TrainingSet", "DistillationDataset", "collate_distillation"]

_logger = logging.getLogger(__name__)


def official_split(n: int, val_split: float) -> Tuple[np.ndarray, np.ndarray]:
    """The official split of a quality-sorted list: validation = indices ``int(k)`` for ``k`` in
    ``np.arange(0, n, 1 / val_split)``; training = the rest, in order (no ``set``, so the same every run).

    Returns:
        ``(train_indices, val_indices)`` int64 arrays.
    """
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
    """Items after filtering, sorted by quality (ascending, stable), with normalised qualities.

    Attributes:
        paths: Image paths relative to the image folder.
        quality: ``(N,)`` float32 min-max normalised labels.
        rows: ``(N,)`` int64 centre rows.
        teacher: ``(N, D)`` float32 teacher embeddings.
    """

    paths: List[str]
    quality: np.ndarray
    rows: np.ndarray
    teacher: np.ndarray

    def subset(self, index: np.ndarray) -> "TrainingSet":
        return TrainingSet([self.paths[i] for i in index.tolist()], self.quality[index], self.rows[index],
                           self.teacher[index])

    @classmethod
    def build(cls, items: Sequence[Tuple[str, float, int]], teacher: np.ndarray) -> "TrainingSet":
        """Sort ``items`` (with their ``(N, D)`` teacher embeddings) by quality and normalise the qualities."""
        raw_q = np.array([float(it[1]) for it in items], dtype=np.float64)
        order = np.argsort(raw_q, kind="stable")
        return cls([items[i][0] for i in order.tolist()], minmax(raw_q[order]).astype(np.float32),
                   np.array([int(items[i][2]) for i in order.tolist()], dtype=np.int64),
                   np.ascontiguousarray(teacher[order], dtype=np.float32))


class DistillationDataset(Dataset):
    """Items ``(image (3, 112, 112) uint8, quality, centre row, teacher (D,), ok)``; a file that cannot be read
    gives ``ok == False`` (and a blank image) so the step can leave it out instead of stopping the run."""

    def __init__(self, root: str, data: TrainingSet) -> None:
        self.root = root
        self.data = data

    def __len__(self) -> int:
        return len(self.data.paths)

    def __getitem__(self, index: int):
        path = os.path.join(self.root, self.data.paths[index])
        try:
            image, ok = load_face(path), True
        except Exception as exc:  # PIL raises many types for broken files
            _logger.warning("unreadable training image '%s' left out of its batch: %s", path, exc)
            image, ok = torch.zeros((3, *INPUT_SIZE), dtype=torch.uint8), False
        return (image, float(self.data.quality[index]), int(self.data.rows[index]),
                torch.from_numpy(self.data.teacher[index]), ok)


def collate_distillation(items):
    """Stack :class:`DistillationDataset` items into ``(images, quality, rows, teacher, ok)`` tensors."""
    images, quality, rows, teacher, ok = zip(*items)
    return (torch.stack(images), torch.tensor(quality, dtype=torch.float32), torch.tensor(rows, dtype=torch.int64),
            torch.stack(teacher), torch.tensor(ok, dtype=torch.bool))
