"""Score every aligned face crop in a folder with an eDifFIQA model.

    python inference.py -c configs/inference_config.yaml [--images DIR] [--model ediffiqaT] [--weights FILE]
                        [--output DIR] [--device auto|cpu|cuda|cuda:N] [--batch-size N] [--workers N] [--limit N]
                        [--set KEY=VALUE ...]
    torchrun --nproc_per_node 4 inference.py -c configs/inference_config.yaml   # split the folder across processes

Writes ``<save_path>/quality-scores.pkl`` (the official format: pickled dict {image path: quality}) and
``<save_path>/quality-scores.csv`` (``path,quality``), with ``quality-scores.json`` (settings, resolved config, counts).
Scores are flushed to part files while running: the same command after a kill (or ``--limit``) continues. Exit code 2
on a user mistake, with a one-line message.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from engine.scoring import BACKENDS
from utils import cli
from utils.cli import Flag


def _variants() -> List[str]:
    from model.registry import variant_names

    return variant_names()


#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--images",), "dataset.loc", "folder of aligned face crops"),
    Flag(("--model",), "model", "the variant", choices=_variants),
    Flag(("--weights",), "weights", "checkpoint file (default weights/<model>.pth if it exists, else the published "
         "file, fetched by name into torch's cache)"),
    Flag(("--output",), "base.save_path", "output folder"),
    Flag(("--device",), "base.device", "auto, cpu, cuda or cuda:N"),
    Flag(("--batch-size",), "dataloader.params.batch_size", "images per batch", type=int),
    Flag(("--workers",), "dataloader.params.num_workers", "DataLoader worker processes", type=int),
    Flag(("--precision",), "precision", "fp32 (default, official numbers), tf32 (CUDA), bf16, fp16 (CUDA) or auto "
         "(bf16 where the CPU or GPU computes it natively, else fp32)"),
    Flag(("--backend",), "backend", f"{', '.join(BACKENDS)} (default {BACKENDS[0]}; auto: ONNX Runtime where it "
         "measured faster for the variant on this kind of CPU, else torch)"),
    Flag(("--no-fold-bn",), "fold_bn", "keep BatchNorm layers", const=False),
    Flag(("--gpu-decode",), "gpu_decode", "CUDA: decode JPEGs on the GPU in batches", const=True),
    Flag(("--align",), "align", "images are photos: detect, align and score every face", const=True),
    Flag(("--largest-face",), "largest_face", "with --align: only the largest face per photo", const=True),
    Flag(("--save-crops",), "save_crops", "with --align: save the aligned 112x112 crops here", metavar="DIR"),
    Flag(("--annotate",), "annotate", "with --align: save copies of the photos with boxes and scores", metavar="DIR"),
    Flag(("--figure-tiles",), "figure_tiles", "faces shown lowest and highest in quality-scores.png; 0: no figure",
         type=int, metavar="N"),
    Flag(("--limit",), "base.limit", "score N new images rounded down to whole batches (at least one batch), then "
         "stop; rerun to continue", type=int),
    Flag(("-q", "--quiet"), "base.verbose", "no progress bar or info logs", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("inference.py", __doc__, FLAGS, "min_face_probability=0.8",
                              "YAML config (official keys); defaults apply without one")
    parser.add_argument("--fresh", action="store_true",
                        help="remove the files of an earlier run in the output folder (part files, settings and its "
                        "finished scores) and start afresh")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run inference; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.scoring.config import InferenceConfig
    from engine.scoring.run import score

    cfg = cli.load_script_config(InferenceConfig, args, FLAGS)
    cli.setup_logging(cfg.base.verbose)
    score(cfg, fresh=args.fresh, command=["inference.py", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "inference.py"))
