"""``evaluate.py``'s work: pair qualities and similarities, EDC curves, pAUC, the table and the figures."""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Dict, List, Tuple

import numpy as np

from dataset.formats import read_embeddings
from dataset.keys import match_keys
from engine.evaluation import edc
from engine.evaluation.config import EvaluateConfig, FRModel, figure_label
from engine.evaluation.data import edc_figure, read_pairs, read_qualities
from engine.evaluation.outputs import check_outputs, write_outputs
from utils.errors import ConfigError, DataError
from utils.io import check_output_dir, csv_writer, json_writer

__all__ = ["evaluate", "output_files", "check_counts", "edc_results", "separation_problem", "warn_unseparated",
           "print_table"]

_logger = logging.getLogger(__name__)


def output_files(cfg: EvaluateConfig) -> List[str]:
    """The names of the files a run of ``cfg`` writes in ``cfg.output`` (its record aside): known before any work,
    so that :func:`engine.evaluation.outputs.check_outputs` can refuse a run whose files are not its own."""
    stem = cfg.name
    if cfg.benchmarks:
        return [f"{stem}.json", f"{stem}.csv", f"{stem}.md", f"{stem}_grid.png", f"{stem}_grid.pdf"]
    labels = [fr.label for fr in cfg.fr_models] or ["given similarity"]
    return [f"{stem}.json", f"{stem}.csv"] + [f"{stem}_{figure_label(label)}.{fmt}" for label in labels
                                              for fmt in ("png", "pdf")]


def check_counts(mated: np.ndarray, qualities: Dict[str, np.ndarray], cfg: EvaluateConfig,
                 where: str = "", dropped: int = 0) -> Tuple[int, int]:
    """``(mated, non-mated)`` counts of the ``(P,)`` comparisons, once they can measure ``cfg.fmr`` (for the CR-FIQA
    variant: at every discard level it visits, by each method's ``(P,)`` pair qualities); else a :class:`DataError`
    (``where``: the benchmark and FR model, said first; ``dropped``: the comparisons ``on_missing: drop`` left out,
    said as the cause). Needs only the pairs: called before any embedding or scoring."""
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    why = (f" after on_missing: drop left out {dropped} comparisons whose images lack data (see the warnings "
           "above)" if dropped else "")
    if n_mated == 0 or n_non == 0:
        raise DataError(f"{where}need mated and non-mated comparisons, have {n_mated} mated and {n_non} non-mated"
                        f"{why}")
    if n_non < edc.min_pairs_for_fmr(cfg.fmr):
        raise DataError(f"{where}FMR {cfg.fmr:g} cannot be measured with {n_non} non-mated comparisons{why}: it "
                        f"needs at least {edc.min_pairs_for_fmr(cfg.fmr)}; add pairs or raise --fmr")
    if cfg.variant != "fixed":
        for method_label, q in qualities.items():
            short = edc.crfiqa_shortfall(mated, q, cfg.fmr, _crfiqa_grid(cfg))
            if short is not None:
                raise DataError(f"{where}variant crfiqa: discarding {short[0]:g} of the pairs by '{method_label}' "
                                f"leaves {short[1]} non-mated comparisons, and FMR {cfg.fmr:g} needs at least "
                                f"{edc.min_pairs_for_fmr(cfg.fmr)}; add pairs, raise --fmr or lower --limits")
    return n_mated, n_non


def _crfiqa_grid(cfg: EvaluateConfig) -> List[float]:
    """The discard levels the CR-FIQA variant visits: up to the largest discard limit."""
    return [g for g in edc.CRFIQA_GRID if g <= max(cfg.discard_limits) + 1e-9]


def edc_results(sims: np.ndarray, mated: np.ndarray, qualities: Dict[str, np.ndarray], cfg: EvaluateConfig
                ) -> Tuple[float, Dict[str, Tuple[edc.EDCCurve, Dict[str, float]]]]:
    """The threshold at ``cfg.fmr`` of ``(P,)`` similarities and, per method (``(P,)`` pair qualities), its EDC curve
    and :func:`edc.summary` (checked first with :func:`check_counts`)."""
    tau = edc.threshold_at_fmr(sims[~mated], cfg.fmr)
    results = {}
    for method_label, q in qualities.items():
        if cfg.variant == "fixed":
            curve = edc.fixed_threshold_edc(sims[mated], q[mated], tau)
            stats = edc.summary(curve, cfg.discard_limits, edc.partial_auc)
        else:
            curve = edc.crfiqa_edc(sims, mated, q, cfg.fmr, grid=_crfiqa_grid(cfg))
            stats = edc.summary(curve, cfg.discard_limits, edc.partial_auc_trapezoid)
        results[method_label] = (curve, stats)
    return tau, results


#: All of an FR model's comparison similarities within this span of each other: its embeddings collapsed.
COLLAPSED_SPREAD = 1e-6


def separation_problem(nonmated: np.ndarray, tau: float, fnmr0: float, similarities: Any = None) -> str:
    """Why an FR model's ``(M,)`` non-mated similarities, threshold ``tau`` and FNMR at 0 discard (and all its
    ``(P,)`` comparison ``similarities``, when given) show that it does not separate the identities ('' when they
    do not): all similarities within :data:`COLLAPSED_SPREAD` of each other, ``tau`` above every non-mated
    similarity (ties at the top keep the FMR from reaching its target), or an FNMR at 0 discard of 0.99 or more."""
    reasons = []
    top = float(np.max(nonmated)) if len(nonmated) else math.inf
    if tau > top:
        reasons.append(f"threshold {tau!r} above every non-mated similarity (largest {top!r})")
    if fnmr0 >= 0.99:
        reasons.append(f"FNMR at 0 discard {fnmr0:.4f}")
    if similarities is not None and len(similarities) > 1:
        spread = float(np.max(similarities) - np.min(similarities))
        if spread < COLLAPSED_SPREAD:
            reasons.append(f"all {len(similarities)} similarities within {spread:.3g} of each other (collapsed "
                           "embeddings)")
    return " and ".join(reasons)


def warn_unseparated(problems: List[str]) -> None:
    """One warning for the FR models (``"'label': reason"`` each) that do not separate the identities."""
    if problems:
        _logger.warning("%s: the FR model does not separate the identities (untrained or stand-in weights, or the "
                        "wrong checkpoint?), so its EDC curves say nothing about the quality methods",
                        "; ".join(problems))


def print_table(rows: List[Dict[str, Any]], limits: List[float], first: str = "") -> None:
    """The long rows (method, FR model, FNMR at 0, pAUC and normalised pAUC per limit) as a text table, the label
    columns as wide as their longest label (``first``: a leading column, the benchmark)."""
    names = [f"pauc@{d:g}" for d in limits]
    columns = ([(first, first)] if first else []) + [("method", "method"), ("FR model", "fr_model")]
    widths = [max([len(title)] + [len(str(r[key])) for r in rows]) for title, key in columns]
    head = " ".join(f"{title:<{w}}" for (title, _), w in zip(columns, widths))
    print(f"{head} {'FNMR@0':>8} " + " ".join(f"{c:>10} {'norm':>6}" for c in names))
    for r in rows:
        cells = " ".join(f"{str(r[key]):<{w}}" for (_, key), w in zip(columns, widths))
        print(f"{cells} {r['fnmr0']:>8.4f} " + " ".join(f"{r[c]:>10.5f} {r[c + '_norm']:>6.3f}" for c in names))


def evaluate(cfg: EvaluateConfig) -> List[Dict[str, Any]]:
    """Compute the EDC curves and pAUC of every quality method with every FR model, write the table (JSON and CSV,
    one set) and the figures, print the table; returns its rows. With benchmarks: :func:`evaluate_benchmarks`."""
    if cfg.benchmarks:
        from engine.evaluation.benchmarks import evaluate_benchmarks  # torch and the models: only for benchmarks

        return evaluate_benchmarks(cfg)
    check_output_dir(cfg.output, "output / --output")
    check_outputs(cfg.output, cfg.name, output_files(cfg))
    pairs = read_pairs(cfg.pairs)
    if not len(pairs.a):
        raise DataError(f"pairs file '{cfg.pairs}' holds no comparisons")
    fr_models = cfg.fr_models or [FRModel("given similarity", None)]
    keep = np.ones(len(pairs.a), dtype=bool)
    problems: List[str] = []

    def match(keys: List[str], what: str, source: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the pairs' samples are among ``keys`` of ``source`` (-1: absent, said in ``problems``), by the key
        rule of :mod:`dataset.keys`; which pairs have both."""
        index = {k: i for i, k in enumerate(keys)}
        named = match_keys(pairs.a + pairs.b, index, f"pairs file '{cfg.pairs}'", source, one_to_one=False)
        found = np.array([-1 if k is None else index[k] for k in named], dtype=np.int64)
        found_a, found_b = found[:len(pairs.a)], found[len(pairs.a):]
        missing = sorted({p for p, i in zip(pairs.a, found_a) if i < 0}
                         | {p for p, i in zip(pairs.b, found_b) if i < 0})
        if missing:
            bad = (found_a < 0) | (found_b < 0)
            problems.append(f"{int(bad.sum())} pairs name {len(missing)} images with no {what} "
                            f"(e.g. {', '.join(repr(m) for m in missing[:3])})")
            keep[bad] = False
        return found_a, found_b, (found_a >= 0) & (found_b >= 0)

    if pairs.similarity is not None and all(fr.embeddings is not None for fr in fr_models):
        # A pairs list that carries one FR model's similarities may be evaluated with other embeddings: not an
        # error, but said, as NaN or other values in the column change nothing.
        _logger.warning("pairs file '%s': its similarity column is ignored; the similarities are those of the "
                        "embeddings of %s", cfg.pairs, ", ".join(repr(fr.label) for fr in fr_models))
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
        ia, ib, ok = match(keys, f"embedding in '{fr.embeddings}'", f"embeddings file '{fr.embeddings}'")
        matrix = table.gather(keys)
        sims = np.full(len(pairs.a), np.nan)
        sims[ok] = edc.cosine_similarities(matrix, ia[ok], ib[ok])
        similarities[fr.label] = sims

    qualities: Dict[str, np.ndarray] = {}
    for method in cfg.methods:
        scores = read_qualities(method.scores or "")
        keys = list(scores)
        values = np.array([scores[k] for k in keys], dtype=np.float64)
        ia, ib, ok = match(keys, f"quality in '{method.scores}'", f"quality file '{method.scores}'")
        q = np.full(len(pairs.a), np.nan)
        q[ok] = np.minimum(values[ia[ok]], values[ib[ok]])  # pair quality = the lower of the two
        qualities[method.label] = q

    if problems:
        if cfg.on_missing == "fail":
            raise DataError("; ".join(problems) + "; fix the inputs or set on_missing: drop (--on-missing drop)")
        for p in problems:
            _logger.warning("%s: those pairs are dropped", p)
    mated = pairs.mated[keep]
    kept = {label: q_all[keep] for label, q_all in qualities.items()}
    n_mated, n_non = check_counts(mated, kept, cfg, dropped=int((~keep).sum()))
    rows: List[Dict[str, Any]] = []
    figures: List[Tuple[str, Any]] = []
    unseparated: List[str] = []
    for fr_label, sims_all in similarities.items():
        tau, results = edc_results(sims_all[keep], mated, kept, cfg)
        problem = separation_problem(sims_all[keep][~mated], tau, next(iter(results.values()))[1]["fnmr0"],
                                     sims_all[keep])
        if problem:
            unseparated.append(f"{fr_label!r}: {problem}")
        curves, paucs = {}, {}
        for method_label, (curve, stats) in results.items():
            curves[method_label] = (curve.discard, curve.fnmr)
            paucs[method_label] = {d: stats[f"pauc@{d:g}"] for d in cfg.discard_limits}
            rows.append({"method": method_label, "fr_model": fr_label, "variant": cfg.variant, "fmr": cfg.fmr,
                         "threshold": tau, "mated": n_mated, "non_mated": n_non, **stats,
                         **{f"best_pauc@{d:g}": edc.theoretical_best_pauc(stats["fnmr0"], d)
                            for d in cfg.discard_limits}})
        figures += [(f"{cfg.name}_{figure_label(fr_label)}.{fmt}", writer) for fmt, writer in edc_figure(
            curves, fr_label, cfg.fmr, limit=max(cfg.discard_limits), stepwise=cfg.variant == "fixed", paucs=paucs)]

    header = list(rows[0])
    # A value that is undefined (pAUC normalised by an FNMR of 0, say) is null in JSON and empty in the CSV.
    defined = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    written = write_outputs(cfg.output, cfg.name, [
        (f"{cfg.name}.json", json_writer(defined)),
        (f"{cfg.name}.csv", csv_writer(header, (["" if r[h] is None else r[h] for h in header] for r in defined))),
        *figures])
    print_table(rows, cfg.discard_limits)
    warn_unseparated(unseparated)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return rows
