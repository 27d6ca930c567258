"""``export_onnx.py``'s work: export a variant to ONNX and keep the file only when ONNX Runtime agrees with
PyTorch."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from engine.scoring.backends import OnnxModel, export_onnx
from engine.scoring.weights import resolve_weights
from model.checkpoint import create_model
from model.registry import VARIANTS, variant_names
from utils.config import check
from utils.errors import RunError
from utils.io import check_output_dir

__all__ = ["ExportConfig", "export_checked", "PARITY_TOLERANCE"]

#: Largest relative difference between ONNX Runtime and PyTorch that :func:`export_checked` accepts.
PARITY_TOLERANCE = 1e-3


@dataclass
class ExportConfig:
    """``export_onnx.py``'s settings (keys = the long flag names)."""

    model: Optional[str] = None        # the variant
    weights: Optional[str] = None      # its checkpoint (.pth, official layout); null: weights/<model>.pth, else fetched
    output: Optional[str] = None       # the .onnx file to write
    with_embedding: bool = False       # also output the 512-d embedding
    opset: int = 17

    def __post_init__(self) -> None:
        for name in ("model", "output"):
            check(getattr(self, name) is not None, f"'{name}' (--{name}) is required")
        check(self.model in VARIANTS, f"'model' is '{self.model}'; choose one of: {', '.join(variant_names())}")
        check(self.output.lower().endswith(".onnx"), f"'output' (--output) '{self.output}' must end with .onnx")
        check(7 <= self.opset <= 23, f"'opset' must be between 7 and 23, got {self.opset}")


def export_checked(name: str, weights: Optional[str], output: str, with_embedding: bool = False,
                   opset: int = 17) -> Tuple[float, float]:
    """Export variant ``name`` with ``weights`` to ``output`` and check it with ONNX Runtime on 5 inputs; the file is
    moved into place only when the check passes (else a :class:`RunError`: the difference is not finite or above
    :data:`PARITY_TOLERANCE` relative). Returns ``(largest absolute difference, largest |score|)``."""
    folder = os.path.dirname(os.path.abspath(output))
    check_output_dir(folder, "--output")
    model = create_model(name, resolve_weights(name, weights))
    staged = os.path.join(folder, f".{os.path.basename(output)}.check.onnx")
    try:
        export_onnx(model, staged, with_embedding=with_embedding, opset=opset)
        x = torch.rand(5, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            expected = model.embed_and_score(x)[1].reshape(-1).numpy()
        _, got = OnnxModel(staged, "onnxruntime")(x.numpy())
        diff = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max()) or 1.0
        if not (np.isfinite(diff) and diff / scale <= PARITY_TOLERANCE):
            raise RunError(f"ONNX Runtime and PyTorch disagree on 5 inputs (largest difference {diff:.2e}, "
                           f"{diff / scale:.2e} relative; tolerance {PARITY_TOLERANCE:g}); {output} was not written")
        os.replace(staged, output)
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    return diff, scale
