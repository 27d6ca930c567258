"""DifFIQA quality labels for a folder of aligned faces (the labels eDifFIQA distils).

    python diffiqa_score.py -c configs/diffiqa_config.yaml [--images DIR] [--output DIR] [--official] [--seed N]
    torchrun --nproc_per_node 4 diffiqa_score.py -c configs/diffiqa_config.yaml     # split the folder across GPUs

Writes into ``base.save_path``: ``quality-scores.pkl`` (dict {path: quality}, the format ``prepare_data.py -ll``
reads), ``quality-scores.csv`` and ``quality-scores.json`` (seed, mode, settings, counts). Scores are flushed to
``quality-scores.part*.csv`` while running: run the same command again after a kill and it continues.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import check, load_config

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass
class ScoreBase:
    """``base``: run settings."""

    seed: int = 0
    device: str = "auto"
    verbose: bool = True
    save_path: str = "./outputs/diffiqa"
    official: bool = False          # reproduce the official computation draw for draw
    precision: Optional[str] = None  # null: fp32; with official on CUDA, tf32 (PyTorch's default, what it ran with)
    flush_every: int = 64
    keys: str = "relative"          # pickle keys: paths relative to dataset.loc (as vggface2-qs.pkl), or "joined"
    limit: Optional[int] = None     # score at most this many new images, then stop (run again to continue)

    def __post_init__(self) -> None:
        check(self.precision is None or self.precision in PRECISIONS,
               f"'base.precision' must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        check(self.keys in ("relative", "joined"), f"'base.keys' must be relative or joined, got '{self.keys}'")
        check(self.flush_every >= 1, "'base.flush_every' must be at least 1")
        check(self.limit is None or self.limit >= 1, "'base.limit' must be at least 1")


@dataclass
class ScoreDataset:
    loc: str = "./data/faces"
    num_workers: Optional[int] = None
    order: str = "sorted"           # or "walk": the official os.walk order (with --official, the official draws)

    def __post_init__(self) -> None:
        check(self.order in ("sorted", "walk"), f"'dataset.order' must be sorted or walk, got '{self.order}'")


@dataclass
class DenoiserSection:
    """``denoiser``: the authors' ``diff_pretrain.pt`` or a ``model.pt`` of ``train_diffusion.py``."""

    weights: str = "./weights/diff_pretrain.pt"
    ema: bool = False               # official scoring uses the non-EMA weights
    unet_params: Dict[str, Any] = field(default_factory=dict)
    diff_params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FRSection:
    """``fr_model``: the face recognition backbone (official: CosFace iResNet-100, glint360k_cosface_r100)."""

    backbone: str = "iresnet100"
    weights: str = "./weights/cosface_r100.pth"


@dataclass
class DifFIQASection:
    timestep: int = 5
    repeats: int = 10
    batch_size: Optional[int] = None  # UNet inputs per call (official 64 -> 3 images); null: 64, or 256 on CUDA

    def __post_init__(self) -> None:
        check(self.timestep >= 1, "'diffiqa.timestep' must be at least 1")
        check(self.repeats >= 1, "'diffiqa.repeats' must be at least 1")
        check(self.batch_size is None or self.batch_size >= 1, "'diffiqa.batch_size' must be at least 1")


@dataclass
class ScoreConfig:
    base: ScoreBase = field(default_factory=ScoreBase)
    dataset: ScoreDataset = field(default_factory=ScoreDataset)
    denoiser: DenoiserSection = field(default_factory=DenoiserSection)
    fr_model: FRSection = field(default_factory=FRSection)
    diffiqa: DifFIQASection = field(default_factory=DifFIQASection)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffiqa_score.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (base, dataset, denoiser, fr_model, diffiqa)")
    parser.add_argument("--images", help="dataset.loc: folder of aligned face crops")
    parser.add_argument("--output", help="base.save_path")
    parser.add_argument("--denoiser", help="denoiser.weights")
    parser.add_argument("--fr-weights", help="fr_model.weights")
    parser.add_argument("--official", action="store_true", help="base.official: the official computation")
    parser.add_argument("--seed", type=int, help="base.seed")
    parser.add_argument("--device", help="base.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", help="base.precision: fp32, tf32, bf16 or fp16")
    parser.add_argument("--batch-size", type=int, help="diffiqa.batch_size")
    parser.add_argument("--limit", type=int, help="base.limit: stop after this many new images")
    parser.add_argument("-q", "--quiet", action="store_true", help="base.verbose: 0")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Score a folder; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = load_config(ScoreConfig, args.config, {
        "dataset.loc": args.images, "base.save_path": args.output, "denoiser.weights": args.denoiser,
        "fr_model.weights": args.fr_weights, "base.official": True if args.official else None, "base.seed": args.seed,
        "base.device": args.device, "base.precision": args.precision, "diffiqa.batch_size": args.batch_size,
        "base.limit": args.limit, "base.verbose": False if args.quiet else None})
    setup_logging(cfg.base.verbose)

    from utils.diffiqa_run import run_scoring

    summary = run_scoring(cfg)
    if summary.get("complete"):
        print(f"scored {summary['new']} new image(s) in this run; {summary['scored']} scored in all, skipped "
              f"{summary['skipped']}; wrote "
              f"{os.path.join(cfg.base.save_path, 'quality-scores.pkl')} and .csv", file=sys.stderr)
    elif summary.get("rank", 0) == 0:
        print(f"stopped with {summary['left']} image(s) left (base.limit); run the same command to continue",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "diffiqa_score.py"))
