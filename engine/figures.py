"""The pictures every run leaves beside its outputs: scores (the lowest and highest scored faces and the spread of
all scores), training curves, and what label preparation did. Drawn with matplotlib's Agg canvas (no display, no
global pyplot state; fonts that ship with matplotlib) and handed to :func:`utils.io.write_together` as writers, so a
figure is written atomically, with the files it belongs to."""
from __future__ import annotations

import functools
import io
import logging
import math
import os
from typing import IO, Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from utils.errors import first_line
from utils.io import write_together

__all__ = ["DPI", "TILES_PER_ROW", "group_sizes", "score_sheet_size", "score_sheet", "training_curves",
           "TRAINING_SIZE", "denoiser_curve", "DENOISER_SIZE", "preparation_figure", "PREPARATION_SIZE", "png_writer",
           "figure_file", "write_figure", "shorten", "fit_text", "drawable", "image_size"]

_logger = logging.getLogger(__name__)

DPI = 100
#: Tiles per row of the score sheet.
TILES_PER_ROW = 8
#: Figure sizes in inches (pixels = inches x DPI).
TRAINING_SIZE = (12.0, 7.0)
DENOISER_SIZE = (10.0, 4.0)
PREPARATION_SIZE = (15.0, 4.5)


def _figure(size: Tuple[float, float]):
    # matplotlib (a few tenths of a second to import) is imported by the functions that draw, not with this module:
    # runs that draw nothing (--help, --figure-tiles 0) do not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_writer(fig: Any) -> Tuple[str, Callable[[IO], None]]:
    """``(mode, write)`` for :func:`utils.io.write_together`: ``fig`` rendered once as a PNG of its exact size."""
    buffer = io.BytesIO()
    # zlib level 1 instead of PIL's 6: half the encoding time (a tenth of a second for a score sheet) for files about
    # 15% larger; the pixels are the same.
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    data = buffer.getvalue()
    return "wb", lambda handle: handle.write(data)


def figure_file(path: str, draw: Callable[[], Any], after: str) -> List[Tuple[str, Tuple[str, Callable[[IO], None]]]]:
    """``[(path, PNG writer)]`` of the figure ``draw()`` returns, for :func:`utils.io.write_together` with the files
    it belongs to; ``[]`` when it cannot be drawn, said in a warning that ends with ``after`` (what happens without
    it): a figure never costs the files it belongs to."""
    try:
        return [(path, png_writer(draw()))]
    except Exception as exc:  # noqa: BLE001 - fonts, memory, odd data: the figure is left out
        _cannot_draw(path, exc, after)
        return []


def write_figure(path: str, draw: Callable[[], Any]) -> None:
    """Write the figure ``draw()`` returns to ``path`` atomically, on its own (a training run's curves each epoch); a
    failure to draw or write it is a warning and training goes on."""
    try:
        write_together([(path, png_writer(draw()))])
    except Exception as exc:  # noqa: BLE001 - a figure must never stop a training run
        _cannot_draw(path, exc, "training goes on")


def _cannot_draw(path: str, exc: BaseException, after: str) -> None:
    _logger.warning("could not draw %s (%s: %s); %s", os.path.basename(path), type(exc).__name__, first_line(exc),
                    after)


@functools.lru_cache(maxsize=None)
def _glyphs(font: str) -> FrozenSet[int]:
    """Code points the font file ``font`` has glyphs for."""
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font).get_charmap())


def drawable(text: str) -> str:
    """``text`` (a file name, a folder, a label) as the figures' font can draw it: the bytes of a name that is not
    UTF-8 (surrogate escapes, :data:`utils.io.TEXT_ERRORS`) as ``\\xNN`` (matplotlib fails on them), characters the
    font lacks as ``\\uXXXX`` (matplotlib would leave a box and a warning), control characters as ``\\n`` or
    ``\\uXXXX``, ``$`` literal (not mathtext). The font is the one matplotlib picks for the figures' text."""
    if text.isascii() and text.isprintable() and "$" not in text:  # the usual name: nothing to escape
        return text
    from matplotlib import font_manager

    glyphs = _glyphs(font_manager.findfont(font_manager.FontProperties()))
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as Python's surrogateescape carries it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "$":
            out.append("\\$")
        elif char.isprintable() and code in glyphs:
            out.append(char)
        elif char in "\n\r\t":
            out.append(repr(char)[1:-1])
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def shorten(name: str, width: int = 22) -> str:
    """``name`` cut in the middle to ``width`` (at least 1) characters (``abcdefg...xyz.jpg``)."""
    if len(name) <= width:
        return name
    keep = max(width, 1) - 1
    return name[:keep - keep // 2] + "\u2026" + name[len(name) - keep // 2:]


def fit_text(name: str, width: float, measure: Callable[[str], float]) -> str:
    """``drawable(name)``, or, when it is wider than ``width`` (``measure(text)`` gives the width drawn), the
    longest :func:`shorten` of ``name`` whose drawable form is not: escapes (``\\xNN``, ``\\uXXXX``) are never
    cut, and the result is measured to fit (at worst it is the ellipsis alone)."""
    text = drawable(name)
    if measure(text) <= width:
        return text
    best, lo, hi = "\u2026", 2, len(name) - 1  # characters kept (the ellipsis counts as one)
    while lo <= hi:  # the drawn width grows with the characters kept
        mid = (lo + hi) // 2
        candidate = drawable(shorten(name, mid))
        if measure(candidate) <= width:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


# ------------------------------------------------------------------------------------------------- scores
#: Vertical layout of the score sheet, in inches from the top: title, histogram, each group's label and tile rows.
_TITLE, _HIST, _HIST_LABEL, _GROUP_LABEL, _ROW, _BOTTOM = 1.0, 2.0, 0.75, 0.45, 2.25, 0.15
#: A tile, in pixels: the face's square, the frame in the group's colour around it, and its top in the row (the
#: rest of the row, below, is the caption).
_FACE, _FRAME, _TILE_TOP = 160, 3, 4
#: Points of the captions' text.
_CAPTION_SIZE = 8


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 image``, ``2 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def group_sizes(n: int, total: Optional[int] = None) -> Tuple[int, int]:
    """Tiles of the lowest and of the highest group for ``n`` asked per group and ``total`` scores (None: as many
    as asked): with fewer than ``2 n`` scores the faces are split between the groups (the lowest takes the odd one),
    so that no face stands in both."""
    if total is None or total >= 2 * n:
        return n, n
    return (total + 1) // 2, total // 2


def score_sheet_size(n: int, total: Optional[int] = None) -> Tuple[float, float]:
    """Inches of the score sheet with ``n`` tiles asked per group and ``total`` scores (None: at least ``2 n``): a
    histogram, then the lowest and the highest (:func:`group_sizes`; a group without tiles is left out)."""
    groups = sum(_GROUP_LABEL + math.ceil(k / TILES_PER_ROW) * _ROW for k in group_sizes(n, total) if k)
    return 16.0, _TITLE + _HIST + _HIST_LABEL + groups + _BOTTOM


def _decimals(values: np.ndarray) -> int:
    """Decimals that tell the scores apart (4 for the usual spread; more when they are close together)."""
    spread = float(values.max() - values.min()) if len(values) else 0.0
    if spread <= 0:
        return 4
    return int(min(8, max(4, math.ceil(-math.log10(spread)) + 2)))


def score_sheet(scores: Dict[str, float], load: Callable[[str], Optional[np.ndarray]], n: int, title: str) -> Any:
    """The picture of a folder's scores: their histogram, and the ``n`` lowest and ``n`` highest scored faces, each
    captioned with its score and file name.

    The faces of a group are one image composed here at the figure's pixel size (framed tiles on white) and drawn
    unscaled; the captions are figure texts. One axes (the histogram) instead of one per face: drawing the sheet
    costs a fraction of what 2n axes with their ticks, spines and labels did. ``scores``: ``{key: score}`` (the keys
    of the written pickle); ``load``: ``key -> (H, W, 3) uint8`` face, or None when it cannot be read; ``n`` 0: the
    histogram only.
    """
    keys = sorted(scores, key=lambda k: (scores[k], k))
    values = np.array([scores[k] for k in keys], dtype=np.float64)
    n_low, n_high = group_sizes(n, len(keys))
    fig = _figure(score_sheet_size(n, len(keys)))
    width, height = fig.get_size_inches()
    digits = _decimals(values)

    def band(top: float, size: float) -> Tuple[float, float]:  # inches from the top -> (bottom, height) fractions
        return 1 - (top + size) / height, size / height

    fig.suptitle(drawable(title), fontsize=13, y=1 - 0.25 / height)
    bottom, size = band(_TITLE, _HIST)
    ax = fig.add_axes((0.06, bottom, 0.76, size))  # the legend stands to its right
    counts, edges = np.histogram(values, **_score_bins(values))
    ax.stairs(counts, edges, fill=True, color="#4c72b0")  # one patch, not one bar per bin
    ax.set_xlabel("quality score (higher = better for face recognition)")
    ax.set_ylabel("images")
    _integer_counts(ax)
    _plain_scores(ax)
    for k, x, style, colour, which in ((n_low, values[n_low - 1], "--", "#c44e52", "lowest"),
                                       (n_high, values[-n_high], ":", "#55a868", "highest")):
        if k:
            below = "at or below" if which == "lowest" else "at or above"
            said = f"the {which} is" if k == 1 else f"the {k} {which} are"
            ax.axvline(x, color=colour, linestyle=style, label=f"{said} {below} this")
    if n_low or n_high:
        _legend_outside(ax, fontsize=9)
    ax.set_title(f"{counted(len(values), 'score')}: min {values.min():.{digits}f}, median "
                 f"{np.median(values):.{digits}f}, max {values.max():.{digits}f}", fontsize=10)
    groups = [("LOWEST scores (worst quality), lowest first", keys[:n_low], "#c44e52"),
              ("HIGHEST scores (best quality), highest first", keys[::-1][:n_high], "#55a868")]
    top = _TITLE + _HIST + _HIST_LABEL
    for label, chosen, colour in groups:
        if not chosen:
            continue
        fig.text(0.5, 1 - (top + _GROUP_LABEL * 0.6) / height, label, ha="center", fontsize=12, color=colour,
                 weight="bold")
        top += _GROUP_LABEL
        _tile_group(fig, top, [(key, scores[key]) for key in chosen], load, colour, digits)
        top += math.ceil(len(chosen) / TILES_PER_ROW) * _ROW
    return fig


def _score_bins(values: np.ndarray) -> Dict[str, Any]:
    """``np.histogram``'s bins of the scores (as ``Axes.hist`` bins them); equal scores (one face, say) get an odd
    number of bins spanning 5% of their size to each side, so that the bar stands centred on the value."""
    low, high = float(values.min()), float(values.max())
    if high > low:
        return {"bins": min(60, max(10, len(values) // 5))}
    pad = 0.05 * max(abs(low), 1e-3)
    return {"bins": 11, "range": (low - pad, low + pad)}


def _plain_scores(ax: Any) -> None:
    """Scores on the x axis written out in full: scores close together would otherwise be written as an offset
    (``1e-7+4.482e-3``) and steps from it."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)


def _integer_counts(ax: Any) -> None:
    """Only whole numbers on the count (y) axis of a histogram."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(ax: Any, **kwargs: Any) -> None:
    """The legend of ``ax`` to the right of its axes, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _tile_group(fig: Any, top: float, chosen: Sequence[Tuple[str, float]], load: Callable[[str], Optional[np.ndarray]],
                colour: str, digits: int) -> None:
    """Draw the faces of ``chosen`` (``(key, score)``) in rows of :data:`TILES_PER_ROW` from ``top`` (inches from
    the figure's top), framed in ``colour``, each captioned with its score and file name."""
    width_px, height_px = (round(side * DPI) for side in fig.get_size_inches())
    row_px, cell_px = round(_ROW * DPI), width_px // TILES_PER_ROW
    rows = math.ceil(len(chosen) / TILES_PER_ROW)
    mosaic = np.full((rows * row_px, width_px, 4), 255, dtype=np.uint8)  # RGBA, opaque white
    frame = np.frombuffer(bytes.fromhex(colour.lstrip("#") + "ff"), dtype=np.uint8)
    side = _FACE + 2 * _FRAME
    # Captions are measured as the canvas will draw them (the renderer is the one saving the figure uses) and cut to
    # the framed face's width, so that neighbours (one cell apart, a cell being wider) never overlap.
    from matplotlib.font_manager import FontProperties

    renderer, font = fig.canvas.get_renderer(), FontProperties(size=_CAPTION_SIZE)

    def measure(text: str) -> float:
        return renderer.get_text_width_height_descent(text, font, ismath=False)[0]

    for i, (key, score) in enumerate(chosen):
        r, c = divmod(i, TILES_PER_ROW)
        y, x = r * row_px + _TILE_TOP, c * cell_px + (cell_px - side) // 2
        mosaic[y:y + side, x:x + side] = frame
        face = _safe_load(load, key)
        inner = mosaic[y + _FRAME:y + _FRAME + _FACE, x + _FRAME:x + _FRAME + _FACE, :3]
        if face is None:
            inner[...] = 0xEE
            fig.text((x + side / 2) / width_px, 1 - (top * DPI + y + side / 2) / height_px, "(unreadable)",
                     ha="center", va="center", fontsize=9)
        else:
            _paste_fitted(inner, face)
        fig.text((x + side / 2) / width_px, 1 - (top * DPI + y + side + 4) / height_px,
                 f"{score:.{digits}f}\n{fit_text(os.path.basename(key), side, measure)}", ha="center", va="top",
                 fontsize=_CAPTION_SIZE, gid="caption")
    fig.add_artist(_pixels_artist()(mosaic, 0, height_px - round(top * DPI) - mosaic.shape[0]))


@functools.lru_cache(maxsize=None)
def _pixels_artist() -> type:
    """The class of an artist that draws an ``(H, W, 4)`` uint8 RGBA array at its own pixel size, ``(x, y)`` pixels
    from the figure's bottom left: the renderer blits it, where ``figimage`` would convert, mask and resample every
    pixel first (a few hundredths of a second for a score sheet). Defined on first use, as matplotlib is imported."""
    from matplotlib.artist import Artist

    class Pixels(Artist):
        def __init__(self, rgba: np.ndarray, x: int, y: int) -> None:
            super().__init__()
            self.rgba = np.ascontiguousarray(rgba[::-1])  # the renderer's rows go up from y
            self.x, self.y = x, y

        def draw(self, renderer: Any) -> None:
            if not self.get_visible():
                return
            gc = renderer.new_gc()
            renderer.draw_image(gc, self.x, self.y, self.rgba)
            gc.restore()

    return Pixels


def _paste_fitted(out: np.ndarray, img: Image.Image) -> None:
    """The RGB image ``img`` scaled to fit the square ``out`` (``(S, S, 3)`` uint8), centred on white."""
    side = out.shape[0]
    scale = side / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    out[...] = 255
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC))


def _safe_load(load: Callable[[str], Optional[np.ndarray]], key: str) -> Optional[Image.Image]:
    """The face of ``key`` as an RGB image, or None (with a warning) when it cannot be read or is not an image."""
    try:
        image = load(key)
        return None if image is None else Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - a file that changed since it was scored: the tile says so
        _logger.warning("figure: cannot show '%s' (%s)", key, exc)
        return None


# ------------------------------------------------------------------------------------------------- training
def training_curves(history: Sequence[Dict[str, Any]], title: str, groups: Sequence[str] = ()) -> Any:
    """Training and validation loss per term and the learning rate per optimizer group, one panel each, over the
    epochs of ``history`` (``train.py``'s records: ``epoch``, ``train``/``val`` term means, ``lr`` per group);
    ``groups`` names what each group trains (else ``group N``)."""
    fig = _figure(TRAINING_SIZE)
    epochs = [h["epoch"] for h in history]
    terms = list(history[0]["train"]) if history else ["loss"]
    panels = terms + ["lr"]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    names = {"loss": "total loss", "loss_rc": "representation consistency (L_rc)", "loss_q": "quality (L_q)"}
    for i, term in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if term == "lr":
            logged = [h for h in history if h.get("lr")]  # records of older runs may lack it
            for g in range(len(logged[0]["lr"]) if logged else 0):
                ax.plot([h["epoch"] for h in logged], [h["lr"][g] for h in logged], marker="o",
                        label=groups[g] if g < len(groups) else f"group {g + 1}")
            ax.set_yscale("log")
            ax.set_title("learning rate per optimizer group", fontsize=10)
        else:
            ax.plot(epochs, [h["train"][term] for h in history], marker="o", label="training")
            ax.plot(epochs, [h["val"][term] for h in history], marker="s", label="validation")
            ax.set_title(names.get(term, term), fontsize=10)
        ax.set_xlabel("epoch")
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[::max(1, len(epochs) // 20)])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(drawable(title), fontsize=12)
    fig.tight_layout()
    return fig


def denoiser_curve(steps: Sequence[int], losses: Sequence[float], title: str) -> Any:
    """The denoiser's training loss over the logged steps, with a moving average."""
    fig = _figure(DENOISER_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, color="#4c72b0", alpha=0.4, label="loss")
    if len(losses) >= 5:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="#4c72b0", label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(drawable(title), fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- preparation
def preparation_figure(qualities: np.ndarray, threshold: float, beta: float, chosen_per_identity: np.ndarray,
                       min_images: int, distances: np.ndarray, title: str) -> Any:
    """What ``prepare_data.py`` did: the qualities with the threshold beta puts, the chosen images per identity
    with the ``min_images`` an identity needs, and the angular distances of the training images to their identity
    centre (``ad``, what label optimisation subtracts, times epsilon, from a label)."""
    fig = _figure(PREPARATION_SIZE)
    ax = fig.add_subplot(1, 3, 1)
    ax.hist(qualities, bins=60, color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.4g} (top {beta:g})")
    ax.set_xlabel("quality label")
    ax.set_ylabel("images")
    ax.set_title("labels and the threshold beta sets", fontsize=10)
    _integer_counts(ax)
    _legend_outside(ax, fontsize=8)
    ax = fig.add_subplot(1, 3, 2)
    top = int(chosen_per_identity.max()) if len(chosen_per_identity) else 0
    ax.hist(chosen_per_identity, bins=np.arange(0, top + 2) - 0.5 if top <= 60 else 60, color="#8172b2")
    ax.axvline(min_images - 0.5, color="#c44e52", linestyle="--", label=f"kept from {min_images}")
    kept = int((chosen_per_identity >= min_images).sum())
    ax.set_xlabel("images above the threshold, per identity")
    ax.set_ylabel("identities")
    ax.set_title(f"{kept} of {len(chosen_per_identity)} identities kept", fontsize=10)
    _integer_counts(ax)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # images per identity: whole numbers too
    _legend_outside(ax, fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    if len(distances):
        ax.hist(distances, bins=60, color="#55a868")
        ax.set_title(f"distance to the identity centre ({len(distances)} training images)", fontsize=10)
    else:
        ax.set_title("no training image", fontsize=10)
    ax.set_xlabel("1 - cos(embedding, its identity centre)")
    ax.set_ylabel("images")
    _integer_counts(ax)
    fig.suptitle(drawable(title), fontsize=12)
    fig.tight_layout()
    return fig


def image_size(data: bytes) -> Tuple[int, int]:
    """``(width, height)`` of PNG bytes (for checks)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
