"""Prepare eDifFIQA's label-optimised training data from quality labels and teacher embeddings.

    python prepare_data.py [-c CONFIG] [-b 0.2] [-ll LABELS] [-el EMBEDDINGS] [-sl SAVE_DIR] [-sn NAME] [--min-images 10]

Writes ``average_embedding_batch-<name>.pkl`` (pickled torch float32 tensor of identity centres),
``training_items-<name>.pkl`` (pickled list of ``(path, quality, centre row)``) and ``prepare_data-<name>.json``
(a summary) into the save folder: the first two are the official script's files byte for byte, with the same
flags and defaults.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config

if TYPE_CHECKING:
    from engine.training.prepare import PrepareConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML file with the settings below (long names as keys)")
    parser.add_argument("-b", "--beta", type=float, help="share of labels above the quality threshold (0.2)")
    parser.add_argument("-ll", "--label_location", help="quality labels (./training_data/vggface2-qs.pkl)")
    parser.add_argument("-el", "--embedding_location",
                        help="teacher embeddings, .pkl dict or .npz (./training_data/cosface-embeddings.pkl)")
    parser.add_argument("-sl", "--save_location", help="output folder, created if missing (./training_data)")
    parser.add_argument("-sn", "--save_name", help="suffix of the output files (ediffiqa)")
    parser.add_argument("--min-images", dest="min_images", type=int,
                        help="chosen images an identity needs to be kept (10)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def resolve_config(args: argparse.Namespace) -> "PrepareConfig":
    from engine.training.prepare import PrepareConfig

    overrides: Dict[str, Any] = {key: getattr(args, key) for key in (
        "beta", "label_location", "embedding_location", "save_location", "save_name", "min_images")}
    overrides["verbose"] = False if args.quiet else None
    return load_config(PrepareConfig, args.config, overrides)


def main(argv: Optional[List[str]] = None) -> int:
    """Run data preparation; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.verbose)

    from engine.training.prepare import prepare

    prepare(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "prepare_data.py"))
