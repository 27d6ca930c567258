"""DifFIQA quality labels for a folder of aligned faces (the labels eDifFIQA distils).

    python diffiqa_score.py -c configs/diffiqa_config.yaml [--images DIR] [--output DIR] [--official] [--seed N]
    torchrun --nproc_per_node 4 diffiqa_score.py -c configs/diffiqa_config.yaml     # split the folder across GPUs

Writes into ``inference.save_loc``: ``quality-scores.pkl`` (dict {path: quality}, the format ``prepare_data.py -ll``
reads), ``quality-scores.csv`` and ``quality-scores.json`` (seed, mode, settings, counts). Scores are flushed to
``quality-scores.part*.csv`` while running: run the same command again after a kill and it continues.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffiqa_score.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (the official inference section, base, dataset)")
    parser.add_argument("--images", help="inference.images_loc: folder of aligned face crops")
    parser.add_argument("--output", help="inference.save_loc")
    parser.add_argument("--denoiser", help="inference.model_loc: the denoiser checkpoint")
    parser.add_argument("--fr-weights", help="base.fr_weights: FR weights (instead of those of inference.fr_config)")
    parser.add_argument("--official", action="store_true", help="base.official: the official computation")
    parser.add_argument("--seed", type=int, help="base.seed")
    parser.add_argument("--device", help="base.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", help="base.precision: fp32, tf32, bf16 or fp16")
    parser.add_argument("--batch-size", type=int, help="inference.batch_size")
    parser.add_argument("--limit", type=int, help="base.limit: stop after this many new images")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the unfinished scores (part files, settings) of an earlier run in the output "
                        "folder and start afresh")
    parser.add_argument("-q", "--quiet", action="store_true", help="inference.verbose: 0")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Score a folder; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from engine.labels.config import ScoreConfig

    cfg = load_config(ScoreConfig, args.config, {
        "inference.images_loc": args.images, "inference.save_loc": args.output, "inference.model_loc": args.denoiser,
        "base.fr_weights": args.fr_weights, "base.official": True if args.official else None, "base.seed": args.seed,
        "base.device": args.device, "base.precision": args.precision, "inference.batch_size": args.batch_size,
        "base.limit": args.limit, "inference.verbose": False if args.quiet else None})
    setup_logging(cfg.inference.verbose)

    from engine.labels.run import run_scoring

    summary = run_scoring(cfg, fresh=args.fresh)
    if summary.complete:
        print(f"scored {summary.scored} new image(s) in this run; {summary.total} scored in all, skipped "
              f"{len(summary.skipped_names)}; wrote "
              f"{os.path.join(cfg.inference.save_loc, 'quality-scores.pkl')} and .csv", file=sys.stderr)
    elif summary.left:
        print(f"stopped with {summary.left} image(s) left (base.limit); run the same command to continue",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "diffiqa_score.py"))
