"""DifFIQA quality labels for a folder of aligned faces (the labels eDifFIQA distils).

    python diffiqa_score.py -c configs/diffiqa_config.yaml [--images DIR] [--output DIR] [--official] [--seed N]
                            [--set KEY=VALUE ...]
    torchrun --nproc_per_node 4 diffiqa_score.py -c configs/diffiqa_config.yaml     # split the folder across GPUs

Writes into ``inference.save_loc``: ``quality-scores.pkl`` (dict {path: quality}, the format ``prepare_data.py -ll``
reads), ``quality-scores.csv`` and ``quality-scores.json`` (settings, resolved config, counts). Scores are flushed to
``quality-scores.part*.csv`` while running: run the same command again after a kill and it continues.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils import cli
from utils.cli import Flag

#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--images",), "inference.images_loc", "folder of aligned face crops"),
    Flag(("--output",), "inference.save_loc", "output folder"),
    Flag(("--denoiser",), "inference.model_loc", "the denoiser checkpoint"),
    Flag(("--fr-weights",), "base.fr_weights", "FR weights (instead of those of inference.fr_config)"),
    Flag(("--official",), "base.official", "the official computation", const=True),
    Flag(("--seed",), "base.seed", "run seed", type=int),
    Flag(("--device",), "base.device", "auto, cpu, cuda or cuda:N"),
    Flag(("--precision",), "base.precision", "fp32, tf32, bf16 or fp16"),
    Flag(("--batch-size",), "inference.batch_size", "UNet inputs per call", type=int),
    Flag(("--limit",), "base.limit", "score N new images rounded down to whole batches (at least one batch), then "
         "stop; rerun to continue", type=int),
    Flag(("-q", "--quiet"), "inference.verbose", "no progress bar or info logs", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("diffiqa_score.py", __doc__, FLAGS, "inference.repeats=3",
                              "YAML config (the official inference section, base, dataset)")
    parser.add_argument("--fresh", action="store_true",
                        help="remove the files of an earlier run in the output folder (part files, settings and its "
                        "finished scores) and start afresh")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Score a folder; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.labels.config import ScoreConfig
    from engine.labels.run import run_scoring

    cfg = cli.load_script_config(ScoreConfig, args, FLAGS)
    cli.setup_logging(cfg.inference.verbose)
    run_scoring(cfg, fresh=args.fresh, command=["diffiqa_score.py", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "diffiqa_score.py"))
