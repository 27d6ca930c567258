"""``inference.py``'s work: score a folder of aligned faces (or of photos, detecting and aligning every face) and
write ``quality-scores.pkl`` / ``.csv`` (and ``faces.csv`` / ``no-face.txt`` for photos) as one set."""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Sequence

from dataset.formats import SCORES_CSV, SCORES_PICKLE
from engine.scoring.config import InferenceConfig
from utils.errors import ConfigError, DataError

__all__ = ["score"]

_logger = logging.getLogger(__name__)


def score(cfg: InferenceConfig) -> Dict[str, int]:
    """Score ``cfg.dataset.loc`` (faces, or photos with ``cfg.align``) and write the outputs as one set.

    Faces are scored resumably and, under ``torchrun``, in shares: see :func:`_score_faces`.

    Returns:
        Counts: ``scored`` and ``skipped`` (and ``no_face`` for photos; ``left`` after a ``base.limit`` stop).
    """
    from dataset.image_folder import find_images
    from engine.scoring.scorer import QualityScorer
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
        rel_paths = find_images(cfg.dataset.loc)
        scorer = QualityScorer.from_pretrained(cfg.model, cfg.weights_path, device=device, precision=cfg.precision,
                                               backend=cfg.backend, fold_bn=cfg.fold_bn)
        _logger.info("scoring %d %s in '%s' with %s on %s (%s, %s backend)", len(rel_paths),
                     "photos" if cfg.align else "images", cfg.dataset.loc, cfg.model, scorer.device,
                     scorer.precision, scorer.backend)
        if cfg.align:
            return _score_photos(cfg, rel_paths, scorer)
        return _score_faces(cfg, rel_paths, scorer, info)
    finally:
        finish_distributed(info)


def _weights_digest(path: str) -> str:
    """SHA-256 of the checkpoint: scores of other weights must not be mixed into a folder's results."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _score_faces(cfg: InferenceConfig, rel_paths: List[str], scorer, info) -> Dict[str, int]:
    """Score this process's share of the images not scored yet, appending ``path,quality,error`` rows to its part
    file (fsync'ed every ``base.flush_every`` images, at batch ends); then the first process merges every part and
    writes ``quality-scores.pkl`` / ``.csv`` once, when no image is left.

    A rerun into the same folder continues where a kill (or ``base.limit``) stopped and refuses other settings.
    Flushes fall on batch boundaries, so a resumed run forms the same batches as an uninterrupted one.
    """
    import csv

    from engine.parts import check_settings, part_path, read_parts, read_scores, remove_parts, split_batches_for_rank
    from engine.scoring.scorer import default_batch_size
    from utils.io import TEXT_ERRORS

    out, root, params = cfg.base.save_path, cfg.dataset.loc, cfg.dataloader.params
    decode = None
    if cfg.gpu_decode:
        from engine.scoring.scorer import cuda_jpeg_decoder

        if scorer.device.type != "cuda" or scorer.backend != "torch":
            raise ConfigError("'gpu_decode' (--gpu-decode) needs a CUDA device and the torch backend")
        decode = cuda_jpeg_decoder(scorer.device)
    settings = {"model": cfg.model, "weights_sha256": _weights_digest(cfg.weights_path), "precision": scorer.precision,
                "backend": scorer.backend, "fold_bn": cfg.fold_bn}
    previous: Dict[str, float] = {}
    if check_settings(out, settings, "quality scores", "base.save_path (--output)", info.main):
        previous = read_scores(out, root)
    done_scores, done_skipped = read_parts(out)
    done = set(previous) | set(done_scores) | set(done_skipped)
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()  # every process has read the part files before any appends to them
    batch = params.batch_size or default_batch_size(scorer.device)
    mine = split_batches_for_rank([p for p in rel_paths if p not in done], info.rank, info.world, batch)
    if cfg.base.limit is not None:
        # In whole batches, so that the next run's batches are those of an uninterrupted run (a batch's shape can
        # change the last bits of its scores).
        mine = mine[:max(batch, cfg.base.limit - cfg.base.limit % batch)]
    counts = {"scored": 0, "skipped": 0}
    if done and info.main:
        _logger.info("%d image(s) already scored in '%s': only the others are scored", len(done), out)
    with open(part_path(out, info.rank, info.world), "a", encoding="utf-8", errors=TEXT_ERRORS,
              newline="") as handle:
        writer = csv.writer(handle)
        pending = [0]

        def on_batch(paths: List[str], outputs: List, skipped: List) -> None:
            for path, quality in zip(paths, outputs[0].tolist() if outputs else []):
                writer.writerow([path, repr(float(quality)), ""])
            for path, reason in skipped:
                writer.writerow([path, "", reason])
            counts["scored"] += len(paths)
            counts["skipped"] += len(skipped)
            pending[0] += len(paths) + len(skipped)
            if pending[0] >= cfg.base.flush_every:
                handle.flush()
                os.fsync(handle.fileno())
                pending[0] = 0

        seconds, newly_skipped = 0.0, []
        if mine:
            result = scorer.score_folder(root, mine, batch_size=batch, decode_jpegs=decode,
                                         workers=params.num_workers, verbose=cfg.base.verbose and info.main,
                                         pin_memory=params.pin_memory, prefetch_factor=params.prefetch_factor,
                                         persistent_workers=params.persistent_workers, on_batch=on_batch)
            seconds, newly_skipped = result.seconds, [p for p, _ in result.skipped]
        handle.flush()
        os.fsync(handle.fileno())
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()  # every part is complete before the first process merges them
    if not info.main:
        return counts
    scores, skipped = read_parts(out)
    scores = {**previous, **scores}
    left = [p for p in rel_paths if p not in scores and p not in skipped]
    if left:
        print(f"stopped with {len(left)} image(s) left (base.limit); run the same command to continue",
              file=sys.stderr)
        return {**counts, "left": len(left)}
    kept = [p for p in rel_paths if p in scores]
    if not kept:
        first = next(iter(skipped.items()))
        raise DataError(f"none of the {len(rel_paths)} images in '{root}' could be read (first: {first[0]}: "
                        f"{first[1]})")
    _write_scores(cfg, kept, [scores[p] for p in kept])
    remove_parts(out)
    _summary(cfg, counts["scored"], newly_skipped, seconds,
             extra=f" in this run ({len(kept)} scored in all)" if len(kept) != counts["scored"] else "")
    return counts


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


def _score_photos(cfg: InferenceConfig, rel_paths: List[str], scorer) -> Dict[str, int]:
    """--align: detect every face, align it, score it; one row per face in faces.csv."""
    import time

    from tqdm import tqdm

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
    return {"scored": len(rows), "skipped": len(skipped), "no_face": len(no_face)}
