"""File handling for EDC evaluation: comparison pairs, quality files, figures."""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import IO, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from dataset.formats import all_real, quality_value, read_scores_csv, read_scores_text
from dataset.verification import parse_lfw_pairs
from engine.figures import drawable
from utils.config import short
from utils.errors import DataError, first_line
from utils.io import TEXT_ERRORS, safe_pickle_load

__all__ = ["Pairs", "read_pairs", "read_qualities", "edc_figure"]


@dataclass
class Pairs:
    """Comparisons: sample paths ``a``/``b``, ``mated`` flags, and optional given ``similarity``."""

    a: List[str]
    b: List[str]
    mated: np.ndarray
    similarity: Optional[np.ndarray] = None


def _truthy(value: str, path: str, line: int) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "mated", "genuine"):
        return True
    if v in ("0", "false", "no", "non-mated", "nonmated", "impostor"):
        return False
    raise DataError(f"pairs file '{path}', line {line}: 'mated' is {short(value)}; use 1/0 or true/false")


def _pair_text(path: str) -> str:
    """The text of a pairs file. Names that are not UTF-8 keep their bytes (:data:`utils.io.TEXT_ERRORS`), as in
    the score files they are matched with; a leading byte-order mark is dropped. A file with NUL bytes is not text
    (a binary file, or UTF-16): a :class:`DataError`."""
    with open(path, "rb") as handle:
        data = handle.read()
    if b"\0" in data:
        raise DataError(f"pairs file '{path}' holds NUL bytes, so it is not a text file; give a UTF-8 CSV "
                        "a,b,mated[,similarity] or an LFW pairs.txt")
    return data.decode("utf-8-sig", TEXT_ERRORS)


#: What is stripped around the fields of a pairs CSV: ASCII spaces and tabs only, so that a file name that starts or
#: ends with another space character (``\x0b``, ``\x85``, ``\u2028``, valid in names) is kept whole.
_BLANKS = " \t"


def read_pairs(path: str) -> Pairs:
    """Read ``a,b,mated[,similarity]`` CSV (with header) or the LFW ``pairs.txt`` format.

    LFW lines ``name i j`` are mated (``name/name_000i.jpg`` vs ``name/name_000j.jpg``), ``name1 i name2 j`` non-mated;
    a first line with one or two integers (the set counts) is skipped. A missing or binary file, a CSV without the
    header or with a malformed line, another LFW line is a :class:`DataError` naming the file (and the line).
    """
    if not os.path.isfile(path):
        raise DataError(f"pairs file '{path}' not found")
    text = _pair_text(path)
    # Lines end only at \n, \r\n or \r (the csv module's and io's newlines); str.splitlines() would also end
    # them at \x0b, \x0c, \x1c-\x1e, \x85 and \u2028-\u2029, which file names may hold.
    if path.lower().endswith(".csv") or "," in text.split("\n", 1)[0].split("\r", 1)[0]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = [f.strip(_BLANKS) for f in (reader.fieldnames or [])]
            if not {"a", "b", "mated"} <= set(fields):
                raise DataError(f"pairs file '{path}' needs the header 'a,b,mated' (optional ',similarity'), "
                                f"found {short(fields)}")
            a, b, mated, sims = [], [], [], []
            line = reader.line_num
            for row in reader:
                i, line = line + 1, reader.line_num  # a quoted name may span lines: name the first
                row = {k.strip(_BLANKS): (v or "") for k, v in row.items() if k is not None}
                a.append(row["a"].strip(_BLANKS))
                b.append(row["b"].strip(_BLANKS))
                mated.append(_truthy(row["mated"], path, i))
                if "similarity" in row and row["similarity"].strip(_BLANKS):
                    try:
                        sims.append(float(row["similarity"]))
                    except ValueError:
                        raise DataError(f"pairs file '{path}', line {i}: similarity {short(row['similarity'])} is "
                                        "not a number") from None
        except csv.Error as exc:
            raise DataError(f"pairs file '{path}' is not a readable CSV ({exc})") from None
        if sims and len(sims) != len(a):
            raise DataError(f"pairs file '{path}': the similarity column is filled on {len(sims)} of {len(a)} lines")
        return Pairs(a, b, np.array(mated, dtype=bool), np.array(sims) if sims else None)

    rows = parse_lfw_pairs(text, path)
    a = [f"{n1}/{n1}_{x:04d}.jpg" for n1, x, _, _, _ in rows]
    b = [f"{n2}/{n2}_{y:04d}.jpg" for _, _, n2, y, _ in rows]
    mated = [same for *_, same in rows]
    return Pairs(a, b, np.array(mated, dtype=bool))


def _read_quality_table(path: str) -> Dict[str, float]:
    if path.lower().endswith((".csv", ".txt")):
        if not os.path.isfile(path):
            raise DataError(f"quality file '{path}' not found")
        return read_scores_csv(path) if path.lower().endswith(".csv") else read_scores_text(path)
    try:
        data = safe_pickle_load(path)
    except DataError as exc:
        if path.lower().endswith((".pkl", ".pickle")):
            raise
        raise DataError(f"{first_line(exc)}; a quality file is a pickled dict {{image path: quality}} (.pkl) or a CSV "
                        "(.csv) as inference.py writes them, or lines 'path score' (.txt, as CR-FIQA writes them): "
                        "convert other formats to one of these") from None
    if not isinstance(data, Mapping):
        raise DataError(f"quality file '{path}' must hold a dict {{image path: quality}}")
    if all_real(data.values()):
        try:
            return {str(k): float(v) for k, v in data.items()}
        except OverflowError:
            pass
    # name the first value that is not a number, or beyond the float range
    return {str(k): quality_value(v, f"quality file '{path}'", k) for k, v in data.items()}


def read_qualities(path: str) -> Dict[str, float]:
    """Read ``quality-scores.pkl`` (dict path -> score) or ``quality-scores.csv`` as written by ``inference.py``, or
    a ``.txt`` file of ``path score`` lines (:func:`dataset.formats.read_scores_text`); an unreadable file or
    NaN/infinite scores (count and examples) are a :class:`DataError`."""
    table = _read_quality_table(path)
    bad = [k for k, v in table.items() if not math.isfinite(v)]
    if bad:
        raise DataError(f"quality file '{path}': {len(bad)} of {len(table)} scores are NaN or infinite (e.g. "
                        f"{', '.join(repr(k) for k in bad[:3])}); score those images again or remove them")
    return table


def edc_figure(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], title: str, fmr: float, limit: float = 0.3,
               stepwise: bool = True, paucs: Optional[Mapping[str, Mapping[float, float]]] = None
               ) -> List[Tuple[str, Tuple[str, Callable[[IO], None]]]]:
    """An EDC figure in the style of the eDifFIQA paper, as ``[("png", writer), ("pdf", writer)]`` for
    :func:`utils.io.write_together` (rendered here, the figure closed). ``paucs``: each curve's pAUC per discard
    limit, shown in its legend label. The legend stands below the axes, clear of the curves."""
    import matplotlib  # imported where a figure is drawn, as in engine/figures.py

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.evaluation.grid import figure_writer

    fig, ax = plt.subplots(figsize=(4.2, 3.4 + 0.2 * len(curves)), dpi=150)
    for label, (d, f) in curves.items():
        text = drawable(label)
        if paucs and label in paucs:
            text += " (pAUC " + ", ".join(f"@{d_:g}: {v:.4f}" for d_, v in paucs[label].items()) + ")"
        if stepwise:
            ax.step(d, f, where="post", label=text, linewidth=1.6)
        else:
            ax.plot(d, f, label=text, linewidth=1.6, marker="o", markersize=2.5)
    ax.set_xlim(0, limit)
    ax.set_xlabel("Discard fraction")
    ax.set_ylabel(f"FNMR at FMR = {fmr:g}")
    ax.set_title(drawable(title), fontsize=10)
    ax.grid(True, linestyle=":", linewidth=0.6)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.2), borderaxespad=0.0)
    fig.tight_layout()
    try:
        return [(fmt, figure_writer(fig, fmt)) for fmt in ("png", "pdf")]
    finally:
        plt.close(fig)
