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

from utils import cli
from utils.cli import Flag


def _variants() -> List[str]:
    from model.registry import variant_names

    return variant_names()


#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--model",), "model", "the variant", choices=_variants),
    Flag(("--weights",), "weights", "checkpoint (.pth, official layout); default weights/<model>.pth, else fetched"),
    Flag(("--output",), "output", "the .onnx file to write"),
    Flag(("--with-embedding",), "with_embedding", "also output the 512-d embedding", const=True),
    Flag(("--opset",), "opset", "ONNX opset (17)", type=int),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("export_onnx.py", __doc__, FLAGS, "opset=13")


def main(argv: Optional[List[str]] = None) -> int:
    """Export and check; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.scoring.export import ExportConfig, export_checked

    cfg = cli.load_script_config(ExportConfig, args, FLAGS)
    cli.setup_logging(True)
    diff, scale = export_checked(cfg.model, cfg.weights, cfg.output, cfg.with_embedding, cfg.opset)
    print(f"wrote {cfg.output}; ONNX Runtime vs PyTorch on 5 inputs: largest difference {diff:.2e} "
          f"({diff / scale:.2e} relative)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "export_onnx.py"))
