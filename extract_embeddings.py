"""Compute teacher embeddings of every face crop in a folder with an insightface backbone checkpoint.

    python extract_embeddings.py --images DIR --backbone iresnet100 --weights r100.pth --output embeddings.pkl

The output (official pickled dict ``{path relative to DIR: float32 (512,) array}``, or ``.npz`` with arrays
``paths`` and ``embeddings``) is what ``prepare_data.py -el`` and training read. Same preprocessing and bad-image
handling as ``inference.py``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils.cli import run_cli, setup_logging
from utils.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from model.registry import BACKBONES

    parser = argparse.ArgumentParser(prog="extract_embeddings.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of aligned 112x112 face crops (recursive)")
    parser.add_argument("--backbone", required=True, help=f"one of: {', '.join(sorted(BACKBONES))}")
    parser.add_argument("--weights", required=True, help="insightface backbone checkpoint (e.g. r100.pth)")
    parser.add_argument("--output", required=True, help="embeddings.pkl (official dict) or embeddings.npz")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: per device)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (default: per device)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Extract embeddings; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(not args.quiet)
    if not args.output.lower().endswith((".pkl", ".npz")):
        raise ConfigError(f"--output '{args.output}' must end with .pkl or .npz")
    from utils.config import MAX_BATCH, MAX_WORKERS

    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH:
        raise ConfigError(f"--batch-size must be between 1 and {MAX_BATCH}, got {args.batch_size}")
    if args.workers is not None and not 0 <= args.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 0 and {MAX_WORKERS}, got {args.workers}")

    from engine.scoring.embeddings import extract_embeddings

    extract_embeddings(args.images, args.backbone, args.weights, args.output, args.device, args.batch_size,
                       args.workers, args.flip, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "extract_embeddings.py"))
