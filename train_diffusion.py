"""Train DifFIQA's denoiser: a DDPM UNet that restores BSRGAN-degraded faces (the official recipe).

    python train_diffusion.py -c configs/diffusion_train_config.yaml [--folder DIR] [--steps N] [--device DEV]
    torchrun --nproc_per_node 4 train_diffusion.py -c configs/diffusion_train_config.yaml   # DistributedDataParallel

Writes into ``trainer_params.results_folder``: ``model.pt`` (official checkpoint layout: step, model, opt, ema,
scaler; resumable with ``--resume``), ``sample-N.png`` grids, ``loss_log.csv`` and ``config.json``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_diffusion.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (unet_params, diff_params, trainer_params)")
    parser.add_argument("--images", "--folder", dest="folder", help="trainer_params.folder: the face images")
    parser.add_argument("--output", help="trainer_params.results_folder")
    parser.add_argument("--steps", type=int, help="trainer_params.train_num_steps")
    parser.add_argument("--batch-size", type=int, help="trainer_params.train_batch_size (global)")
    parser.add_argument("--device", help="trainer_params.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--resume", help="trainer_params.resume: a model.pt to continue from")
    parser.add_argument("--seed", type=int, help="trainer_params.seed")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Train; returns the process exit code."""
    args = build_parser().parse_args(argv)

    from engine.denoiser.config import DiffusionTrainConfig
    from engine.denoiser.trainer import train_diffusion

    cfg = load_config(DiffusionTrainConfig, args.config, {
        "trainer_params.folder": args.folder, "trainer_params.results_folder": args.output,
        "trainer_params.train_num_steps": args.steps, "trainer_params.train_batch_size": args.batch_size,
        "trainer_params.device": args.device, "trainer_params.resume": args.resume, "trainer_params.seed": args.seed})
    setup_logging(cfg.trainer_params.verbose)
    result = train_diffusion(cfg)
    print(f"trained to step {result['step']}; outputs in {cfg.trainer_params.results_folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "train_diffusion.py"))
