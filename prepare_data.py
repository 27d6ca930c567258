"""Prepare eDifFIQA's label-optimised training data from quality labels and teacher embeddings.

    python prepare_data.py [-c CONFIG] [-b 0.2] [-ll LABELS] [-el EMBEDDINGS] [-sl SAVE_DIR] [-sn NAME]
                           [--min-images 10] [--set KEY=VALUE ...]

Writes ``average_embedding_batch-<name>.pkl`` (pickled torch float32 tensor of identity centres),
``training_items-<name>.pkl`` (pickled list of ``(path, quality, centre row)``) and ``prepare_data-<name>.json``
(a summary) into the save folder: the first two are the official script's files byte for byte, with the same
flags and defaults.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils import cli
from utils.cli import Flag

#: The official flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("-b", "--beta"), "beta", "share of labels above the quality threshold (0.2)", type=float),
    Flag(("-ll", "--label_location"), "label_location", "quality labels (./training_data/vggface2-qs.pkl)"),
    Flag(("-el", "--embedding_location"), "embedding_location",
         "teacher embeddings, .pkl dict or .npz (./training_data/cosface-embeddings.pkl)"),
    Flag(("-sl", "--save_location"), "save_location", "output folder, created if missing (./training_data)"),
    Flag(("-sn", "--save_name"), "save_name", "suffix of the output files (ediffiqa)"),
    Flag(("--min-images",), "min_images", "chosen images an identity needs to be kept (10)", type=int),
    Flag(("--no-figure",), "figure", "no prepare_data-<name>.png", const=False),
    Flag(("-q", "--quiet"), "verbose", "only warnings and errors", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("prepare_data.py", __doc__, FLAGS, "min_images=5",
                            "YAML file with the settings below (long names as keys)")


def main(argv: Optional[List[str]] = None) -> int:
    """Run data preparation; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.training.prepare import PrepareConfig, prepare

    cfg = cli.load_script_config(PrepareConfig, args, FLAGS)
    cli.setup_logging(cfg.verbose)
    prepare(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "prepare_data.py"))
