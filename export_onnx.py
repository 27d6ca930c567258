"""Export an eDifFIQA variant to ONNX and check it against PyTorch with ONNX Runtime.

    python export_onnx.py --model ediffiqaT --weights weights/ediffiqaT.pth --output ediffiqaT.onnx [--with-embedding]

Input ``input``: ``(N, 3, 112, 112)`` float32 RGB normalised to [-1, 1] (``(x / 255 - 0.5) / 0.5``, as the OpenCV Model
Zoo's eDifFIQA demo prepares it); output ``quality`` ``(N, 1)`` (with ``--with-embedding`` also ``embedding``
``(N, 512)`` first). The batch dimension is dynamic.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils.cli import run_cli, setup_logging
from utils.errors import ConfigError

#: Largest relative difference between ONNX Runtime and PyTorch that the export accepts.
PARITY_TOLERANCE = 1e-3


def main(argv: Optional[List[str]] = None) -> int:
    """Export and check; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="ediffiqaL, ediffiqaM, ediffiqaS or ediffiqaT")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth, official layout)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--with-embedding", action="store_true", help="also output the 512-d embedding")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    setup_logging(True)
    if not args.output.lower().endswith(".onnx"):
        raise ConfigError(f"--output '{args.output}' must end with .onnx")

    import os

    import numpy as np
    import torch

    from model.registry import create_model
    from utils.backends import OnnxModel, export_onnx
    from utils.io import check_output_dir

    check_output_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    model = create_model(args.model, args.weights)
    # Exported beside the output and moved there only after the parity check passes.
    staged = os.path.join(os.path.dirname(os.path.abspath(args.output)), f".{os.path.basename(args.output)}.check.onnx")
    try:
        export_onnx(model, staged, with_embedding=args.with_embedding, opset=args.opset)
        x = torch.rand(5, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            expected = model.mlp(model.base_model(x)).reshape(-1).numpy()
        _, got = OnnxModel(staged, "onnxruntime")(x.numpy())
        diff = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max()) or 1.0
        if not (np.isfinite(diff) and diff / scale <= PARITY_TOLERANCE):
            print(f"export_onnx.py: error: ONNX Runtime and PyTorch disagree on 5 inputs (largest difference "
                  f"{diff:.2e}, {diff / scale:.2e} relative; tolerance {PARITY_TOLERANCE:g}); {args.output} was not "
                  "written", file=sys.stderr)
            return 1
        os.replace(staged, args.output)
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    print(f"wrote {args.output}; ONNX Runtime vs PyTorch on 5 inputs: largest difference {diff:.2e} "
          f"({diff / scale:.2e} relative)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "export_onnx.py"))
