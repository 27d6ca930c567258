"""EDC curves and pAUC of one or more quality scores, the way FIQA papers (and eDifFIQA's) measure them.

    python evaluate.py -c configs/evaluate_config.yaml
    python evaluate.py --pairs pairs.csv --embeddings ArcFace=emb.pkl --scores "eDifFIQA(L)=q_l.pkl" \\
                       --scores "eDifFIQA(T)=q_t.csv" [--fmr 1e-3] [--limits 0.2 0.3] [--output evaluation]

Writes ``<output>/<name>.json`` and ``.csv`` (method, FR model, FMR, threshold, FNMR at 0, pAUC per limit, raw and
normalised) and one EDC figure per FR model (``<name>_<fr model>.png`` and ``.pdf``), and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

from utils import cli
from utils.cli import Flag
from utils.errors import ConfigError


def _label_files(field: str, flag: str):
    def convert(texts: List[str]) -> List[Dict[str, str]]:
        out = []
        for text in texts:
            if "=" not in text:
                raise ConfigError(f"{flag} takes LABEL=FILE, got {text!r}")
            label, path = text.split("=", 1)
            out.append({"label": label, field: path})
        return out

    return convert


#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--pairs",), "pairs", "CSV a,b,mated[,similarity] or LFW pairs.txt"),
    Flag(("--embeddings",), "fr_models", "LABEL=FILE of an FR model (repeatable)", append=True,
         convert=_label_files("embeddings", "--embeddings")),
    Flag(("--scores",), "methods", "LABEL=FILE of a quality method (repeatable)", append=True,
         convert=_label_files("scores", "--scores")),
    Flag(("--fmr",), "fmr", "target false match rate (1e-3)", type=float),
    Flag(("--limits",), "discard_limits", "pAUC discard limits (0.2 0.3)", type=float, nargs="+"),
    Flag(("--variant",), "variant", "fixed (default) or crfiqa"),
    Flag(("--on-missing",), "on_missing", "fail (default) or drop pairs with a sample lacking data"),
    Flag(("--output",), "output", "folder for the table and figures (./evaluation)"),
    Flag(("--name",), "name", "file name stem (edc)"),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("evaluate.py", __doc__, FLAGS, "fmr=1e-4")


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.evaluation.config import EvaluateConfig
    from engine.evaluation.run import evaluate

    cfg = cli.load_script_config(EvaluateConfig, args, FLAGS)
    cli.setup_logging(cfg.verbose)
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "evaluate.py"))
