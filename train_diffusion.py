"""Train DifFIQA's denoiser: a DDPM UNet that restores BSRGAN-degraded faces (the official recipe).

    python train_diffusion.py -c configs/diffusion_train_config.yaml [--images DIR] [--steps N] [--device DEV]
                              [--set KEY=VALUE ...]
    torchrun --nproc_per_node 4 train_diffusion.py -c configs/diffusion_train_config.yaml   # DistributedDataParallel

Writes into ``trainer_params.results_folder``: ``model.pt`` (official checkpoint layout: step, model, opt, ema,
scaler; resumable with ``--resume``), ``sample-N.png`` grids, ``loss_log.csv`` and ``config.json``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils import cli
from utils.cli import Flag

#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--images", "--folder"), "trainer_params.folder", "the face images"),
    Flag(("--output",), "trainer_params.results_folder", "output folder"),
    Flag(("--steps",), "trainer_params.train_num_steps", "training steps", type=int),
    Flag(("--batch-size",), "trainer_params.train_batch_size", "global batch", type=int),
    Flag(("--device",), "trainer_params.device", "auto, cpu, cuda or cuda:N"),
    Flag(("--resume",), "trainer_params.resume", "a model.pt to continue from"),
    Flag(("--seed",), "trainer_params.seed", "run seed", type=int),
    Flag(("--no-figure",), "trainer_params.figure", "no loss_log.png", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("train_diffusion.py", __doc__, FLAGS, "trainer_params.train_lr=1e-4",
                            "YAML config (unet_params, diff_params, trainer_params)")


def main(argv: Optional[List[str]] = None) -> int:
    """Train; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.denoiser.config import DiffusionTrainConfig
    from engine.denoiser.trainer import train_diffusion

    cfg = cli.load_script_config(DiffusionTrainConfig, args, FLAGS)
    cli.setup_logging(cfg.trainer_params.verbose)
    result = train_diffusion(cfg)
    print(f"trained to step {result['step']}; outputs in {cfg.trainer_params.results_folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "train_diffusion.py"))
