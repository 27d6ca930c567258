"""``inference.py``'s work: score a folder of aligned faces (or of photos, detecting and aligning every face) and
write ``quality-scores.pkl`` / ``.csv`` (and ``faces.csv`` / ``no-face.txt`` for photos) as one set."""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

from dataset.formats import SCORES_CSV, SCORES_PICKLE
from engine.scoring.config import InferenceConfig
from utils.errors import ConfigError, DataError

__all__ = ["score"]

_logger = logging.getLogger(__name__)

#: The resolved config and the picture of the scores, written beside them.
SCORES_CONFIG = "quality-scores.config.json"
SCORES_FIGURE = "quality-scores.png"


def score(cfg: InferenceConfig, fresh: bool = False, command: Sequence[str] = ()) -> Dict[str, int]:
    """Score ``cfg.dataset.loc`` (faces, or photos with ``cfg.align``) and write the outputs as one set.

    Faces are scored resumably and, under ``torchrun``, in shares: see :func:`_score_faces`. ``fresh`` removes the
    files of an earlier run in the output folder first (its finished scores too); ``command`` (``[program,
    *arguments]``) is named after a ``base.limit`` stop.

    Returns:
        Counts: ``scored`` and ``skipped`` (and ``no_face`` for photos; ``left`` after a ``base.limit`` stop).
    """
    from dataset.image_folder import list_images
    from engine.scoring.backends import resolve_backend
    from engine.scoring.scorer import QualityScorer
    from engine.scoring.weights import resolve_weights
    from utils.distributed import finish_distributed, init_distributed
    from utils.io import check_output_dir
    from utils.runtime import seed_everything

    check_output_dir(cfg.base.save_path, "base.save_path / --output")
    for folder, flag in ((cfg.save_crops, "--save-crops"), (cfg.annotate, "--annotate")):
        if folder:
            check_output_dir(folder, flag)
    seed_everything(cfg.base.seed)
    info, device = init_distributed(cfg.base.device)
    try:
        if info.enabled and cfg.align:
            raise ConfigError("photos (align) are scored by one process; run inference.py --align without torchrun")
        listing = list_images(cfg.dataset.loc)
        rel_paths = listing.paths
        backend = resolve_backend(cfg.model, cfg.backend, device, cfg.precision)
        weights = resolve_weights(cfg.model, cfg.weights, backend, progress=cfg.base.verbose and info.main)
        scorer = QualityScorer.from_pretrained(cfg.model, weights, device=device, precision=cfg.precision,
                                               backend=backend, fold_bn=cfg.fold_bn)
        _logger.info("scoring %d %s in '%s' with %s on %s (%s, %s backend)", len(rel_paths),
                     "photos" if cfg.align else "images", cfg.dataset.loc, cfg.model, scorer.device,
                     scorer.precision, scorer.backend)
        if cfg.align:
            return _score_photos(cfg, rel_paths, scorer)
        return _score_faces(cfg, rel_paths, listing.stats, scorer, info, fresh, weights, command)
    finally:
        finish_distributed(info)


def _score_faces(cfg: InferenceConfig, rel_paths: List[str], stats, scorer, info,
                 fresh: bool, weights: str, command: Sequence[str]) -> Dict[str, int]:
    """Score the folder resumably and, under ``torchrun``, in shares (see :mod:`engine.resumable`): a rerun into the
    same folder continues where a kill (or ``base.limit``) stopped, byte for byte, and refuses other settings."""
    import torch

    from dataset.folder_batches import cuda_jpeg_decoder, iterate_folder
    from engine.resumable import BatchResult, FolderJob, run_folder
    from engine.scoring.scorer import default_batch_size
    from utils.io import sha256_of

    params = cfg.dataloader.params
    decode = None
    if cfg.gpu_decode:
        if scorer.device.type != "cuda" or scorer.backend != "torch":
            raise ConfigError("'gpu_decode' (--gpu-decode) needs a CUDA device and the torch backend")
        decode = cuda_jpeg_decoder(scorer.device)
    batch = params.batch_size or default_batch_size(scorer.device, scorer.precision)
    settings = {"model": cfg.model, "weights_sha256": sha256_of(weights), "precision": scorer.precision,
                "backend": scorer.backend, "fold_bn": cfg.fold_bn, "gpu_decode": cfg.gpu_decode,
                # the thread count changes the last bits of CPU results
                "threads": torch.get_num_threads() if scorer.device.type == "cpu" else None}
    job = FolderJob(root=cfg.dataset.loc, rel_paths=rel_paths, stats=stats, out=cfg.base.save_path, batch_size=batch,
                    settings=settings, what="quality scores", out_key="base.save_path (--output)", keys="joined",
                    limit=cfg.base.limit, flush_every=cfg.base.flush_every, fresh=fresh,
                    verbose=cfg.base.verbose,
                    extra_outputs=lambda table, skipped, summary: [_config_file(cfg), *_figure_file(cfg, table)],
                    extra_names=(SCORES_CONFIG, SCORES_FIGURE), command=command)
    workers = params.num_workers if params.num_workers is not None else scorer.default_workers()

    def score_batches(paths: List[str], batch_size: int):
        for indices, x, bad in iterate_folder(cfg.dataset.loc, paths, scorer.device, batch_size, workers,
                                              pin_memory=params.pin_memory, prefetch_factor=params.prefetch_factor,
                                              persistent_workers=params.persistent_workers,
                                              channels_last=scorer.channels_last, decode_jpegs=decode):
            values = scorer(x).tolist() if len(indices) else []
            yield BatchResult([paths[i] for i in indices.tolist()], values, [(paths[i], r) for i, r in bad])

    summary = run_folder(job, score_batches, info)
    if info.main:
        if summary.complete:
            extra = f" in this run ({summary.total} scored in all)" if summary.total != summary.scored else ""
            _summary(cfg, summary.scored, summary.skipped_names, summary.seconds, extra=extra,
                     skipped_now=summary.skipped)
        else:
            print(summary.stopped, file=sys.stderr)
    return {"scored": summary.scored, "skipped": summary.skipped, **({"left": summary.left} if summary.left else {})}


def _config_file(cfg: InferenceConfig):
    """``quality-scores.config.json``: the resolved config, written with the scores (as training writes its own)."""
    from utils.config import to_dict
    from utils.io import json_writer

    return os.path.join(cfg.base.save_path, SCORES_CONFIG), json_writer(to_dict(cfg))


def _figure_file(cfg: InferenceConfig, table: Dict[str, float], load=None) -> List:
    """``[(quality-scores.png, writer)]``: the score sheet (``figure_tiles`` lowest and highest faces); empty when
    turned off (``figure_tiles: 0``) or when it cannot be drawn (said in a warning; the scores are written anyway).
    ``load`` reads the face of a key (default: the image file the key names)."""
    if not cfg.figure_tiles:
        return []
    import numpy as np

    from dataset.transforms import decode_face
    from engine.figures import figure_file, score_sheet, sheet_title

    load = load or (lambda key: np.asarray(decode_face(key)))
    title = sheet_title("eDifFIQA quality scores", len(table), cfg.dataset.loc, cfg.model)
    return figure_file(os.path.join(cfg.base.save_path, SCORES_FIGURE),
                       lambda: score_sheet(table, load, cfg.figure_tiles, title), "the scores are written without it")


def _write_scores(cfg: InferenceConfig, table: Dict[str, float], extra: Sequence = ()) -> None:
    """The pickle and the CSV of ``table`` (``{key: score}``) and ``extra`` ``(path, writer)`` files, written as one
    set; non-finite scores are an error (nothing is replaced)."""
    import math

    from dataset.formats import scores_writers
    from utils.io import write_together

    bad = [k for k, q in table.items() if not math.isfinite(q)]
    if bad:
        raise DataError(f"{len(bad)} of {len(table)} scores are NaN or infinite (e.g. {', '.join(bad[:3])}); the "
                        "weights or the precision overflow; nothing was written")
    write_together([*scores_writers(cfg.base.save_path, table), _config_file(cfg), *extra])


def _summary(cfg: InferenceConfig, scored: int, skipped: List[str], seconds: float, extra: str = "",
             skipped_now: Optional[int] = None) -> None:
    rate = scored / seconds if seconds > 0 else float("nan")
    print(f"scored {scored}, skipped {len(skipped) if skipped_now is None else skipped_now}{extra}, {seconds:.1f} s, "
          f"{rate:.1f} images/s; wrote {os.path.join(cfg.base.save_path, SCORES_PICKLE)} and {SCORES_CSV}",
          file=sys.stderr)
    if skipped:
        print(f"skipped (unreadable): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)


def _score_photos(cfg: InferenceConfig, rel_paths: List[str], scorer) -> Dict[str, int]:
    """--align: detect every face, align it, score it; one row per face in faces.csv."""
    import time

    from tqdm import tqdm

    from dataset.formats import format_score
    from engine.scoring.photos import FaceDetector, annotate, load_photo
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
                         format_score(quality)])
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

    def aligned_face(key: str):
        """The tile of a photo: its first face again, detected and aligned (only the tiles shown are re-read)."""
        import numpy as np

        photo = load_photo(key)
        return np.asarray(detector.crops(photo, detector.detect(photo)[:1])[0])

    # Keys as the official code writes them: os.path.join(dataset.loc, relative path).
    table = {os.path.join(cfg.dataset.loc, r): best[r] for r in kept}
    _write_scores(cfg, table, extra=[
        (os.path.join(cfg.base.save_path, "faces.csv"), csv_writer(header, rows)),
        (os.path.join(cfg.base.save_path, "no-face.txt"), listing), *_figure_file(cfg, table, aligned_face)])
    _summary(cfg, len(rows), skipped, seconds, extra=f", photos without a face {len(no_face)}")
    if no_face:
        print(f"no face found in: {', '.join(no_face[:5])}{' ...' if len(no_face) > 5 else ''} "
              f"(listed in {os.path.join(cfg.base.save_path, 'no-face.txt')})", file=sys.stderr)
    return {"scored": len(rows), "skipped": len(skipped), "no_face": len(no_face)}
