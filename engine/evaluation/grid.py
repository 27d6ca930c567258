"""The paper's EDC grid: one panel per FR model (rows) and benchmark (columns), one curve per quality method with its
pAUC in the legend; drawn on matplotlib's Agg canvas (no pyplot state) and handed over as PNG and PDF writers."""
from __future__ import annotations

import io
from typing import IO, Any, Callable, Dict, Mapping, Sequence, Tuple

import numpy as np

from engine.figures import drawable

__all__ = ["Curve", "edc_grid", "figure_writer"]

#: One method's curve in a panel: ``(discard (K,), FNMR (K,), pAUC at each limit)``.
Curve = Tuple[np.ndarray, np.ndarray, Sequence[float]]

#: Dash patterns of the methods in drawing order (then repeated, thinner): curves that coincide (methods that order
#: the images alike) stay visible, a wide solid line under narrower dashed ones.
_DASHES: Sequence[Any] = ("-", (0, (5, 2)), (0, (2, 2)), (0, (7, 2, 1, 2)), (0, (1, 1.5)), (0, (4, 1, 1, 1, 1, 1)))


def _line_style(k: int, count: int) -> Dict[str, Any]:
    """Line style, width and drawing order of method ``k`` of ``count``: the first drawn widest and lowest."""
    return {"linestyle": _DASHES[k % len(_DASHES)], "linewidth": 1.0 + 1.8 * (count - 1 - k) / max(count - 1, 1),
            "zorder": 2 + k}


def edc_grid(curves: Mapping[Tuple[str, str], Mapping[str, Curve]], fr_models: Sequence[str],
             benchmarks: Sequence[str], fmr: float, limits: Sequence[float], stepwise: bool = True) -> Any:
    """The grid figure of ``curves[(fr model, benchmark)][method]``; the x axis runs to the largest limit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only where a figure is drawn
    from matplotlib.figure import Figure

    rows, cols = len(fr_models), len(benchmarks)
    fig = Figure(figsize=(3.3 * cols + 0.4, 2.9 * rows + 0.5), dpi=150)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    limit = max(limits)
    names = ", ".join(f"{d:g}" for d in limits)
    for r, fr in enumerate(fr_models):
        for c, bench in enumerate(benchmarks):
            ax = axes[r, c]
            panel = curves[(fr, bench)]
            for k, (method, (d, f, paucs)) in enumerate(panel.items()):
                label = f"{drawable(method)} ({', '.join(f'{p:.3g}' for p in paucs)})"
                style = _line_style(k, len(panel))
                if stepwise:
                    ax.step(d, f, where="post", label=label, **style)
                else:
                    ax.plot(d, f, label=label, marker="o", markersize=2, **style)
            ax.set_xlim(0, limit)
            ax.set_ylim(bottom=0)  # FNMR is never negative (an all-zero panel would show -0.04 to 0.04)
            ax.set_title(drawable(bench) if r == 0 else "", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{drawable(fr)}\nFNMR at FMR = {fmr:g}", fontsize=9)
            if r == rows - 1:
                ax.set_xlabel("Discard fraction", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, linestyle=":", linewidth=0.6)
            ax.legend(fontsize=6.5, frameon=False, title=f"pAUC at {names}", title_fontsize=6.5)
    fig.tight_layout()
    return fig


def figure_writer(fig: Any, fmt: str) -> Tuple[str, Callable[[IO], None]]:
    """``(mode, write)`` for :func:`utils.io.write_together`: ``fig`` rendered once as ``fmt`` (``png``, ``pdf``;
    no creation date, so the same figure gives the same bytes)."""
    buffer = io.BytesIO()
    metadata: Dict[str, Any] = {"CreationDate": None} if fmt == "pdf" else {}
    fig.savefig(buffer, format=fmt, metadata=metadata)
    data = buffer.getvalue()
    return "wb", lambda handle: handle.write(data)
