"""Score every aligned face crop in a folder with an eDifFIQA model.

    python inference.py -c configs/inference_config.yaml [--images DIR] [--model ediffiqaT] [--weights FILE]
                        [--output DIR] [--device auto|cpu|cuda|cuda:N] [--batch-size N] [--workers N]

Writes ``<save_path>/quality-scores.pkl`` (the official format: pickled dict {image path: quality}) and
``<save_path>/quality-scores.csv`` (``path,quality``). Exit code 2 on a user mistake, with a one-line message.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from utils.cli import run_cli, setup_logging
from utils.config import check_batch, check_seed, check_workers, load_config
from utils.errors import DataError

_logger = logging.getLogger("inference")

SCORES_PICKLE = "quality-scores.pkl"
SCORES_CSV = "quality-scores.csv"


@dataclass
class BaseSection:
    """``base``: run settings (official keys)."""

    verbose: bool = True
    save_path: str = "./quality_scores"
    seed: int = 42069
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed(self.seed, "base.seed")


@dataclass
class DatasetSection:
    """``dataset``: where the images are (official key ``loc``)."""

    loc: str = "./example_images"


@dataclass
class LoaderParams:
    """``dataloader.params``: DataLoader settings (official key names). None means "pick for the device"."""

    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    pin_memory: bool = True
    shuffle: bool = False
    drop_last: bool = False
    prefetch_factor: Optional[int] = None
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        check_batch(self.batch_size, "dataloader.params.batch_size")
        check_workers(self.num_workers, "dataloader.params.num_workers")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(f"'dataloader.params.prefetch_factor' must be at least 1, got {self.prefetch_factor}")
        if self.drop_last:
            raise ValueError("'dataloader.params.drop_last: true' would leave the last images unscored; remove it")


@dataclass
class LoaderSection:
    """``dataloader``."""

    params: LoaderParams = field(default_factory=LoaderParams)


@dataclass
class InferenceConfig:
    """The whole inference config: the official keys plus ``weights`` and ``precision``."""

    base: BaseSection = field(default_factory=BaseSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    dataloader: LoaderSection = field(default_factory=LoaderSection)
    model: str = "ediffiqaL"
    weights: Optional[str] = None
    precision: str = "fp32"
    backend: str = "torch"
    fold_bn: bool = True
    align: bool = False
    largest_face: bool = False
    min_face_probability: float = 0.9
    save_crops: Optional[str] = None
    annotate: Optional[str] = None

    def __post_init__(self) -> None:
        from model.registry import VARIANTS, variant_names
        from utils.backends import BACKENDS
        from utils.scoring import PRECISIONS

        if self.backend not in BACKENDS:
            raise ValueError(f"'backend' is '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        if not 0.0 <= self.min_face_probability <= 1.0:
            raise ValueError(f"'min_face_probability' must be in [0, 1], got {self.min_face_probability}")

        if self.model not in VARIANTS:
            raise ValueError(f"'model' is '{self.model}'; choose one of: {', '.join(variant_names())}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"'precision' is '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if not self.align:
            for key, flag in (("largest_face", "--largest-face"), ("save_crops", "--save-crops"),
                              ("annotate", "--annotate")):
                if getattr(self, key):
                    raise ValueError(f"'{key}' ({flag}) only applies to photos: add align: true (--align)")

    @property
    def weights_path(self) -> str:
        """The checkpoint: ``weights`` if set, else ``weights/<model>.pth`` (relative to the working directory)."""
        return self.weights or os.path.join("weights", f"{self.model}.pth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="YAML config (official keys); defaults apply without one")
    parser.add_argument("--images", help="folder of aligned face crops (dataset.loc)")
    parser.add_argument("--model", help="ediffiqaL, ediffiqaM, ediffiqaS, ediffiqaT or diffiqaR (model)")
    parser.add_argument("--weights", help="checkpoint file (weights; default weights/<model>.pth)")
    parser.add_argument("--output", help="output folder (base.save_path)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (base.device)")
    parser.add_argument("--batch-size", type=int, help="images per batch (dataloader.params.batch_size)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (dataloader.params.num_workers)")
    parser.add_argument("--precision", help="fp32 (default, official numbers), tf32 (CUDA), bf16, fp16 (CUDA) or auto "
                        "(bf16 where the CPU or GPU computes it natively, else fp32) (precision)")
    parser.add_argument("--backend", help="torch (default), onnxruntime or opencv (backend)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (fold_bn: false)")
    parser.add_argument("--align", action="store_true", help="images are photos: detect, align and score every face")
    parser.add_argument("--largest-face", action="store_true", help="with --align: only the largest face per photo")
    parser.add_argument("--save-crops", metavar="DIR", help="with --align: save the aligned 112x112 crops here")
    parser.add_argument("--annotate", metavar="DIR", help="with --align: save copies of the photos with boxes and scores")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs (base.verbose: 0)")
    return parser


def resolve_config(args: argparse.Namespace) -> InferenceConfig:
    """Merge the YAML config and command-line overrides into a validated :class:`InferenceConfig`."""
    return load_config(InferenceConfig, args.config, {
        "dataset.loc": args.images, "model": args.model, "weights": args.weights, "base.save_path": args.output,
        "base.device": args.device, "dataloader.params.batch_size": args.batch_size,
        "dataloader.params.num_workers": args.workers, "precision": args.precision,
        "base.verbose": False if args.quiet else None, "backend": args.backend,
        "fold_bn": False if args.no_fold_bn else None, "align": True if args.align else None,
        "largest_face": True if args.largest_face else None, "save_crops": args.save_crops,
        "annotate": args.annotate,
    })


def main(argv: Optional[List[str]] = None) -> int:
    """Run inference; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    setup_logging(cfg.base.verbose)

    from dataset.image_folder import find_images
    from utils.runtime import resolve_device, seed_everything
    from utils.scoring import QualityScorer

    from utils.io import check_output_dir

    check_output_dir(cfg.base.save_path, "base.save_path / --output")
    for folder, flag in ((cfg.save_crops, "--save-crops"), (cfg.annotate, "--annotate")):
        if folder:
            check_output_dir(folder, flag)
    seed_everything(cfg.base.seed)
    device = resolve_device(cfg.base.device)
    rel_paths = find_images(cfg.dataset.loc)
    scorer = QualityScorer.from_pretrained(cfg.model, cfg.weights_path, device=device, precision=cfg.precision,
                                           backend=cfg.backend, fold_bn=cfg.fold_bn)
    _logger.info("scoring %d %s in '%s' with %s on %s (%s, %s backend)", len(rel_paths),
                 "photos" if cfg.align else "images", cfg.dataset.loc, cfg.model, scorer.device, scorer.precision,
                 scorer.backend)
    if cfg.align:
        return _score_photos(cfg, rel_paths, scorer)
    params = cfg.dataloader.params
    if params.shuffle:
        _logger.info("dataloader.params.shuffle is ignored: images are scored in sorted path order")
    result = scorer.score_folder(cfg.dataset.loc, rel_paths, batch_size=params.batch_size,
                                 workers=params.num_workers, verbose=cfg.base.verbose, pin_memory=params.pin_memory,
                                 prefetch_factor=params.prefetch_factor, persistent_workers=params.persistent_workers)
    if not result.paths:
        raise DataError(f"none of the {len(rel_paths)} images in '{cfg.dataset.loc}' could be read "
                        f"(first: {result.skipped[0][0]}: {result.skipped[0][1]})")
    _write_scores(cfg, result.paths, result.scores)
    _summary(cfg, len(result.paths), [p for p, _ in result.skipped], result.seconds)
    return 0


def _write_scores(cfg: InferenceConfig, rel_paths: List[str], scores: List[float], extra: Sequence = ()) -> None:
    """The pickle and the CSV (and ``extra`` ``(path, writer)`` files), written as one set; non-finite scores are an
    error (nothing is replaced)."""
    import math

    from utils.io import csv_writer, pickle_writer, write_together

    bad = [p for p, q in zip(rel_paths, scores) if not math.isfinite(q)]
    if bad:
        raise DataError(f"{len(bad)} of {len(scores)} scores are NaN or infinite (e.g. {', '.join(bad[:3])}); the "
                        "weights or the precision overflow; nothing was written")
    # Keys as the official code writes them: os.path.join(dataset.loc, relative path).
    table: Dict[str, float] = {os.path.join(cfg.dataset.loc, p): q for p, q in zip(rel_paths, scores)}
    write_together([(os.path.join(cfg.base.save_path, SCORES_PICKLE), pickle_writer(table)),
                    (os.path.join(cfg.base.save_path, SCORES_CSV),
                     csv_writer(("path", "quality"), ((k, repr(v)) for k, v in table.items()))), *extra])


def _summary(cfg: InferenceConfig, scored: int, skipped: List[str], seconds: float, extra: str = "") -> None:
    rate = scored / seconds if seconds > 0 else float("nan")
    print(f"scored {scored}, skipped {len(skipped)}{extra}, {seconds:.1f} s, {rate:.1f} images/s; wrote "
          f"{os.path.join(cfg.base.save_path, SCORES_PICKLE)} and {SCORES_CSV}", file=sys.stderr)
    if skipped:
        print(f"skipped (unreadable): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)


def _score_photos(cfg: InferenceConfig, rel_paths: List[str], scorer) -> int:
    """--align: detect every face, align it, score it; one row per face in faces.csv."""
    import time

    from tqdm import tqdm

    from utils.faces import FaceDetector, annotate, load_photo
    from utils.io import atomic_open, csv_writer

    detector = FaceDetector("cuda" if scorer.device.type == "cuda" else "cpu", cfg.min_face_probability)
    rows, best, skipped, no_face = [], {}, [], []
    start = time.perf_counter()
    for rel in tqdm(rel_paths, unit="photo", disable=not cfg.base.verbose, dynamic_ncols=True):
        path = os.path.join(cfg.dataset.loc, rel)
        try:
            photo = load_photo(path)
        except Exception as exc:  # PIL raises many types for broken files
            _logger.warning("skipped '%s': %s: %s", path, type(exc).__name__, exc)
            skipped.append(rel)
            continue
        faces = detector.detect(photo)
        if cfg.largest_face:
            faces = faces[:1]
        if not faces:
            no_face.append(rel)
            continue
        crops = detector.crops(photo, faces)
        for face, quality in zip(faces, scorer.score_images(crops).tolist()):
            face.quality = quality
            rows.append([os.path.join(cfg.dataset.loc, rel), face.face, *[round(v, 2) for v in face.box],
                         *[round(float(v), 2) for v in face.landmarks.reshape(-1)], round(face.probability, 5),
                         repr(quality)])
        best[rel] = faces[0].quality
        stem = os.path.splitext(rel)[0]
        if cfg.save_crops:
            for face, crop in zip(faces, crops):
                target = os.path.join(cfg.save_crops, f"{stem}_face{face.face}.png")
                with atomic_open(target, "wb") as handle:
                    crop.save(handle, format="PNG")
        if cfg.annotate:
            target = os.path.join(cfg.annotate, f"{stem}.jpg")
            with atomic_open(target, "wb") as handle:
                annotate(photo, faces).save(handle, format="JPEG", quality=90)
    seconds = time.perf_counter() - start
    if not rows:
        raise DataError(f"no face found in any of the {len(rel_paths)} photos in '{cfg.dataset.loc}' "
                        f"({len(no_face)} without a face, {len(skipped)} unreadable)")
    header = ["path", "face", "x1", "y1", "x2", "y2", *[f"{p}_{c}" for p in ("left_eye", "right_eye", "nose",
              "mouth_left", "mouth_right") for c in ("x", "y")], "probability", "quality"]
    listing = ("w", lambda handle: handle.writelines(os.path.join(cfg.dataset.loc, rel) + "\n" for rel in no_face))
    # One score per photo (its largest face) in the official format, so evaluate.py and old scripts read it; the
    # four files are written as one set.
    kept = sorted(best)
    _write_scores(cfg, kept, [best[r] for r in kept], extra=[
        (os.path.join(cfg.base.save_path, "faces.csv"), csv_writer(header, rows)),
        (os.path.join(cfg.base.save_path, "no-face.txt"), listing)])
    _summary(cfg, len(rows), skipped, seconds, extra=f", photos without a face {len(no_face)}")
    if no_face:
        print(f"no face found in: {', '.join(no_face[:5])}{' ...' if len(no_face) > 5 else ''} "
              f"(listed in {os.path.join(cfg.base.save_path, 'no-face.txt')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "inference.py"))
