"""``prepare_data.py``'s work: the label-optimised training data of eDifFIQA, from quality labels and teacher
embeddings, written in the official formats (byte for byte)."""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from dataset import labels
from dataset.formats import EmbeddingTable, prepared_writers, read_embeddings, read_label_values
from dataset.keys import normal_keys, require_keys
from engine import figures
from utils.config import check, short
from utils.errors import DataError
from utils.io import check_output_dir, file_list, json_writer, write_together

__all__ = ["PrepareConfig", "prepare"]

_logger = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """Settings of ``prepare_data.py`` (YAML keys = the long flag names)."""

    beta: float = 0.2
    label_location: str = "./training_data/vggface2-qs.pkl"
    embedding_location: str = "./training_data/cosface-embeddings.pkl"
    save_location: str = "./training_data"
    save_name: str = "ediffiqa"
    min_images: int = 10
    verbose: bool = True
    figure: bool = True                # prepare_data-<name>.png: labels and threshold, identities kept, distances

    def __post_init__(self) -> None:
        check(0.0 < self.beta < 1.0, f"'beta' must be between 0 and 1 (exclusive), got {self.beta}")
        check(self.min_images >= 1, f"'min_images' must be at least 1, got {self.min_images}")
        check(bool(self.save_name) and "/" not in self.save_name and os.sep not in self.save_name,
              f"'save_name' must be a plain name without slashes, got {self.save_name!r}")


def _centres(embeddings: EmbeddingTable, ordered_paths: List[str], starts: np.ndarray) -> torch.Tensor:
    """Official centres of the chosen images (``ordered_paths`` in :func:`dataset.labels.centre_order` order)."""
    return labels.identity_centres(lambda a, b: embeddings.gather(ordered_paths[a:b]), starts, embeddings.dim)


#: At most this many training images are measured for the figure's distances (evenly spread over the items).
FIGURE_SAMPLE = 20000


def _centre_distances(embeddings: EmbeddingTable, paths: List[str], rows: np.ndarray, centres: torch.Tensor
                      ) -> np.ndarray:
    """``1 - cos(embedding, its identity centre)`` of up to :data:`FIGURE_SAMPLE` training images (the ``ad`` of
    label optimisation), for the figure."""
    index = np.flatnonzero(rows >= 0)
    if len(index) > FIGURE_SAMPLE:
        index = index[np.linspace(0, len(index) - 1, FIGURE_SAMPLE).astype(np.int64)]
    return labels.centre_distances(embeddings.gather([paths[i] for i in index.tolist()]), centres.numpy()[rows[index]])


def _figure(cfg: PrepareConfig, qualities: np.ndarray, threshold: float, selection: labels.Selection,
            distances: Optional[np.ndarray]) -> List[Any]:
    """``[(prepare_data-<name>.png, writer)]``, or nothing when it cannot be drawn (said in a warning)."""
    title = f"prepare_data.py: {len(qualities)} labels -> {int(selection.kept.sum())} identities ({cfg.save_name})"
    return figures.figure_file(os.path.join(cfg.save_location, f"prepare_data-{cfg.save_name}.png"),
                               lambda: figures.preparation_figure(qualities, threshold, cfg.beta,
                                                                  selection.chosen_per_identity, cfg.min_images,
                                                                  distances, title),
                               "the prepared files are written without it")


def prepare(cfg: PrepareConfig) -> Dict[str, Any]:
    """Read the labels and teacher embeddings, compute the label-optimisation data (the pure functions of
    :mod:`dataset.labels`) and write the two official files and the JSON summary as one set; returns the summary."""
    check_output_dir(cfg.save_location, "save_location / -sl")

    start = time.perf_counter()
    paths, qualities, values = read_label_values(cfg.label_location)
    _logger.info("read %d labels from %s", len(paths), cfg.label_location)
    embeddings = read_embeddings(cfg.embedding_location)
    _logger.info("read %d embeddings (%d-d) from %s", len(embeddings), embeddings.dim, cfg.embedding_location)
    # The items carry the embeddings' keys (extract_embeddings.py: relative to the images folder, as the trainer
    # joins them with dataset.image_loc); the same keys as the labels' where both name the images alike.
    paths = require_keys(paths, embeddings.index, f"labels file '{cfg.label_location}'",
                         f"embeddings file '{cfg.embedding_location}'", "labelled images",
                         "compute both from the same image folder")

    # Identities are the keys' folders in the normal form, so 'id0\\a.jpg' and 'id0/b.jpg' are one identity (the
    # official rsplit on '/' differs only for keys not in the normal form; docs/differences.md).
    grouped = normal_keys(paths)
    if not any("/" in p for p in grouped):
        raise DataError(f"keys of embeddings file '{cfg.embedding_location}' hold no folder (e.g. {short(paths[0])}): "
                        "an identity is the folder of its images' keys (ID/FILE); embed the folder that holds the "
                        "identity folders")
    names, ids = labels.group_identities(grouped)
    del grouped
    threshold = labels.quality_threshold(qualities, cfg.beta)
    selection = labels.select_identities(qualities, ids, len(names), threshold, cfg.min_images)
    n_kept = int(selection.kept.sum())
    if n_kept == 0:
        raise DataError(f"no identity has {cfg.min_images} images with quality >= {threshold:.6g} "
                        f"(beta={cfg.beta}; most per identity: {int(selection.chosen_per_identity.max())}); "
                        "lower --min-images or raise --beta")

    # Chosen images of kept identities in the official stacking order, gathered window by window.
    order, starts = labels.centre_order(qualities, ids, selection)
    centres = _centres(embeddings, [paths[i] for i in order.tolist()], starts)
    embedding_dim = embeddings.dim
    distances = _centre_distances(embeddings, paths, selection.row[ids], centres) if cfg.figure else None
    del embeddings  # the largest object by far; free it before the items are built
    items = labels.training_items(paths, values, ids, selection)
    files = prepared_writers(cfg.save_location, cfg.save_name, centres, items)
    centres_path, items_path = files[0][0], files[1][0]

    summary = {
        "config": asdict(cfg),
        "labels": len(paths),
        "embedding_dim": embedding_dim,
        "threshold": threshold,
        "threshold_index": int(cfg.beta * len(paths)),
        "chosen_images": int(selection.chosen.sum()),
        "identities": len(names),
        "identities_kept": n_kept,
        "identities_dropped": len(names) - n_kept,
        "training_items": len(items),
        "outputs": [centres_path, items_path],
        "seconds": round(time.perf_counter() - start, 3),
    }
    summary_path = os.path.join(cfg.save_location, f"prepare_data-{cfg.save_name}.json")
    figure = _figure(cfg, qualities, threshold, selection, distances) if cfg.figure else []
    written = files + [(summary_path, json_writer(summary))] + figure
    write_together(written)  # one set: all or none
    print(f"threshold {threshold:.6g} (beta {cfg.beta}); kept {n_kept} of {len(names)} identities "
          f"({len(names) - n_kept} with fewer than {cfg.min_images} chosen images dropped); {len(items)} training "
          f"items; wrote {file_list([path for path, _ in written])}", file=sys.stderr)
    return summary
