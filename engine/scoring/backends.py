"""Inference backends: PyTorch (default), ONNX Runtime and OpenCV's DNN module, behind one call.

Every backend maps a normalised ``(B, 3, 112, 112)`` float batch to ``(B,)`` qualities (and, where the model offers
it, ``(B, 512)`` embeddings). ONNX files come from ``export_onnx.py`` or the OpenCV Model Zoo
(``ediffiqa_tiny_jun2024.onnx``, fixed batch 1, which is run image by image).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from engine.scoring import BACKENDS
from model.registry import VARIANTS
from utils.errors import CheckpointError, ConfigError
from utils.io import atomic_open
from utils.runtime import cpu_count, cpu_kind, resolve_precision

# onnxruntime and OpenCV (cv2) are optional and heavy: each is imported only where an ONNX file needs it.

__all__ = ["BACKENDS", "choose_backend", "resolve_backend", "export_onnx", "OnnxModel", "check_onnx_file"]

_logger = logging.getLogger(__name__)



class _QualityOnly(nn.Module):
    def __init__(self, model: nn.Module, with_embedding: bool) -> None:
        super().__init__()
        self.model = model
        self.with_embedding = with_embedding

    def forward(self, x: torch.Tensor):
        feat, quality = self.model.embed_and_score(x)
        return (feat, quality) if self.with_embedding else quality


def export_onnx(model: nn.Module, path: str, with_embedding: bool = False, opset: int = 17) -> None:
    """Export an :class:`model.EDifFIQA` to ONNX: input ``input`` ``(N, 3, 112, 112)`` float32 normalised to
    [-1, 1] (RGB, as the OpenCV Zoo demo feeds it), output ``quality`` ``(N, 1)`` (and ``embedding`` ``(N, 512)``
    first with ``with_embedding``); the batch dimension is dynamic."""
    wrapper = _QualityOnly(model.eval(), with_embedding).eval()
    outputs = ["embedding", "quality"] if with_embedding else ["quality"]
    dynamic = {"input": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    # The TorchScript exporter: no onnxscript dependency and 2 s instead of 16 s for eDifFIQA(T); same graph here.
    with atomic_open(path, "wb") as handle, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (torch.zeros(2, 3, 112, 112),), handle, input_names=["input"],
                          output_names=outputs, dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def check_onnx_file(path: str, session) -> Tuple[str, Optional[int], List[str]]:
    """``(input name, fixed batch size or None, output names)`` of the ONNX Runtime ``session`` of ``path``, once it
    is known to take ``(N, 3, 112, 112)`` and give ``(N, 1)``."""
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or list(shape[1:]) != [3, 112, 112]:
        raise CheckpointError(f"ONNX file '{path}' takes {[i.shape for i in inputs]}, expected one input of shape "
                              "(N, 3, 112, 112); it is not an eDifFIQA model")
    outputs = session.get_outputs()
    if outputs[-1].shape[-1] != 1:
        raise CheckpointError(f"ONNX file '{path}' outputs {[o.shape for o in outputs]}, expected a (N, 1) quality")
    batch = shape[0] if isinstance(shape[0], int) else None
    return inputs[0].name, batch, [o.name for o in outputs]


def _ort_session(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX files need onnxruntime: pip install onnxruntime") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"ONNX file '{path}' not found")
    options = ort.SessionOptions()
    # The model owns the cores; decoding happens in DataLoader worker processes, not in this one.
    options.intra_op_num_threads = cpu_count()
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for malformed files
        raise CheckpointError(f"cannot load ONNX file '{path}': {str(exc).splitlines()[0]}") from None


class OnnxModel:
    """An exported eDifFIQA model run by ONNX Runtime (``onnxruntime``) or OpenCV DNN (``opencv``)."""

    def __init__(self, path: str, backend: str = "onnxruntime") -> None:
        if backend not in ("onnxruntime", "opencv"):
            raise ConfigError(f"backend '{backend}' cannot run ONNX files; use onnxruntime or opencv")
        self.path = path
        self.backend = backend
        # One ONNX Runtime session both checks the file and, for that backend, runs it.
        session = _ort_session(path)
        self.input_name, self.fixed_batch, self.output_names = check_onnx_file(path, session)
        self.has_embedding = len(self.output_names) == 2
        if backend == "onnxruntime":
            self.session = session
        else:
            try:
                import cv2
            except ImportError:
                raise ConfigError("the opencv backend needs OpenCV: pip install opencv-python-headless") from None
            cv2.setNumThreads(cpu_count())
            # OpenCV warns on stderr that its new ONNX parser falls back to the old one for these models, whatever
            # the log level of the script; the model loads, so only errors are shown.
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            try:
                self.net = cv2.dnn.readNetFromONNX(path)
            finally:
                cv2.utils.logging.setLogLevel(level)

    def _run(self, x: np.ndarray) -> List[np.ndarray]:
        if self.backend == "onnxruntime":
            return self.session.run(self.output_names, {self.input_name: x})
        self.net.setInput(x)
        outs = self.net.forward(self.output_names) if self.has_embedding else [self.net.forward()]
        return [np.asarray(o) for o in outs]

    def __call__(self, x: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """``(B, 3, 112, 112)`` float32 -> ``((B, 512) embeddings or None, (B,) qualities)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is not None and len(x) != self.fixed_batch:
            parts = [self._run(x[i:i + self.fixed_batch]) for i in range(0, len(x), self.fixed_batch)]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        else:
            outs = self._run(x)
        quality = outs[-1].reshape(-1)
        return (outs[0] if self.has_embedding else None), quality


def choose_backend(name: str, device: torch.device, precision: str) -> Tuple[str, str]:
    """``--backend auto``: ``(backend, why)`` for variant ``name`` on ``device`` at the resolved ``precision``: ONNX
    Runtime where it measured faster than torch for this variant in fp32 on this kind of CPU (the registry's
    ``onnx_faster_on``), torch everywhere else (GPUs, bf16/fp16, which the ONNX backends do not run)."""
    variant = VARIANTS[name]
    if device.type != "cpu":
        return "torch", f"the ONNX backends run on the CPU, this run on {device}"
    if precision != "fp32":
        return "torch", f"{precision} runs on torch (the ONNX backends compute in fp32)"
    kind = cpu_kind()
    if kind not in variant.onnx_faster_on:
        return "torch", (f"torch was not slower than ONNX Runtime for {variant.title} in fp32 on {kind} CPUs" if
                         kind in ("avx512_bf16", "avx2", "amx") else f"no measurement on {kind} CPUs")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch", "onnxruntime is not installed"
    return "onnxruntime", f"ONNX Runtime measured faster than torch for {variant.title} in fp32 on {kind} CPUs"


def resolve_backend(name: str, backend: str, device: torch.device, precision: str) -> str:
    """``backend``, or for ``auto`` the one :func:`choose_backend` picks (said once in the log, with why)."""
    if backend != "auto":
        return backend
    chosen, why = choose_backend(name, device, resolve_precision(device, precision))
    _logger.info("--backend auto: %s (%s)", chosen, why)
    return chosen
