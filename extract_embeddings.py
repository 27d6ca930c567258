"""Compute teacher embeddings of every face crop in a folder with an insightface backbone checkpoint.

    python extract_embeddings.py --images DIR --backbone iresnet100 --weights r100.pth --output embeddings.pkl
    python extract_embeddings.py --images DIR --model ediffiqaT --output embeddings.pkl   # a published model's backbone

The output (official pickled dict ``{path relative to DIR: float32 (512,) array}``, or ``.npz`` with arrays
``paths`` and ``embeddings``) is what ``prepare_data.py -el`` and training read. Same preprocessing and bad-image
handling as ``inference.py``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils import cli
from utils.cli import Flag


def _backbones() -> List[str]:
    from model.registry import backbone_names

    return backbone_names()


def _models() -> List[str]:
    from model.registry import variant_names

    return variant_names()


#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--images",), "images", "folder of aligned 112x112 face crops (recursive)"),
    Flag(("--backbone",), "backbone", "the backbone", choices=_backbones),
    Flag(("--weights",), "weights", "its insightface checkpoint (with --model: that model's checkpoint)"),
    Flag(("--model",), "model", "instead of --backbone: the backbone of a published model, its weights fetched "
         "by name as inference.py fetches them (unless --weights)", choices=_models),
    Flag(("--output",), "output", "embeddings.pkl (official dict) or embeddings.npz"),
    Flag(("--flip",), "flip", "average with the horizontally flipped image", const=True),
    Flag(("--device",), "device", "auto, cpu, cuda or cuda:N"),
    Flag(("--batch-size",), "batch_size", "images per batch (default: per device)", type=int),
    Flag(("--workers",), "workers", "DataLoader worker processes (default: per device)", type=int),
    Flag(("-q", "--quiet"), "verbose", "no progress bar or info logs", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("extract_embeddings.py", __doc__, FLAGS, "batch_size=64")


def main(argv: Optional[List[str]] = None) -> int:
    """Extract embeddings; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.scoring.embeddings import EmbedConfig, extract_embeddings

    cfg = cli.load_script_config(EmbedConfig, args, FLAGS)
    cli.setup_logging(cfg.verbose)
    extract_embeddings(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "extract_embeddings.py"))
