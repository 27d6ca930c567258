"""EDC curves and pAUC of one or more quality scores, the way FIQA papers (and eDifFIQA's) measure them.

    python evaluate.py -c configs/evaluate_config.yaml
    python evaluate.py --pairs pairs.csv --embeddings ArcFace=emb.pkl --scores "eDifFIQA(L)=q_l.pkl" \\
                       --scores "eDifFIQA(T)=q_t.csv" [--fmr 1e-3] [--limits 0.2 0.3] [--output figures]

Writes ``<output>/<name>.json`` and ``.csv`` (method, FR model, FMR, threshold, FNMR at 0, pAUC per limit, raw and
normalised) and one EDC figure per FR model (``<name>_<fr model>.png`` and ``.pdf``), and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config
from utils.errors import ConfigError, DataError

_logger = logging.getLogger("evaluate")


@dataclass
class FRModel:
    """One face recognition model: a label and its per-image embeddings (or the pairs' similarity column)."""

    label: str = "FR"
    embeddings: Optional[str] = None


@dataclass
class Method:
    """One quality method: a label and its ``quality-scores.pkl``/``.csv``."""

    label: str = "quality"
    scores: str = "./quality_scores/quality-scores.pkl"


@dataclass
class EvaluateConfig:
    """The evaluation config."""

    pairs: str = "./pairs.csv"
    fr_models: List[FRModel] = field(default_factory=list)
    methods: List[Method] = field(default_factory=list)
    fmr: float = 1e-3
    discard_limits: List[float] = field(default_factory=lambda: [0.2, 0.3])
    variant: str = "fixed"
    on_missing: str = "fail"
    output: str = "./figures"
    name: str = "edc"
    verbose: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fmr < 1.0:
            raise ValueError(f"'fmr' must be between 0 and 1, got {self.fmr}")
        if not self.discard_limits or not all(0.0 < d <= 1.0 for d in self.discard_limits):
            raise ValueError(f"'discard_limits' must be values in (0, 1], got {self.discard_limits}")
        if self.variant not in ("fixed", "crfiqa"):
            raise ValueError(f"'variant' must be 'fixed' (Schlett et al., default) or 'crfiqa', got '{self.variant}'")
        if self.on_missing not in ("fail", "drop"):
            raise ValueError(f"'on_missing' must be 'fail' or 'drop', got '{self.on_missing}'")
        if not self.methods:
            raise ValueError("no quality method given: add 'methods' to the config or --scores LABEL=FILE")


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


def resolve_config(args: argparse.Namespace) -> EvaluateConfig:
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

    import numpy as np

    from dataset.formats import read_embeddings
    from utils import edc
    from utils.evaluation import PathMatcher, plot_edc, read_pairs, read_qualities
    from utils.io import check_output_dir, csv_writer, json_writer, write_together

    check_output_dir(cfg.output, "output / --output")
    pairs = read_pairs(cfg.pairs)
    if not len(pairs.a):
        raise DataError(f"pairs file '{cfg.pairs}' holds no comparisons")
    fr_models = cfg.fr_models or [FRModel("given similarity", None)]
    keep = np.ones(len(pairs.a), dtype=bool)
    problems: List[str] = []

    def check(found_a: np.ndarray, found_b: np.ndarray, what: str) -> None:
        missing = sorted({p for p, i in zip(pairs.a, found_a) if i < 0} | {p for p, i in zip(pairs.b, found_b) if i < 0})
        if missing:
            bad = (found_a < 0) | (found_b < 0)
            problems.append(f"{int(bad.sum())} pairs name {len(missing)} images with no {what} "
                            f"(e.g. {', '.join(repr(m) for m in missing[:3])})")
            keep[bad] = False

    similarities: Dict[str, np.ndarray] = {}
    for fr in fr_models:
        if fr.embeddings is None:
            if pairs.similarity is None:
                raise ConfigError("no FR model embeddings given and the pairs file has no 'similarity' column; "
                                  "add fr_models (or --embeddings LABEL=FILE)")
            bad = np.flatnonzero(~np.isfinite(pairs.similarity))
            if len(bad):
                raise DataError(f"pairs file '{cfg.pairs}': {len(bad)} similarities are NaN or infinite (e.g. rows "
                                f"{', '.join(str(i + 2) for i in bad[:3])})")
            similarities[fr.label] = pairs.similarity
            continue
        table = read_embeddings(fr.embeddings)
        keys = table.keys()
        matcher = PathMatcher(keys)
        ia, ib = matcher.find(pairs.a), matcher.find(pairs.b)
        check(ia, ib, f"embedding in '{fr.embeddings}'")
        ok = (ia >= 0) & (ib >= 0)
        matrix = table.gather(keys)
        sims = np.full(len(pairs.a), np.nan)
        sims[ok] = edc.cosine_similarities(matrix, ia[ok], ib[ok])
        similarities[fr.label] = sims

    qualities: Dict[str, np.ndarray] = {}
    for method in cfg.methods:
        scores = read_qualities(method.scores)
        keys = list(scores)
        values = np.array([scores[k] for k in keys], dtype=np.float64)
        matcher = PathMatcher(keys)
        ia, ib = matcher.find(pairs.a), matcher.find(pairs.b)
        check(ia, ib, f"quality in '{method.scores}'")
        q = np.full(len(pairs.a), np.nan)
        ok = (ia >= 0) & (ib >= 0)
        q[ok] = np.minimum(values[ia[ok]], values[ib[ok]])  # pair quality = the lower of the two
        qualities[method.label] = q

    if problems:
        if cfg.on_missing == "fail":
            raise DataError("; ".join(problems) + "; fix the inputs or set on_missing: drop (--on-missing drop)")
        for p in problems:
            _logger.warning("%s: those pairs are dropped", p)
    mated = pairs.mated[keep]
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_non == 0:
        raise DataError(f"need mated and non-mated comparisons, have {n_mated} mated and {n_non} non-mated")
    if n_non < edc.min_pairs_for_fmr(cfg.fmr):
        raise DataError(f"FMR {cfg.fmr:g} cannot be measured with {n_non} non-mated comparisons: it needs at least "
                        f"{edc.min_pairs_for_fmr(cfg.fmr)}; add pairs or raise --fmr")

    # The CR-FIQA variant recomputes the threshold on what each discard level leaves: check every level it visits
    # (up to the largest discard limit) before computing anything.
    crfiqa_grid = [g for g in edc.CRFIQA_GRID if g <= max(cfg.discard_limits) + 1e-9]
    if cfg.variant != "fixed":
        for method_label, q_all in qualities.items():
            short = edc.crfiqa_shortfall(mated, q_all[keep], cfg.fmr, crfiqa_grid)
            if short is not None:
                raise DataError(f"variant crfiqa: discarding {short[0]:g} of the pairs by '{method_label}' leaves "
                                f"{short[1]} non-mated comparisons, and FMR {cfg.fmr:g} needs at least "
                                f"{edc.min_pairs_for_fmr(cfg.fmr)}; add pairs, raise --fmr or lower --limits")
    rows: List[Dict[str, Any]] = []
    figures: List[str] = []
    for fr_label, sims_all in similarities.items():
        sims = sims_all[keep]
        tau = edc.threshold_at_fmr(sims[~mated], cfg.fmr)
        curves = {}
        for method_label, q_all in qualities.items():
            q = q_all[keep]
            if cfg.variant == "fixed":
                curve = edc.fixed_threshold_edc(sims[mated], q[mated], tau)
                stats = edc.summary(curve, cfg.discard_limits, edc.partial_auc)
            else:
                curve = edc.crfiqa_edc(sims, mated, q, cfg.fmr, grid=crfiqa_grid)
                stats = edc.summary(curve, cfg.discard_limits, edc.partial_auc_trapezoid)
            curves[method_label] = (curve.discard, curve.fnmr)
            rows.append({"method": method_label, "fr_model": fr_label, "variant": cfg.variant, "fmr": cfg.fmr,
                         "threshold": tau, "mated": n_mated, "non_mated": n_non, **stats,
                         **{f"best_pauc@{d:g}": edc.theoretical_best_pauc(stats["fnmr0"], d)
                            for d in cfg.discard_limits}})
        stem = os.path.join(cfg.output, f"{cfg.name}_{re.sub(r'[^A-Za-z0-9._-]+', '_', fr_label)}")
        figures += plot_edc(curves, fr_label, cfg.fmr, stem, limit=max(cfg.discard_limits),
                            stepwise=cfg.variant == "fixed")

    header = list(rows[0])
    write_together([(os.path.join(cfg.output, f"{cfg.name}.json"), json_writer(rows)),
                    (os.path.join(cfg.output, f"{cfg.name}.csv"),
                     csv_writer(header, ([r[h] for h in header] for r in rows)))])
    limits = [f"pauc@{d:g}" for d in cfg.discard_limits]
    print(f"{'method':<20} {'FR model':<16} {'FNMR@0':>8} " + " ".join(f"{c:>10} {'norm':>6}" for c in limits))
    for r in rows:
        print(f"{r['method']:<20} {r['fr_model']:<16} {r['fnmr0']:>8.4f} " +
              " ".join(f"{r[c]:>10.5f} {r[c + '_norm']:>6.3f}" for c in limits))
    print(f"wrote {os.path.join(cfg.output, cfg.name)}.json/.csv and {len(figures)} figure files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "evaluate.py"))
