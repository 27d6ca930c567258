"""Error-versus-Discard Characteristic (EDC) and its partial area, as pure NumPy functions.

Default: the fixed-threshold FNMR-EDC of Schlett et al. (IEEE TBIOM 2023) used by the eDifFIQA paper. Pair quality is
the minimum of the two samples' qualities; the decision threshold is fixed once on all comparisons at the target FMR;
mated pairs are discarded from the lowest quality up, tied qualities together; the curve is stepwise
(non-interpolated) and ends at (1, 0). Option: the CR-FIQA/MagFace variant (all pairs discarded on a fixed grid,
threshold recomputed at each step, trapezoid area).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["min_pairs_for_fmr", "threshold_at_fmr", "fmr_at", "EDCCurve", "fixed_threshold_edc", "partial_auc",
           "theoretical_best_pauc", "crfiqa_edc", "partial_auc_trapezoid", "cosine_similarities", "summary"]


def min_pairs_for_fmr(fmr: float) -> int:
    """Fewest non-mated comparisons with which an FMR of ``fmr`` can be measured (one false match allowed)."""
    return int(math.ceil(1.0 / fmr - 1e-9))


def threshold_at_fmr(nonmated: np.ndarray, fmr: float) -> float:
    """The lowest threshold ``tau`` with ``FMR(tau) = mean(nonmated >= tau) <= fmr``; a ``ValueError`` with fewer
    non-mated comparisons than :func:`min_pairs_for_fmr`."""
    s = np.asarray(nonmated, dtype=np.float64)
    n = len(s)
    allowed = int(math.floor(fmr * n + 1e-9))
    if n == 0 or allowed < 1:
        raise ValueError(f"FMR {fmr:g} needs at least {min_pairs_for_fmr(fmr)} non-mated comparisons, got {n}")
    # The (allowed+1)-th largest score must be rejected: tau is the next float above it.
    kth = -np.partition(-s, allowed)[allowed] if allowed < n else -np.inf
    return float(np.nextafter(kth, np.inf))


def fmr_at(nonmated: np.ndarray, tau: float) -> float:
    """Share of non-mated comparisons at or above ``tau``."""
    return float(np.mean(np.asarray(nonmated) >= tau))


@dataclass
class EDCCurve:
    """A stepwise EDC: ``fnmr[k]`` holds on ``[discard[k], discard[k + 1])``; the last point is ``(1, 0)``."""

    discard: np.ndarray
    fnmr: np.ndarray

    @property
    def fnmr0(self) -> float:
        return float(self.fnmr[0])


def fixed_threshold_edc(mated_sim: np.ndarray, mated_quality: np.ndarray, tau: float) -> EDCCurve:
    """Fixed-threshold FNMR-EDC of the mated comparisons (``(n,)`` similarities and pair qualities) at the threshold
    ``tau`` fixed on the full set (a pair fails when ``sim < tau``); vectorised: one sort and one cumulative sum."""
    sim = np.asarray(mated_sim, dtype=np.float64)
    q = np.asarray(mated_quality, dtype=np.float64)
    n = len(sim)
    if n == 0:
        raise ValueError("no mated comparisons")
    order = np.argsort(q, kind="stable")
    q_sorted = q[order]
    fails = (sim[order] < tau).astype(np.int64)
    failed_before = np.concatenate([[0], np.cumsum(fails)])  # failures among the k lowest, k = 0..n
    # Discard points: k = 0 and every k where the quality changes (ties leave together).
    ks = np.concatenate([[0], np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1])
    fnmr = (failed_before[-1] - failed_before[ks]) / (n - ks)
    return EDCCurve(np.concatenate([ks / n, [1.0]]), np.concatenate([fnmr, [0.0]]))


def partial_auc(curve: EDCCurve, limit: float, normalise: bool = False) -> float:
    """Area under the stepwise EDC from 0 to ``limit``; normalised, divided by ``FNMR(0) * limit``."""
    d, f = curve.discard, curve.fnmr
    starts = d[:-1]
    ends = np.minimum(d[1:], limit)
    area = float(np.sum(f[:-1] * np.clip(ends - starts, 0.0, None)))
    if normalise:
        return area / (curve.fnmr0 * limit) if curve.fnmr0 > 0 else float("nan")
    return area


def theoretical_best_pauc(fnmr0: float, limit: float) -> float:
    """Area of the ideal curve ``FNMR(d) = max(0, e0 - d)``: ``e0^2/2 - max(0, e0 - D)^2/2``."""
    return fnmr0 ** 2 / 2 - max(0.0, fnmr0 - limit) ** 2 / 2


#: The discard levels the CR-FIQA variant samples.
CRFIQA_GRID = tuple(np.round(np.arange(0.0, 1.0, 0.05), 10))


def crfiqa_shortfall(mated: np.ndarray, quality: np.ndarray, fmr: float,
                     grid: Sequence[float] = CRFIQA_GRID) -> Optional[Tuple[float, int]]:
    """The first discard level of ``grid`` at which the CR-FIQA variant keeps too few non-mated comparisons to
    measure ``fmr``, as ``(level, non-mated left)``; None when every level has enough."""
    mated = np.asarray(mated, dtype=bool)
    order = np.argsort(np.asarray(quality, dtype=np.float64), kind="stable")
    nonmated_after = np.cumsum((~mated[order])[::-1])[::-1]  # non-mated among order[i:]
    n, need = len(order), min_pairs_for_fmr(fmr)
    for r in grid:
        start = int(r * n)
        left = int(nonmated_after[start]) if start < n else 0
        if left < need:
            return float(r), left
    return None


def crfiqa_edc(sim: np.ndarray, mated: np.ndarray, quality: np.ndarray, fmr: float,
               grid: Sequence[float] = CRFIQA_GRID) -> EDCCurve:
    """The CR-FIQA/MagFace variant: discard the lowest-quality share of ALL pairs at each grid point, recompute the
    threshold at ``fmr`` on what is left, report FNMR. Use :func:`partial_auc_trapezoid` for its area."""
    sim = np.asarray(sim, dtype=np.float64)
    mated = np.asarray(mated, dtype=bool)
    order = np.argsort(np.asarray(quality, dtype=np.float64), kind="stable")
    n = len(sim)
    values = []
    for r in grid:
        keep = order[int(r * n):]
        s, m = sim[keep], mated[keep]
        tau = threshold_at_fmr(s[~m], fmr)
        values.append(float(np.mean(s[m] < tau)) if m.any() else 0.0)
    return EDCCurve(np.asarray(grid, dtype=np.float64), np.asarray(values))


def partial_auc_trapezoid(curve: EDCCurve, limit: float, normalise: bool = False) -> float:
    """Trapezoid area of a sampled curve from 0 to ``limit`` (the CR-FIQA convention)."""
    keep = curve.discard <= limit + 1e-12
    area = float(np.trapezoid(curve.fnmr[keep], curve.discard[keep]))
    if normalise:
        return area / (curve.fnmr0 * limit) if curve.fnmr0 > 0 else float("nan")
    return area


def cosine_similarities(embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 262144) -> np.ndarray:
    """Cosine similarity of rows ``a[i]`` and ``b[i]`` of ``(M, D)`` embeddings, in chunks (bounded memory)."""
    e = np.asarray(embeddings, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), chunk):
        ia, ib = a[start:start + chunk], b[start:start + chunk]
        out[start:start + chunk] = np.einsum("ij,ij->i", e[ia], e[ib], dtype=np.float64)
    return out


def summary(curve: EDCCurve, limits: Sequence[float], area=partial_auc) -> Dict[str, float]:
    """FNMR(0) and raw/normalised pAUC at each limit."""
    out = {"fnmr0": curve.fnmr0}
    for limit in limits:
        out[f"pauc@{limit:g}"] = area(curve, limit)
        out[f"pauc@{limit:g}_norm"] = area(curve, limit, normalise=True)
    return out
