"""Train an eDifFIQA model by label-optimised knowledge distillation (the official recipe).

    python train.py -c configs/train_config.yaml [--epochs N] [--batch-size N] [--workers N] [--device DEV]
                    [--output DIR] [--overwrite] [--set KEY=VALUE ...]
    torchrun --nproc_per_node 4 train.py -c configs/train_config.yaml      # DistributedDataParallel

Writes into ``base.save_path``: ``model.pth`` (best validation loss, official checkpoint layout), ``last.pt``
(resumable: set ``base.resume`` or ``--resume``), ``config.json``, ``train_log.csv``, ``history.json`` and
``train_log.png``. An output folder that holds a run is refused unless this run resumes it (``--resume`` its
``last.pt``) or replaces it (``--overwrite``).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from utils import cli
from utils.cli import Flag
from utils.io import file_list

#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--epochs",), "base.epochs", "epochs", type=int),
    Flag(("--batch-size",), "dataloader.train.params.batch_size", "global batch (all processes)", type=int),
    Flag(("--workers",), "dataloader.train.params.num_workers", "DataLoader worker processes of both loaders "
         "(default: per device; at most the CPUs)", type=int, also=("dataloader.val.params.num_workers",)),
    Flag(("--device",), "base.device", "auto, cpu, cuda or cuda:N"),
    Flag(("--output",), "base.save_path", "output folder"),
    Flag(("--overwrite",), "base.overwrite", "replace the run the output folder holds", const=True),
    Flag(("--resume",), "base.resume", "a last.pt to continue from"),
    Flag(("--model",), "base.model", "an official model config (configs/<variant>_config.yaml) or a variant name"),
    Flag(("--official",), "base.official", "the official update step for step", const=True),
    Flag(("--no-figure",), "base.figure", "no train_log.png", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("train.py", __doc__, FLAGS, "optimizer.group_1.lr=1e-4",
                            "YAML config (official train_config.yaml keys)")


def main(argv: Optional[List[str]] = None) -> int:
    """Train; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    cfg = cli.load_script_config(TrainConfig, args, FLAGS)
    cli.setup_logging(cfg.base.verbose)
    result = train(cfg)
    if result["main"]:  # under torchrun, the first process reports
        print(f"best validation loss {result['best_val']:.6f}; wrote {file_list(result['written'])}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "train.py"))
