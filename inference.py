"""Score every aligned face crop in a folder with an eDifFIQA model.

    python inference.py -c configs/inference_config.yaml [--images DIR] [--model ediffiqaT] [--weights FILE]
                        [--output DIR] [--device auto|cpu|cuda|cuda:N] [--batch-size N] [--workers N]

Writes ``<save_path>/quality-scores.pkl`` (the official format: pickled dict {image path: quality}) and
``<save_path>/quality-scores.csv`` (``path,quality``). Exit code 2 on a user mistake, with a one-line message.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import from_dict, load_yaml, set_by_path
from utils.errors import DataError

_logger = logging.getLogger("inference")

SCORES_PICKLE = "quality-scores.pkl"
SCORES_CSV = "quality-scores.csv"


@dataclass
class BaseSection:
    """``base``: run settings (official keys)."""

    verbose: bool = True
    save_path: str = "./quality_scores"
    seed: int = 42069
    device: str = "auto"


@dataclass
class DatasetSection:
    """``dataset``: where the images are (official key ``loc``)."""

    loc: str = "./example_images"


@dataclass
class LoaderParams:
    """``dataloader.params``: DataLoader settings (official key names). None means "pick for the device"."""

    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    pin_memory: bool = True
    shuffle: bool = False
    drop_last: bool = False
    prefetch_factor: Optional[int] = None
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"'dataloader.params.batch_size' must be at least 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"'dataloader.params.num_workers' must be 0 or more, got {self.num_workers}")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(f"'dataloader.params.prefetch_factor' must be at least 1, got {self.prefetch_factor}")
        if self.drop_last:
            raise ValueError("'dataloader.params.drop_last: true' would leave the last images unscored; remove it")


@dataclass
class LoaderSection:
    """``dataloader``."""

    params: LoaderParams = field(default_factory=LoaderParams)


@dataclass
class InferenceConfig:
    """The whole inference config: the official keys plus ``weights`` and ``precision``."""

    base: BaseSection = field(default_factory=BaseSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    dataloader: LoaderSection = field(default_factory=LoaderSection)
    model: str = "ediffiqaL"
    weights: Optional[str] = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from model.registry import VARIANTS, variant_names
        from utils.scoring import PRECISIONS

        if self.model not in VARIANTS:
            raise ValueError(f"'model' is '{self.model}'; choose one of: {', '.join(variant_names())}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"'precision' is '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")

    @property
    def weights_path(self) -> str:
        """The checkpoint: ``weights`` if set, else ``weights/<model>.pth`` (relative to the working directory)."""
        return self.weights or os.path.join("weights", f"{self.model}.pth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (official keys); defaults apply without one")
    parser.add_argument("--images", help="folder of aligned face crops (dataset.loc)")
    parser.add_argument("--model", help="ediffiqaL, ediffiqaM, ediffiqaS or ediffiqaT (model)")
    parser.add_argument("--weights", help="checkpoint file (weights; default weights/<model>.pth)")
    parser.add_argument("--output", help="output folder (base.save_path)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (base.device)")
    parser.add_argument("--batch-size", type=int, help="images per batch (dataloader.params.batch_size)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (dataloader.params.num_workers)")
    parser.add_argument("--precision", help="fp32 (default, official numbers), tf32 (CUDA), bf16 or fp16 (precision)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs (base.verbose: 0)")
    return parser


def resolve_config(args: argparse.Namespace) -> InferenceConfig:
    """Merge the YAML config and command-line overrides into a validated :class:`InferenceConfig`."""
    raw: Dict[str, Any] = load_yaml(args.config) if args.config else {}
    overrides = {
        "dataset.loc": args.images, "model": args.model, "weights": args.weights, "base.save_path": args.output,
        "base.device": args.device, "dataloader.params.batch_size": args.batch_size,
        "dataloader.params.num_workers": args.workers, "precision": args.precision,
        "base.verbose": False if args.quiet else None,
    }
    for key, value in overrides.items():
        if value is not None:
            set_by_path(raw, key, value)
    return from_dict(InferenceConfig, raw, source=args.config or "command line")


def main(argv: Optional[List[str]] = None) -> int:
    """Run inference; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.base.verbose)

    from dataset.image_folder import find_images
    from utils.io import write_csv, write_pickle
    from utils.runtime import resolve_device, seed_everything
    from utils.scoring import QualityScorer

    seed_everything(cfg.base.seed)
    device = resolve_device(cfg.base.device)
    rel_paths = find_images(cfg.dataset.loc)
    scorer = QualityScorer.from_pretrained(cfg.model, cfg.weights_path, device=device, precision=cfg.precision)
    params = cfg.dataloader.params
    if params.shuffle:
        _logger.info("dataloader.params.shuffle is ignored: images are scored in sorted path order")
    _logger.info("scoring %d images in '%s' with %s on %s (%s)", len(rel_paths), cfg.dataset.loc, cfg.model,
                 device, cfg.precision)
    result = scorer.score_folder(cfg.dataset.loc, rel_paths, batch_size=params.batch_size,
                                 workers=params.num_workers, verbose=cfg.base.verbose, pin_memory=params.pin_memory,
                                 prefetch_factor=params.prefetch_factor, persistent_workers=params.persistent_workers)
    if not result.paths:
        raise DataError(f"none of the {len(rel_paths)} images in '{cfg.dataset.loc}' could be read "
                        f"(first: {result.skipped[0][0]}: {result.skipped[0][1]})")

    # Keys as the official code writes them: os.path.join(dataset.loc, relative path).
    keys = [os.path.join(cfg.dataset.loc, p) for p in result.paths]
    scores: Dict[str, float] = dict(zip(keys, result.scores))
    write_pickle(os.path.join(cfg.base.save_path, SCORES_PICKLE), scores)
    write_csv(os.path.join(cfg.base.save_path, SCORES_CSV), ("path", "quality"),
              ((k, repr(v)) for k, v in scores.items()))
    summary = (f"scored {len(result.paths)}, skipped {len(result.skipped)}, {result.seconds:.1f} s, "
               f"{result.images_per_second:.1f} images/s; wrote {os.path.join(cfg.base.save_path, SCORES_PICKLE)} "
               f"and {SCORES_CSV}")
    print(summary, file=sys.stderr)
    if result.skipped:
        print(f"skipped (unreadable): {', '.join(p for p, _ in result.skipped[:5])}"
              f"{' ...' if len(result.skipped) > 5 else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "inference.py"))
