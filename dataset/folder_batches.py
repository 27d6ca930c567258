"""Images in batches: the readable images of a list of files (or of any :class:`FaceImages`, such as a benchmark's
images held in memory) as normalised batches on a device, with the unreadable ones named, and a function mapped over
them. Shared by scoring, DifFIQA labels, embeddings and benchmarks."""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataset.image_folder import FaceFolder, JpegBytesFolder, collate_faces, collate_jpeg_bytes
from dataset.transforms import INPUT_SIZE, normalize

__all__ = ["FaceImages", "JpegDecoder", "cuda_jpeg_decoder", "workers_that_can_ship", "pins_memory", "iterate_images",
           "iterate_folder", "FolderResult", "map_images", "map_folder"]

_logger = logging.getLogger(__name__)


JpegDecoder = Callable[[List[torch.Tensor]], List[torch.Tensor]]

Batches = Iterator[Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, str]]]]


class FaceImages(Protocol):
    """Images read one by one with per-image error handling (:class:`dataset.image_folder.FaceFolder`, or a
    benchmark's :class:`dataset.verification.ImageSource`): image ``index`` as the ``(112, 112)`` RGB pixels the one
    preprocessing (:mod:`dataset.transforms`) gives for it."""

    def __len__(self) -> int: ...

    def describe(self, index: int) -> str:
        """How a warning names image ``index`` (a path)."""

    def load(self, index: int) -> Tuple[torch.Tensor, str]:
        """``(image (3, 112, 112) uint8, "")``, or a blank image and the one-line reason it could not be read."""

    def read_into(self, index: int, out: np.ndarray) -> str:
        """Decode image ``index`` into ``out`` (``(112, 112, 3)`` uint8); "" or the one-line reason it failed."""


class _Items(Dataset):
    """:class:`FaceImages` as a Dataset of ``(image, index, error)`` items (:func:`collate_faces`)."""

    def __init__(self, images: FaceImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, str]:
        image, error = self.images.load(index)
        return image, index, error


def cuda_jpeg_decoder(device: torch.device) -> JpegDecoder:
    """nvJPEG through ``torchvision.io.decode_jpeg(..., device=device)``: a list of raw JPEG byte tensors ->
    ``(3, H, W)`` uint8 RGB tensors on ``device``, in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg  # torchvision (a second to import) only for nvJPEG

    return lambda data: decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_batch(folder: JpegBytesFolder, items: List[torch.Tensor], indices: torch.Tensor, is_bytes: List[bool],
                  decode: JpegDecoder, device: torch.device) -> Tuple[List[torch.Tensor], List[Tuple[int, str]]]:
    """Images of ``items`` as ``(3, 112, 112)`` uint8 on ``device``, and ``(index, error)`` of the unreadable ones:
    the JPEG bytes are decoded by ``decode`` together; a JPEG it cannot decode, or that is not 112x112 (the official
    resize is PIL's), is read on the CPU instead."""
    positions = [i for i, flag in enumerate(is_bytes) if flag]
    decoded: List[Optional[torch.Tensor]] = [None] * len(items)
    if positions:
        try:
            for i, image in zip(positions, decode([items[i] for i in positions])):
                decoded[i] = image if tuple(image.shape) == (3, *INPUT_SIZE) else None
        except Exception:  # noqa: BLE001 - one bad file fails the batched call: those files go the CPU way
            pass
    images, bad = [], []
    for i, item in enumerate(items):
        index = int(indices[i])
        if decoded[i] is not None:
            images.append(decoded[i].to(device))
        elif is_bytes[i]:
            image, error = folder.load(index)  # the CPU path, as FaceFolder reads every other file
            if error:
                bad.append((index, error))
            else:
                images.append(image.to(device))
        else:
            images.append(item.to(device, non_blocking=True))
    return images, bad


def workers_that_can_ship(workers: int, batch_size: int) -> int:
    """``workers``, or 0 when the file-size limit (``ulimit -f``) is below what a worker needs to hand a batch over
    (its tensors travel through a shared-memory file): a worker would fail silently there and the loader would wait
    for its batch forever."""
    if workers == 0:
        return 0
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    needed = 2 * batch_size * 3 * INPUT_SIZE[0] * INPUT_SIZE[1]
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return workers
    _logger.warning("the file-size limit (ulimit -f) of %d bytes is too small for DataLoader workers to hand over a "
                    "batch (%d bytes): images are read by this process instead", limit, needed)
    return 0


def pins_memory(pin_memory: bool, device: torch.device, workers: int) -> bool:
    """Whether the reader pins host memory: asked for, on CUDA and with worker processes (the in-process reader and
    GPU JPEG decoding copy their batches without it)."""
    return pin_memory and device.type == "cuda" and workers > 0


def iterate_images(images: FaceImages, device: torch.device, batch_size: int, workers: int,
                   pin_memory: bool = True, prefetch_factor: Optional[int] = None, persistent_workers: bool = False,
                   channels_last: bool = True, warn: bool = True) -> Batches:
    """Yield ``(indices (b,), images (b, 3, 112, 112) float on device, [(index, error), ...])`` per batch of
    ``images`` in order.

    Unreadable images are left out of ``images``/``indices``, named in a warning (``warn``; a caller that fails on
    them says it once) and reported in the third element; a batch with only bad images yields empty tensors.
    """
    workers = workers_that_can_ship(workers, batch_size)
    if workers == 0:
        batches = _iterate_in_process(images, device, batch_size)
    else:
        batches = _iterate_loader(images, device, batch_size, workers, pin_memory, prefetch_factor,
                                  persistent_workers)
    return _named_and_laid_out(batches, images.describe if warn else None, channels_last)


def iterate_folder(root: str, rel_paths: Sequence[str], device: torch.device, batch_size: int, workers: int,
                   pin_memory: bool = True, prefetch_factor: Optional[int] = None, persistent_workers: bool = False,
                   channels_last: bool = True, decode_jpegs: Optional[JpegDecoder] = None) -> Batches:
    """:func:`iterate_images` of the files ``rel_paths`` below ``root``. With ``decode_jpegs`` (e.g.
    :func:`cuda_jpeg_decoder`), the workers only read JPEG files and the batch's JPEGs are decoded together by it;
    other formats and its failures take the CPU path.
    """
    folder = FaceFolder(root, list(rel_paths))
    if decode_jpegs is None:
        return iterate_images(folder, device, batch_size, workers, pin_memory, prefetch_factor, persistent_workers,
                              channels_last)
    workers = workers_that_can_ship(workers, batch_size)
    return _named_and_laid_out(_iterate_jpeg_bytes(root, rel_paths, device, batch_size, workers, decode_jpegs),
                               folder.describe, channels_last)


def _named_and_laid_out(batches: Batches, describe: Optional[Callable[[int], str]], channels_last: bool) -> Batches:
    """``batches`` with each unreadable image named in a warning (unless ``describe`` is None), and the images in the
    model's memory layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for indices, x, bad in batches:
        for index, reason in bad if describe is not None else ():
            _logger.warning("skipped '%s': %s", describe(index), reason)
        yield indices, x.contiguous(memory_format=layout), bad


def _iterate_loader(images: FaceImages, device: torch.device, batch_size: int, workers: int, pin_memory: bool,
                    prefetch_factor: Optional[int], persistent_workers: bool) -> Batches:
    kwargs = {"persistent_workers": persistent_workers}
    if prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    # Its own generator: creating the loader must not take a draw from the global RNG that models may use.
    loader = DataLoader(_Items(images), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=pins_memory(pin_memory, device, workers), collate_fn=collate_faces,
                        drop_last=False, generator=torch.Generator().manual_seed(0), **kwargs)
    for batch, indices, errors in loader:
        bad = [(int(i), e) for i, e in zip(indices.tolist(), errors) if e]
        if bad:
            keep = torch.tensor([not e for e in errors], dtype=torch.bool)
            batch, indices = batch[keep], indices[keep]
        yield indices, normalize(batch.to(device, non_blocking=True)), bad


def _iterate_in_process(images: FaceImages, device: torch.device, batch_size: int) -> Batches:
    """The reader without worker processes (the default on a CPU, where the model keeps every core busy): each image
    is decoded straight into its slot of an NHWC uint8 batch buffer, whose ``(b, 3, H, W)`` view is already the
    channels_last layout the model runs in, so a batch costs one copy per image and one normalisation."""
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        buffer = torch.empty((stop - start, *INPUT_SIZE, 3), dtype=torch.uint8)
        slots = buffer.numpy()
        good: List[int] = []
        bad: List[Tuple[int, str]] = []
        for index in range(start, stop):
            error = images.read_into(index, slots[len(good)])
            if error:
                bad.append((index, error))
            else:
                good.append(index)
        x = normalize(buffer[:len(good)].to(device, non_blocking=True).permute(0, 3, 1, 2))
        yield torch.tensor(good, dtype=torch.int64), x, bad


def _iterate_jpeg_bytes(root: str, rel_paths: Sequence[str], device: torch.device, batch_size: int, workers: int,
                        decode: JpegDecoder) -> Batches:
    folder = JpegBytesFolder(root, list(rel_paths))
    loader = DataLoader(folder, batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_jpeg_bytes, drop_last=False,
                        generator=torch.Generator().manual_seed(0))
    for items, indices, errors, is_bytes in loader:
        bad = [(int(i), e) for i, e in zip(indices.tolist(), errors) if e]
        keep = [i for i, e in enumerate(errors) if not e]
        images, broken = _decode_batch(folder, [items[i] for i in keep], indices[keep], [is_bytes[i] for i in keep],
                                       decode, device)
        failed = {index for index, _ in broken}
        good = torch.tensor([int(indices[i]) for i in keep if int(indices[i]) not in failed], dtype=torch.int64)
        bad = sorted(bad + broken)
        yield good, normalize(torch.stack(images)) if images else torch.zeros((0, 3, *INPUT_SIZE), device=device), bad


@dataclass
class FolderResult:
    """Outputs for a folder: ``paths[i]`` (relative) has ``outputs[k][i]``; ``skipped`` holds ``(path, reason)``."""

    paths: List[str] = field(default_factory=list)
    outputs: List[np.ndarray] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def scores(self) -> List[float]:
        """Qualities as Python floats (first output of :meth:`QualityScorer.score_folder`)."""
        return self.outputs[0].tolist() if self.outputs else []

    @property
    def embeddings(self) -> np.ndarray:
        """``(N, D)`` embeddings (last output, when asked for)."""
        return self.outputs[-1]

    @property
    def images_per_second(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else float("nan")


def map_images(images: FaceImages, keys: Sequence[str], device: torch.device,
               forward: Callable[[torch.Tensor], Sequence[torch.Tensor]], batch_size: int, workers: int,
               verbose: bool = False, channels_last: bool = True, **loader_kwargs) -> FolderResult:
    """Run ``forward`` (a normalised ``(b, 3, 112, 112)`` batch -> per-image outputs, each ``(b, ...)``) over the
    readable ``images`` (:func:`iterate_images`); ``keys[i]`` names image ``i`` in the result. ``verbose``: a
    progress bar."""
    return _map_batches(iterate_images(images, device, batch_size, workers, channels_last=channels_last,
                                       **loader_kwargs), keys, forward, verbose)


def map_folder(root: str, rel_paths: Sequence[str], device: torch.device,
               forward: Callable[[torch.Tensor], Sequence[torch.Tensor]], batch_size: int, workers: int,
               verbose: bool = False, channels_last: bool = True, decode_jpegs: Optional[JpegDecoder] = None,
               **loader_kwargs) -> FolderResult:
    """:func:`map_images` of the files ``rel_paths`` below ``root`` (:func:`iterate_folder`), keyed by
    ``rel_paths``."""
    return _map_batches(iterate_folder(root, rel_paths, device, batch_size, workers, channels_last=channels_last,
                                       decode_jpegs=decode_jpegs, **loader_kwargs), rel_paths, forward, verbose)


def _map_batches(batches: Batches, keys: Sequence[str], forward: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                 verbose: bool) -> FolderResult:
    result = FolderResult()
    chunks: List[List[np.ndarray]] = []
    start = time.perf_counter()
    with tqdm(total=len(keys), unit="img", disable=not verbose, dynamic_ncols=True) as bar:
        for indices, x, bad in batches:
            result.skipped.extend((keys[index], reason) for index, reason in bad)
            if len(indices):
                outputs = [o.detach().float().cpu().numpy() for o in forward(x)]
                if not chunks:
                    chunks = [[] for _ in outputs]
                for chunk, output in zip(chunks, outputs):
                    chunk.append(output)
                result.paths.extend(keys[i] for i in indices.tolist())
            bar.update(len(indices) + len(bad))
    result.seconds = time.perf_counter() - start
    result.outputs = [np.concatenate(chunk) for chunk in chunks]
    return result
