"""Training pairs for the DifFIQA denoiser: a clean face and its BSRGAN-degraded copy, made in DataLoader workers.

Every sample's randomness (flip, degradations) comes from ``numpy.random.default_rng([seed, position])`` where
``position`` is the sample's place in the run's stream of samples: the pairs are the same whatever the number of
workers or processes, and a resumed run continues the stream where it stopped.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dataset.degradations import degrade_face
from dataset.image_folder import find_images
from utils.errors import DataError

__all__ = ["scan_training_images", "DegradationPairs", "SampleStream"]

_logger = logging.getLogger(__name__)


def scan_training_images(root: str, min_size: int) -> List[str]:
    """Images below ``root`` (sorted, relative) after checking that each opens and is at least ``min_size`` px.

    Unreadable files are dropped with a warning naming them; images smaller than ``min_size`` on either side are a
    :class:`DataError` (the clean targets would be upscaled crops), as is a folder with no usable image.
    """
    paths = find_images(root, key="trainer_params.folder or --folder")
    unreadable: List[str] = []
    small: List[Tuple[str, Tuple[int, int]]] = []
    kept: List[str] = []
    for rel in paths:
        try:
            with Image.open(os.path.join(root, rel)) as img:
                size = img.size
        except Exception:  # noqa: BLE001 - any decoder failure means "cannot use this file"
            unreadable.append(rel)
            continue
        if min(size) < min_size:
            small.append((rel, size))
        else:
            kept.append(rel)
    if small:
        examples = ", ".join(f"{rel} ({w}x{h})" for rel, (w, h) in small[:3])
        raise DataError(f"{len(small)} image(s) in '{root}' are smaller than {min_size} px on a side (e.g. "
                        f"{examples}); remove them or lower trainer_params.min_image_size")
    if unreadable:
        _logger.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(unreadable), root,
                        ", ".join(unreadable[:3]))
    if not kept:
        raise DataError(f"image folder '{root}' holds no readable image")
    return kept


class SampleStream(Sampler):
    """An endless stream of ``(index, position)``: epoch ``e`` is a permutation seeded with ``seed + e``.

    Process ``rank`` of ``world`` takes its slice of every global batch of ``global_batch`` positions, so the
    global batches are the same for any number of processes; ``start`` skips positions already trained on.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, global_batch: int, rank: int = 0, world: int = 1,
                 start: int = 0) -> None:
        if global_batch % world:
            raise ValueError(f"batch {global_batch} is not divisible by {world} processes")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.global_batch, self.rank, self.world, self.start = global_batch, rank, world, start

    def _order(self, epoch: int) -> List[int]:
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        local = self.global_batch // self.world
        position = self.start
        epoch, order = -1, []
        while True:
            for offset in range(self.rank * local, (self.rank + 1) * local):
                pos = position + offset
                if pos // self.n != epoch:
                    epoch = pos // self.n
                    order = self._order(epoch)
                yield order[pos % self.n], pos
            position += self.global_batch


class DegradationPairs(Dataset):
    """``(hq, lq)`` uint8 ``(3, S, S)`` pairs (``S = image_size``, official 112) of the images ``paths`` below
    ``root``; indexed by ``(index, position)`` from :class:`SampleStream`. ``flip``: both images flipped horizontally
    with p 0.5 (official ``augment_horizontal_flip``); ``probs``: of each successive BSRGAN degradation (official
    ``[1, 0.2, 0.01]``)."""

    def __init__(self, root: str, paths: Sequence[str], image_size: int, seed: int, flip: bool = True,
                 probs: Sequence[float] = (1.0, 0.2, 0.01)) -> None:
        self.root, self.paths, self.size = root, list(paths), image_size
        self.seed, self.flip, self.probs = seed, flip, tuple(probs)

    def __len__(self) -> int:
        return len(self.paths)

    def pair(self, image: Image.Image, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """``(hq, lq)`` uint8 ``(S, S, 3)`` from an RGB image, drawing from ``rng``."""
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        size = (self.size, self.size)
        hq = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        lq = np.asarray(image)
        for p in self.probs:
            if p >= 1.0 or rng.random() < p:
                lq = degrade_face(lq, rng)
        lq = np.asarray(Image.fromarray(lq).resize(size, Image.Resampling.BILINEAR))
        return hq, lq

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, position = key
        with Image.open(os.path.join(self.root, self.paths[index])) as img:
            image = img.convert("RGB")
        hq, lq = self.pair(image, np.random.default_rng([self.seed, position]))
        return (torch.from_numpy(np.array(hq)).permute(2, 0, 1).contiguous(),
                torch.from_numpy(np.array(lq)).permute(2, 0, 1).contiguous())
