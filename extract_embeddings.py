"""Compute teacher embeddings of every face crop in a folder with an insightface backbone checkpoint.

    python extract_embeddings.py --images DIR --backbone iresnet100 --weights r100.pth --output embeddings.pkl

The output (official pickled dict ``{path relative to DIR: float32 (512,) array}``, or ``.npz`` with arrays
``paths`` and ``embeddings``) is what ``prepare_data.py -el`` and training read. Same preprocessing and bad-image
handling as ``inference.py``.
"""
from __future__ import annotations

import argparse
import os
import logging
import sys
from typing import List, Optional, Tuple

from utils.cli import run_cli, setup_logging
from utils.errors import ConfigError, DataError

_logger = logging.getLogger("extract_embeddings")


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

    import torch

    from dataset.formats import write_embeddings
    from dataset.image_folder import find_images
    from model.registry import build_backbone, load_backbone
    from utils.io import check_output_dir
    from utils.runtime import resolve_device
    from utils.scoring import default_batch_size, default_workers, map_folder

    build_backbone(args.backbone)  # unknown names fail before any file is read
    check_output_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    device = resolve_device(args.device)
    rel_paths = find_images(args.images, key="--images")
    backbone = load_backbone(args.backbone, args.weights).to(device).to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> Tuple[torch.Tensor]:
        with torch.inference_mode():
            feat = backbone(x)
            if args.flip:
                feat = (feat + backbone(torch.flip(x, dims=[3]))) / 2
        return (feat,)

    _logger.info("embedding %d images in '%s' with %s on %s", len(rel_paths), args.images, args.backbone, device)
    result = map_folder(args.images, rel_paths, device, forward,
                        batch_size=args.batch_size or default_batch_size(device),
                        workers=default_workers(device) if args.workers is None else args.workers,
                        verbose=not args.quiet)
    if not result.paths:
        raise DataError(f"none of the {len(rel_paths)} images in '{args.images}' could be read")
    write_embeddings(args.output, result.paths, result.embeddings)
    print(f"embedded {len(result.paths)}, skipped {len(result.skipped)}, {result.seconds:.1f} s, "
          f"{result.images_per_second:.1f} images/s; wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "extract_embeddings.py"))
