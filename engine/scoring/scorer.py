"""Batch quality scoring: the fast, faithful path shared by ``inference.py``, the benchmarks and the Python API.

Speed without changing the numbers: DataLoader workers decode images and ship ``uint8`` tensors, the float
normalisation runs once per batch on the device, the model runs in ``channels_last`` under ``inference_mode``.
An optional reduced precision (``bf16`` / ``fp16`` autocast) trades a small, reported score error for speed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from dataset.image_folder import FaceFolder, JpegBytesFolder, collate_faces, collate_jpeg_bytes
from dataset.transforms import INPUT_SIZE, normalize, resize_face, to_uint8_tensor
from model.fuse import fold_batchnorm
from model.registry import create_model
from engine.scoring.backends import BACKENDS, OnnxModel, export_onnx
from utils.errors import ConfigError
from utils.runtime import default_workers, precision_context, resolve_device, resolve_precision

__all__ = ["default_batch_size", "iterate_folder", "map_folder", "FolderResult", "QualityScorer"]

_logger = logging.getLogger(__name__)

def _check_onnx_precision(precision: str) -> None:
    if precision not in ("fp32", "auto"):
        raise ConfigError(f"precision '{precision}' applies to the torch backend; the ONNX backends compute in fp32 "
                          "(use --precision fp32 or --backend torch)")


def default_batch_size(device: torch.device) -> int:
    """Batch size that runs fast on ``device`` (small batches stay in cache on CPUs)."""
    return 256 if device.type == "cuda" else 8


JpegDecoder = Callable[[List[torch.Tensor]], List[torch.Tensor]]


def cuda_jpeg_decoder(device: torch.device) -> JpegDecoder:
    """nvJPEG through ``torchvision.io.decode_jpeg(..., device=device)``: a list of raw JPEG byte tensors ->
    ``(3, H, W)`` uint8 RGB tensors on ``device``, in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

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


def iterate_folder(root: str, rel_paths: Sequence[str], device: torch.device, batch_size: int, workers: int,
                   pin_memory: bool = True, prefetch_factor: Optional[int] = None, persistent_workers: bool = False,
                   channels_last: bool = True, decode_jpegs: Optional[JpegDecoder] = None,
                   ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, str]]]]:
    """Yield ``(indices (b,), images (b, 3, 112, 112) float on device, [(index, error), ...])`` per batch.

    Unreadable files are left out of ``images``/``indices`` and reported in the third element; a batch with only
    bad files yields empty tensors. With ``decode_jpegs`` (e.g. :func:`cuda_jpeg_decoder`), the workers only read
    JPEG files and the batch's JPEGs are decoded together by it; other formats and its failures take the CPU path.
    """
    if decode_jpegs is not None:
        yield from _iterate_jpeg_bytes(root, rel_paths, device, batch_size, workers, channels_last, decode_jpegs)
        return
    dataset = FaceFolder(root, list(rel_paths))
    kwargs = {}
    if workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    # Its own generator: creating the loader must not take a draw from the global RNG that models may use.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=pin_memory and device.type == "cuda", collate_fn=collate_faces,
                        drop_last=False, generator=torch.Generator().manual_seed(0), **kwargs)
    for images, indices, errors in loader:
        bad = [(int(i), e) for i, e in zip(indices.tolist(), errors) if e]
        if bad:
            keep = torch.tensor([not e for e in errors], dtype=torch.bool)
            images, indices = images[keep], indices[keep]
        x = normalize(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield indices, x, bad


def _iterate_jpeg_bytes(root: str, rel_paths: Sequence[str], device: torch.device, batch_size: int, workers: int,
                        channels_last: bool, decode: JpegDecoder
                        ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, str]]]]:
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
        if not images:
            yield good, torch.zeros((0, 3, *INPUT_SIZE), device=device), bad
            continue
        x = normalize(torch.stack(images))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield good, x, bad


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


def map_folder(root: str, rel_paths: Sequence[str], device: torch.device,
               forward: Callable[[torch.Tensor], Sequence[torch.Tensor]], batch_size: int, workers: int,
               verbose: bool = False, channels_last: bool = True, decode_jpegs: Optional[JpegDecoder] = None,
               on_batch: Optional[Callable[[List[str], List[np.ndarray], List[Tuple[str, str]]], None]] = None,
               **loader_kwargs) -> FolderResult:
    """Run ``forward`` over the readable images of a folder, naming and counting the unreadable ones.

    Args:
        root: Folder.
        rel_paths: Files relative to ``root`` (see :func:`dataset.find_images`).
        device: Where batches go.
        forward: Maps a normalised ``(b, 3, 112, 112)`` batch to per-image outputs, each ``(b, ...)``.
        batch_size: Images per batch.
        workers: DataLoader worker processes.
        verbose: Show a progress bar.
        channels_last: Hand ``forward`` NHWC-strided batches.
        on_batch: Called with each batch's ``(paths, outputs, skipped)`` instead of collecting the outputs (memory
            stays at one batch, whatever the folder's size); the result then holds only ``skipped`` and the time.
    """
    from tqdm import tqdm

    result = FolderResult()
    chunks: List[List[np.ndarray]] = []
    start = time.perf_counter()
    with tqdm(total=len(rel_paths), unit="img", disable=not verbose, dynamic_ncols=True) as bar:
        for indices, x, bad in iterate_folder(root, rel_paths, device, batch_size, workers,
                                              channels_last=channels_last, decode_jpegs=decode_jpegs,
                                              **loader_kwargs):
            skipped = [(rel_paths[index], reason) for index, reason in bad]
            for path, reason in skipped:
                _logger.warning("skipped '%s': %s", os.path.join(root, path), reason)
            result.skipped.extend(skipped)
            outputs = [o.detach().float().cpu().numpy() for o in forward(x)] if len(indices) else []
            paths = [rel_paths[i] for i in indices.tolist()]
            if on_batch is not None:
                on_batch(paths, outputs, skipped)
            elif outputs:
                if not chunks:
                    chunks = [[] for _ in outputs]
                for chunk, output in zip(chunks, outputs):
                    chunk.append(output)
                result.paths.extend(paths)
            bar.update(len(indices) + len(bad))
    result.seconds = time.perf_counter() - start
    result.outputs = [np.concatenate(chunk) for chunk in chunks]
    return result


class QualityScorer:
    """An eDifFIQA model ready to score faces.

    Args:
        model: An :class:`model.EDifFIQA` (any ``return_feat``; the scorer asks for what it needs).
        device: Where to run.
        precision: ``fp32`` (official numbers), ``tf32`` (CUDA), ``bf16`` or ``fp16`` (autocast; faster, small
            error); see :func:`precision_context`.
        channels_last: Run convolutions in NHWC layout (same numbers, faster on CPUs and tensor cores).

    Example:
        >>> scorer = QualityScorer.from_pretrained("ediffiqaL", "weights/ediffiqaL.pth")  # doctest: +SKIP
        >>> scorer.score_images([Image.open("face.jpg")])  # doctest: +SKIP
        array([0.71], dtype=float32)
    """

    def __init__(self, model: Optional[nn.Module], device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                 channels_last: bool = True, fold_bn: bool = False, onnx: Optional[OnnxModel] = None) -> None:
        if (model is None) == (onnx is None):
            raise ValueError("QualityScorer needs exactly one of a torch model and an ONNX model")
        self.onnx = onnx
        self.device = resolve_device(device) if isinstance(device, str) else device
        if onnx is not None:
            _check_onnx_precision(precision)
            self.device, precision, channels_last = torch.device("cpu"), "fp32", False
        self.precision = resolve_precision(self.device, precision)
        precision = self.precision
        with precision_context(self.device, precision):  # validates the combination early
            pass
        self.channels_last = channels_last
        self.model = None
        if model is not None:
            model = model.eval()
            if fold_bn:
                model = fold_batchnorm(model)
            self.model = model.to(self.device)
            if channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def backend(self) -> str:
        """``torch``, ``onnxruntime`` or ``opencv``."""
        return self.onnx.backend if self.onnx is not None else "torch"

    @classmethod
    def from_pretrained(cls, name: str, weights: Optional[str], device: Union[str, torch.device] = "auto",
                        precision: str = "fp32", channels_last: bool = True, backend: str = "torch",
                        fold_bn: bool = True) -> "QualityScorer":
        """Build variant ``name`` (``ediffiqaL/M/S/T``) with its checkpoint (see :func:`model.create_model`).

        ``weights`` may also be an ONNX file (``export_onnx.py``, or the OpenCV Zoo's eDifFIQA(T)); it then runs on
        ONNX Runtime unless ``backend="opencv"``. With a ``.pth`` and ``backend`` ``onnxruntime``/``opencv`` the model
        is exported to a temporary ONNX file first. ``fold_bn`` folds BatchNorm into convolutions (torch backend;
        scores change by about 1e-6 relative).
        """
        if backend not in BACKENDS:
            raise ConfigError(f"backend '{backend}' not understood; use one of: {', '.join(BACKENDS)}")
        if weights is not None and weights.lower().endswith(".onnx"):
            runtime = "onnxruntime" if backend == "torch" else backend
            return cls(None, precision=precision, onnx=OnnxModel(weights, runtime))
        if backend != "torch":
            _check_onnx_precision(precision)  # before the export, not after
        model = create_model(name, weights)
        if backend == "torch":
            return cls(model, device=device, precision=precision, channels_last=channels_last, fold_bn=fold_bn)
        import tempfile

        # Both runtimes read the whole file when they load it, so the export need not outlive this call.
        with tempfile.TemporaryDirectory(prefix="ediffiqa-onnx-") as folder:
            path = os.path.join(folder, f"{name}.onnx")
            export_onnx(model, path, with_embedding=True)
            return cls(None, precision=precision, onnx=OnnxModel(path, backend))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the model on a normalised ``(B, 3, 112, 112)`` batch; return float32 ``(B, 512)`` and ``(B,)``.

        ONNX models exported without the embedding return an empty ``(B, 0)`` embedding.
        """
        if self.onnx is not None:
            feat, quality = self.onnx(x.detach().cpu().contiguous().numpy())
            feat_t = torch.from_numpy(feat) if feat is not None else torch.zeros((len(x), 0))
            return feat_t.float(), torch.from_numpy(np.asarray(quality)).float().reshape(-1)
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), precision_context(self.device, self.precision):
            feat, quality = self.model.embed_and_score(x)
        # reshape(-1), not squeeze(): a batch of one stays a 1-d array (the official code crashes there).
        return feat.float(), quality.float().reshape(-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Qualities ``(B,)`` of a normalised ``(B, 3, 112, 112)`` float batch."""
        return self.forward(x)[1]

    def score_images(self, images: Sequence[Image.Image], return_feat: bool = False
                     ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Score PIL images (aligned face crops, any mode and size; resized to 112x112 as the official code does).

        Returns:
            ``(N,)`` float32 qualities, or ``((N, 512) embeddings, (N,) qualities)`` with ``return_feat``.
        """
        if len(images) == 0:
            empty = np.zeros((0,), dtype=np.float32)
            return (np.zeros((0, 512), dtype=np.float32), empty) if return_feat else empty
        batch = torch.stack([to_uint8_tensor(resize_face(img.convert("RGB"))) for img in images])
        feat, quality = self.forward(normalize(batch.to(self.device)))
        if return_feat:
            return feat.cpu().numpy(), quality.cpu().numpy()
        return quality.cpu().numpy()

    def _default_workers(self) -> int:
        # ONNX Runtime already keeps every core busy; on a CPU a decoding process only competes with it.
        if self.onnx is not None and self.device.type == "cpu":
            return 0
        return default_workers(self.device)

    def score_folder(self, root: str, rel_paths: Sequence[str], batch_size: Optional[int] = None,
                     workers: Optional[int] = None, verbose: bool = False, return_feat: bool = False,
                     on_batch: Optional[Callable[[List[str], List[np.ndarray], List[Tuple[str, str]]], None]] = None,
                     **loader_kwargs) -> FolderResult:
        """Score the files ``rel_paths`` (relative to ``root``), skipping and reporting unreadable ones.

        Returns:
            A :class:`FolderResult` whose ``scores`` (and ``embeddings`` with ``return_feat``) follow ``paths``.
        """
        def forward(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            feat, quality = self.forward(x)
            return (quality, feat) if return_feat else (quality,)

        return map_folder(root, rel_paths, self.device, forward,
                          batch_size=batch_size or default_batch_size(self.device),
                          workers=self._default_workers() if workers is None else workers,
                          verbose=verbose, channels_last=self.channels_last, on_batch=on_batch, **loader_kwargs)
