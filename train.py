"""Train an eDifFIQA model by label-optimised knowledge distillation (the official recipe).

    python train.py -c configs/train_config.yaml [--epochs N] [--batch-size N] [--device DEV] [--output DIR]
    torchrun --nproc_per_node 4 train.py -c configs/train_config.yaml      # DistributedDataParallel

Writes into ``base.save_path``: ``model.pth`` (best validation loss, official checkpoint layout), ``last.pt``
(resumable: set ``base.resume`` or ``--resume``), ``config.json``, ``train_log.csv`` and ``history.json``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (official train_config.yaml keys)")
    parser.add_argument("--epochs", type=int, help="base.epochs")
    parser.add_argument("--batch-size", type=int, help="dataloader.train.params.batch_size (global, all processes)")
    parser.add_argument("--device", help="base.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", help="base.save_path")
    parser.add_argument("--resume", help="base.resume: a last.pt to continue from")
    parser.add_argument("--model", help="base.model: a model config (configs/ediffiqaS_config.yaml) or a variant name")
    parser.add_argument("--official", action="store_const", const=True,
                        help="base.official: 1, the official update step for step")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Train; returns the process exit code."""
    args = build_parser().parse_args(argv)

    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    cfg = load_config(TrainConfig, args.config, {
        "base.epochs": args.epochs, "dataloader.train.params.batch_size": args.batch_size, "base.device": args.device,
        "base.save_path": args.output, "base.resume": args.resume, "base.model": args.model,
        "base.official": args.official})
    setup_logging(cfg.base.verbose)
    result = train(cfg)
    print(f"best validation loss {result['best_val']:.6f}; outputs in {cfg.base.save_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "train.py"))
