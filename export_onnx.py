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

    from engine.scoring.backends import export_checked

    diff, scale = export_checked(args.model, args.weights, args.output, args.with_embedding, args.opset)
    print(f"wrote {args.output}; ONNX Runtime vs PyTorch on 5 inputs: largest difference {diff:.2e} "
          f"({diff / scale:.2e} relative)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "export_onnx.py"))
