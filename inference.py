"""Score every aligned face crop in a folder with an eDifFIQA model.

    python inference.py -c configs/inference_config.yaml [--images DIR] [--model ediffiqaT] [--weights FILE]
                        [--output DIR] [--device auto|cpu|cuda|cuda:N] [--batch-size N] [--workers N] [--limit N]
    torchrun --nproc_per_node 4 inference.py -c configs/inference_config.yaml   # split the folder across processes

Writes ``<save_path>/quality-scores.pkl`` (the official format: pickled dict {image path: quality}) and
``<save_path>/quality-scores.csv`` (``path,quality``). Scores are flushed to part files while running: the same command
after a kill (or ``--limit``) continues. Exit code 2 on a user mistake, with a one-line message.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config

if TYPE_CHECKING:
    from engine.scoring.config import InferenceConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (official keys); defaults apply without one")
    parser.add_argument("--images", help="folder of aligned face crops (dataset.loc)")
    parser.add_argument("--model", help="ediffiqaL, ediffiqaM, ediffiqaS, ediffiqaT or diffiqaR (model)")
    parser.add_argument("--weights", help="checkpoint file (weights; default weights/<model>.pth)")
    parser.add_argument("--output", help="output folder (base.save_path)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (base.device)")
    parser.add_argument("--batch-size", type=int, help="images per batch (dataloader.params.batch_size)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (dataloader.params.num_workers)")
    parser.add_argument("--precision", help="fp32 (default, official numbers), tf32 (CUDA), bf16, fp16 (CUDA) or auto "
                        "(bf16 where the CPU or GPU computes it natively, else fp32) (precision)")
    parser.add_argument("--backend", help="torch (default), onnxruntime or opencv (backend)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (fold_bn: false)")
    parser.add_argument("--gpu-decode", action="store_true",
                        help="CUDA: decode JPEGs on the GPU in batches (gpu_decode: true)")
    parser.add_argument("--align", action="store_true", help="images are photos: detect, align and score every face")
    parser.add_argument("--largest-face", action="store_true", help="with --align: only the largest face per photo")
    parser.add_argument("--save-crops", metavar="DIR", help="with --align: save the aligned 112x112 crops here")
    parser.add_argument("--annotate", metavar="DIR",
                        help="with --align: save copies of the photos with boxes and scores")
    parser.add_argument("--limit", type=int,
                        help="score at most N new images, then stop; rerun to continue (base.limit)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the unfinished scores (part files, settings) of an earlier run in the output "
                        "folder and start afresh")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs (base.verbose: 0)")
    return parser


def resolve_config(args: argparse.Namespace) -> "InferenceConfig":
    """Merge the YAML config and command-line overrides into a validated :class:`InferenceConfig`."""
    from engine.scoring.config import InferenceConfig

    return load_config(InferenceConfig, args.config, {
        "dataset.loc": args.images, "model": args.model, "weights": args.weights, "base.save_path": args.output,
        "base.device": args.device, "dataloader.params.batch_size": args.batch_size,
        "dataloader.params.num_workers": args.workers, "precision": args.precision,
        "base.verbose": False if args.quiet else None, "backend": args.backend,
        "fold_bn": False if args.no_fold_bn else None, "align": True if args.align else None,
        "largest_face": True if args.largest_face else None, "save_crops": args.save_crops,
        "annotate": args.annotate, "base.limit": args.limit,
        "gpu_decode": True if args.gpu_decode else None,
    })


def main(argv: Optional[List[str]] = None) -> int:
    """Run inference; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.base.verbose)

    from engine.scoring.run import score

    score(cfg, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "inference.py"))
