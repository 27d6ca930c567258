"""Prepare eDifFIQA's label-optimised training data from quality labels and teacher embeddings.

    python prepare_data.py [-c CONFIG] [-b 0.2] [-ll LABELS] [-el EMBEDDINGS] [-sl SAVE_DIR] [-sn NAME] [--min-images 10]

Writes ``average_embedding_batch-<name>.pkl`` (pickled torch float32 tensor of identity centres),
``training_items-<name>.pkl`` (pickled list of ``(path, quality, centre row)``) and ``prepare_data-<name>.json``
(a summary) into the save folder: the first two are the official script's files byte for byte, with the same
flags and defaults.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from utils.cli import run_cli, setup_logging
from utils.config import load_config
from utils.errors import DataError

_logger = logging.getLogger("prepare_data")


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

    def __post_init__(self) -> None:
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"'beta' must be between 0 and 1 (exclusive), got {self.beta}")
        if self.min_images < 1:
            raise ValueError(f"'min_images' must be at least 1, got {self.min_images}")
        if not self.save_name or "/" in self.save_name or os.sep in self.save_name:
            raise ValueError(f"'save_name' must be a plain name without slashes, got {self.save_name!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML file with the settings below (long names as keys)")
    parser.add_argument("-b", "--beta", type=float, help="share of labels above the quality threshold (0.2)")
    parser.add_argument("-ll", "--label_location", help="quality labels (./training_data/vggface2-qs.pkl)")
    parser.add_argument("-el", "--embedding_location",
                        help="teacher embeddings, .pkl dict or .npz (./training_data/cosface-embeddings.pkl)")
    parser.add_argument("-sl", "--save_location", help="output folder, created if missing (./training_data)")
    parser.add_argument("-sn", "--save_name", help="suffix of the output files (ediffiqa)")
    parser.add_argument("--min-images", dest="min_images", type=int,
                        help="chosen images an identity needs to be kept (10)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def resolve_config(args: argparse.Namespace) -> PrepareConfig:
    overrides: Dict[str, Any] = {key: getattr(args, key) for key in (
        "beta", "label_location", "embedding_location", "save_location", "save_name", "min_images")}
    overrides["verbose"] = False if args.quiet else None
    return load_config(PrepareConfig, args.config, overrides)


def main(argv: Optional[List[str]] = None) -> int:
    """Run data preparation; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.verbose)

    from dataset.formats import prepared_writers, read_embeddings, read_label_values
    from dataset.labels import centre_order, group_identities, identity_centres, quality_threshold
    from dataset.labels import select_identities, training_items
    from utils.io import check_output_dir, json_writer, write_together

    check_output_dir(cfg.save_location, "save_location / -sl")

    start = time.perf_counter()
    paths, qualities, values = read_label_values(cfg.label_location)
    _logger.info("read %d labels from %s", len(paths), cfg.label_location)
    embeddings = read_embeddings(cfg.embedding_location)
    _logger.info("read %d embeddings (%d-d) from %s", len(embeddings), embeddings.dim, cfg.embedding_location)
    missing = embeddings.missing(paths)
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} labelled images have no embedding in "
                        f"'{cfg.embedding_location}' (e.g. {', '.join(repr(p) for p in missing[:3])}); "
                        "both files must use the same relative paths")

    names, ids = group_identities(paths)
    threshold = quality_threshold(qualities, cfg.beta)
    selection = select_identities(qualities, ids, len(names), threshold, cfg.min_images)
    n_kept = int(selection.kept.sum())
    if n_kept == 0:
        raise DataError(f"no identity has {cfg.min_images} images with quality >= {threshold:.6g} "
                        f"(beta={cfg.beta}; most per identity: {int(selection.chosen_per_identity.max())}); "
                        "lower --min-images or raise --beta")

    # Chosen images of kept identities in the official stacking order, gathered window by window.
    order, starts = centre_order(qualities, ids, selection)
    chosen_paths = [paths[i] for i in order.tolist()]
    centres = identity_centres(lambda a, b: embeddings.gather(chosen_paths[a:b]), starts, embeddings.dim)
    embedding_dim = embeddings.dim
    del embeddings, chosen_paths  # the largest objects by far; free them before the items are built
    items = training_items(paths, values, ids, selection)
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
    write_together(files + [(summary_path, json_writer(summary))])  # one set: all three or none
    print(f"threshold {threshold:.6g} (beta {cfg.beta}); kept {n_kept} of {len(names)} identities "
          f"({len(names) - n_kept} with fewer than {cfg.min_images} chosen images dropped); {len(items)} training "
          f"items; wrote {centres_path}, {items_path} and {summary_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "prepare_data.py"))
