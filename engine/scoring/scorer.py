"""Batch quality scoring: the fast, faithful path shared by ``inference.py``, the benchmarks and the Python API.

Speed without changing the numbers: DataLoader workers decode images and ship ``uint8`` tensors, the float
normalisation runs once per batch on the device, the model runs in ``channels_last`` under ``inference_mode``.
An optional reduced precision (``bf16`` / ``fp16`` autocast) trades a small, reported score error for speed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from dataset.folder_batches import FolderResult, map_folder
from dataset.transforms import normalize, resize_face, to_uint8_tensor
from engine.scoring.backends import BACKENDS, OnnxModel, export_onnx, resolve_backend
from engine.scoring.weights import resolve_weights
from model.checkpoint import create_model
from model.fuse import fold_batchnorm
from utils.errors import ConfigError
from utils.runtime import precision_context, reader_workers, resolve_device, resolve_precision

__all__ = ["default_batch_size", "folder_batching", "QualityScorer"]


def _check_onnx_precision(precision: str) -> None:
    if precision not in ("fp32", "auto"):
        raise ConfigError(f"precision '{precision}' applies to the torch backend; the ONNX backends compute in fp32 "
                          "(use --precision fp32 or --backend torch)")


def default_batch_size(device: torch.device, precision: str = "fp32") -> int:
    """Batch size that runs fast on ``device`` (measured with benchmarks/inference_throughput.py: small batches stay
    in cache on CPUs; bf16 kernels gain up to 16)."""
    if device.type == "cuda":
        return 256
    return 16 if precision in ("bf16", "fp16") else 8


def folder_batching(device: torch.device, precision: str = "fp32", batch_size: Optional[int] = None,
                    workers: Optional[int] = None) -> Dict[str, int]:
    """``batch_size`` and ``workers`` (reader processes) of a run over a folder of faces on ``device``: as given,
    else :func:`default_batch_size` and :func:`utils.runtime.reader_workers`. The one rule of ``inference.py``,
    :meth:`QualityScorer.score_folder` and ``extract_embeddings.py``."""
    return {"batch_size": batch_size or default_batch_size(device, precision),
            "workers": reader_workers(device) if workers is None else workers}


class QualityScorer:
    """An eDifFIQA model (any ``return_feat``; the scorer asks for what it needs), or an ONNX one, ready to score
    faces. ``precision``: ``fp32`` (official numbers), ``tf32`` (CUDA), ``bf16`` or ``fp16`` (autocast; faster, small
    error; :func:`utils.runtime.precision_context`); ``channels_last``: convolutions in NHWC layout (same numbers,
    faster on CPUs and tensor cores).

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
        with precision_context(self.device, self.precision):  # validates the combination early
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
    def backend(self) -> str:  # torch, onnxruntime or opencv
        return self.onnx.backend if self.onnx is not None else "torch"

    @classmethod
    def from_pretrained(cls, name: str, weights: Optional[str] = None, device: Union[str, torch.device] = "auto",
                        precision: str = "fp32", channels_last: bool = True, backend: str = "torch",
                        fold_bn: bool = True, progress: bool = True) -> "QualityScorer":
        """Build variant ``name`` with its checkpoint (see :func:`model.create_model`): ``weights``, else
        ``weights/<name>.pth``, else the published file fetched by name into torch's cache (see
        :func:`engine.scoring.weights.resolve_weights`).

        ``weights`` may also be an ONNX file (``export_onnx.py``, or the OpenCV Zoo's eDifFIQA(T)); it then runs on
        ONNX Runtime unless ``backend="opencv"``. With a ``.pth`` and ``backend`` ``onnxruntime``/``opencv`` the model
        is exported to a temporary ONNX file first. ``fold_bn`` folds BatchNorm into convolutions (torch backend;
        scores change by about 1e-6 relative).
        """
        if backend not in BACKENDS:
            raise ConfigError(f"backend '{backend}' not understood; use one of: {', '.join(BACKENDS)}")
        if backend == "auto":
            backend = resolve_backend(name, backend, resolve_device(device) if isinstance(device, str) else device,
                                      precision)
        weights = resolve_weights(name, weights, backend, progress)
        if weights.lower().endswith(".onnx"):
            runtime = "onnxruntime" if backend == "torch" else backend
            return cls(None, precision=precision, onnx=OnnxModel(weights, runtime))
        if backend != "torch":
            _check_onnx_precision(precision)  # before the export, not after
        model = create_model(name, weights)
        if backend == "torch":
            return cls(model, device=device, precision=precision, channels_last=channels_last, fold_bn=fold_bn)
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
        """``(N,)`` float32 qualities (with ``return_feat`` also ``(N, 512)`` embeddings, first) of PIL images:
        aligned face crops, any mode and size, resized to 112x112 as the official code does."""
        if len(images) == 0:
            empty = np.zeros((0,), dtype=np.float32)
            return (np.zeros((0, 512), dtype=np.float32), empty) if return_feat else empty
        batch = torch.stack([to_uint8_tensor(resize_face(img.convert("RGB"))) for img in images])
        feat, quality = self.forward(normalize(batch.to(self.device)))
        if return_feat:
            return feat.cpu().numpy(), quality.cpu().numpy()
        return quality.cpu().numpy()

    def score_folder(self, root: str, rel_paths: Sequence[str], batch_size: Optional[int] = None,
                     workers: Optional[int] = None, verbose: bool = False, return_feat: bool = False,
                     **loader_kwargs) -> FolderResult:
        """Score the files ``rel_paths`` below ``root``, skipping and reporting unreadable ones: a
        :class:`FolderResult` whose ``scores`` (and ``embeddings`` with ``return_feat``) follow ``paths``."""
        def forward(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            feat, quality = self.forward(x)
            return (quality, feat) if return_feat else (quality,)

        return map_folder(root, rel_paths, self.device, forward,
                          **folder_batching(self.device, self.precision, batch_size, workers),
                          verbose=verbose, channels_last=self.channels_last, **loader_kwargs)
