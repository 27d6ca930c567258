"""EDC curves and pAUC of one or more quality scores, the way FIQA papers (and eDifFIQA's) measure them.

    python evaluate.py -c configs/evaluate_config.yaml
    python evaluate.py --pairs pairs.csv --embeddings ArcFace=emb.pkl --scores "eDifFIQA(L)=q_l.pkl" \\
                       --scores "eDifFIQA(T)=q_t.csv" [--fmr 1e-3] [--limits 0.2 0.3] [--output figures]

Writes ``<output>/<name>.json`` and ``.csv`` (method, FR model, FMR, threshold, FNMR at 0, pAUC per limit, raw and
normalised) and one EDC figure per FR model (``<name>_<fr model>.png`` and ``.pdf``), and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config
from utils.errors import ConfigError

if TYPE_CHECKING:
    from engine.evaluation.config import EvaluateConfig


def _label_file(text: str, flag: str) -> Dict[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} takes LABEL=FILE, got {text!r}")
    label, path = text.split("=", 1)
    return {"label": label, "embeddings" if flag == "--embeddings" else "scores": path}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config")
    parser.add_argument("--pairs", help="CSV a,b,mated[,similarity] or LFW pairs.txt")
    parser.add_argument("--embeddings", action="append", help="LABEL=FILE of an FR model (repeatable)")
    parser.add_argument("--scores", action="append", help="LABEL=FILE of a quality method (repeatable)")
    parser.add_argument("--fmr", type=float, help="target false match rate (1e-3)")
    parser.add_argument("--limits", type=float, nargs="+", help="pAUC discard limits (0.2 0.3)")
    parser.add_argument("--variant", help="fixed (default) or crfiqa")
    parser.add_argument("--on-missing", help="fail (default) or drop pairs with a sample lacking data")
    parser.add_argument("--output", help="folder for the table and figures (./figures)")
    parser.add_argument("--name", help="file name stem (edc)")
    return parser


def resolve_config(args: argparse.Namespace) -> "EvaluateConfig":
    from engine.evaluation.config import EvaluateConfig

    return load_config(EvaluateConfig, args.config, {
        "pairs": args.pairs, "fmr": args.fmr, "discard_limits": args.limits, "variant": args.variant,
        "on_missing": args.on_missing, "output": args.output, "name": args.name,
        "fr_models": [_label_file(t, "--embeddings") for t in args.embeddings] if args.embeddings else None,
        "methods": [_label_file(t, "--scores") for t in args.scores] if args.scores else None})


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.verbose)

    from engine.evaluation.run import evaluate

    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "evaluate.py"))
