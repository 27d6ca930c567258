"""Raw photos to scored faces (``inference.py --align``): MTCNN detection, five-point alignment to the ArcFace
template, scoring, annotation; the scores are written as the score folder's set (:func:`engine.resumable.write_scores`)
with ``faces.csv`` (one row per face) and ``no-face.txt``. The run is not resumable.

MTCNN comes from ``facenet-pytorch==2.5.3`` (its weights ship inside the wheel; later releases pin an old torch).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from dataset.alignment import align_face
from dataset.formats import format_score
from engine.resumable import ScoreSheet, check_finite, print_summary, write_scores
from engine.scoring.config import InferenceConfig
from engine.scoring.scorer import QualityScorer
from utils.config import to_dict
from utils.errors import ConfigError, DataError, first_line
from utils.io import atomic_open, csv_writer

__all__ = ["FaceResult", "load_photo", "FaceDetector", "annotate", "score_photos", "FACES_CSV", "NO_FACE"]

#: Beside the scores: one row per face, and the photos where no face was found.
FACES_CSV = "faces.csv"
NO_FACE = "no-face.txt"
_FACE_COLUMNS = ["path", "face", "x1", "y1", "x2", "y2", *[f"{p}_{c}" for p in ("left_eye", "right_eye", "nose",
                 "mouth_left", "mouth_right") for c in ("x", "y")], "probability", "quality"]

_logger = logging.getLogger(__name__)


@dataclass
class FaceResult:
    """One detected face: ``box`` (x1, y1, x2, y2) and ``landmarks`` (5, 2) in photo pixels."""

    face: int
    box: Tuple[float, float, float, float]
    landmarks: np.ndarray
    probability: float
    quality: float = float("nan")

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def load_photo(path: str) -> Image.Image:
    """Open a photo as 8-bit RGB: EXIF orientation applied; 16-bit and float images rescaled, not clipped."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            array = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
            img = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
        return img.convert("RGB")


class FaceDetector:
    """MTCNN face detector with landmarks, keeping faces of at least ``min_probability``; photos larger than
    ``max_side`` are scaled down for detection only (crops are always taken from the full-resolution photo)."""

    def __init__(self, device: str = "cpu", min_probability: float = 0.9, max_side: int = 1600) -> None:
        try:  # optional and heavy: imported only when photos are scored
            from facenet_pytorch import MTCNN
        except ImportError:
            raise ConfigError("--align needs facenet-pytorch: pip install facenet-pytorch==2.5.3 requests") from None
        self.mtcnn = MTCNN(keep_all=True, device=device)
        self.min_probability = min_probability
        self.max_side = max_side

    def detect(self, photo: Image.Image) -> List[FaceResult]:
        """Faces of an RGB photo, largest first."""
        scale = min(1.0, self.max_side / max(photo.size))
        small = photo if scale == 1.0 else photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                                        Image.Resampling.BILINEAR)
        boxes, probs, points = self.mtcnn.detect(small, landmarks=True)
        if boxes is None:
            return []
        # facenet-pytorch 2.5.3 returns object arrays under NumPy 2.
        boxes = np.asarray(boxes.tolist(), dtype=np.float64) / scale
        points = np.asarray(points.tolist(), dtype=np.float64) / scale
        probs = np.asarray(probs.tolist(), dtype=np.float64)
        faces = [FaceResult(0, tuple(float(v) for v in b), p, float(q)) for b, p, q in zip(boxes, points, probs)
                 if q >= self.min_probability]
        faces.sort(key=lambda f: -f.area)
        for i, face in enumerate(faces):
            face.face = i
        return faces

    @staticmethod
    def crops(photo: Image.Image, faces: Sequence[FaceResult]) -> List[Image.Image]:
        """Aligned 112x112 crops of ``faces``, cut from the full-resolution photo."""
        return [align_face(photo, f.landmarks) for f in faces]

    def first_face(self, path: str) -> np.ndarray:
        """The aligned crop of the photo's first (largest) face, detected again: a score sheet's tile."""
        photo = load_photo(path)
        return np.asarray(self.crops(photo, self.detect(photo)[:1])[0])


def annotate(photo: Image.Image, faces: Sequence[FaceResult], low: float = 0.3, high: float = 0.7) -> Image.Image:
    """A copy of the photo with each face's box, landmarks and quality (red below ``low``, green above ``high``)."""
    out = photo.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    for face in faces:
        q = face.quality
        colour = (220, 40, 40) if q < low else (40, 180, 60) if q > high else (240, 170, 20)
        draw.rectangle(face.box, outline=colour, width=width)
        for x, y in face.landmarks:
            draw.ellipse([x - width, y - width, x + width, y + width], fill=colour)
        label = f"#{face.face} q={q:.3f}"
        x1, y1 = face.box[0], max(0.0, face.box[1] - 12 * width)
        draw.rectangle([x1, y1, x1 + 7 * width * len(label) // 2 + 4, y1 + 11 * width], fill=colour)
        draw.text((x1 + 2, y1), label, fill=(255, 255, 255))
    return out


def score_photos(cfg: InferenceConfig, rel_paths: List[str], scorer: QualityScorer,
                 config: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    """Detect every face of the photos ``rel_paths`` (below ``cfg.dataset.loc``), align and score it; write the
    scores (one per photo, its largest face, in the official format, so that ``evaluate.py`` reads them), one row per
    face in ``faces.csv`` and the photos without a face in ``no-face.txt`` as one set. Returns the counts:
    ``scored`` (faces), ``skipped`` (unreadable photos) and ``no_face``; ``config``: the resolved config for the
    sidecar (default: ``cfg`` as given). No face in any photo is a :class:`DataError`, a NaN or infinite score a
    :class:`RunError` (nothing is written)."""
    loc, out = cfg.dataset.loc, cfg.base.save_path
    detector = FaceDetector("cuda" if scorer.device.type == "cuda" else "cpu", cfg.min_face_probability)
    rows, best, skipped, no_face = [], {}, {}, []
    start = time.perf_counter()
    for rel in tqdm(rel_paths, unit="photo", disable=not cfg.base.verbose, dynamic_ncols=True):
        path = os.path.join(loc, rel)
        try:
            photo = load_photo(path)
        except Exception as exc:  # PIL raises many types for broken files
            _logger.warning("skipped '%s': %s: %s", path, type(exc).__name__, exc)
            skipped[rel] = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        faces = detector.detect(photo)
        if cfg.largest_face:
            faces = faces[:1]
        if not faces:
            no_face.append(rel)
            continue
        crops = detector.crops(photo, faces)
        qualities = scorer.score_images(crops).tolist()
        check_finite([f"{rel} (face {face.face})" for face in faces], qualities, "quality scores", f" of '{path}'",
                     "nothing was written")
        for face, quality in zip(faces, qualities):
            face.quality = quality
            rows.append([path, face.face, *[round(v, 2) for v in face.box],
                         *[round(float(v), 2) for v in face.landmarks.reshape(-1)], round(face.probability, 5),
                         format_score(quality)])
        best[rel] = faces[0].quality
        stem = os.path.splitext(rel)[0]
        if cfg.save_crops:
            for face, crop in zip(faces, crops):
                with atomic_open(os.path.join(cfg.save_crops, f"{stem}_face{face.face}.png"), "wb") as handle:
                    crop.save(handle, format="PNG")
        if cfg.annotate:
            with atomic_open(os.path.join(cfg.annotate, f"{stem}.jpg"), "wb") as handle:
                annotate(photo, faces).save(handle, format="JPEG", quality=90)
    seconds = time.perf_counter() - start
    if not rows:
        raise DataError(f"no face found in any of the {len(rel_paths)} photos in '{loc}' "
                        f"({len(no_face)} without a face, {len(skipped)} unreadable)")
    # Keys as the official code writes them: os.path.join(dataset.loc, relative path).
    table = {os.path.join(loc, rel): best[rel] for rel in sorted(best)}
    record = {"settings": None, "config": to_dict(cfg) if config is None else config,
              "run": {"images": len(rel_paths), "scored": len(table), "faces": len(rows), "skipped": skipped,
                      "no_face": len(no_face), "processes": 1, "device": str(scorer.device),
                      "seconds": round(seconds, 2)}}
    no_face_lines = "".join(os.path.join(loc, rel) + "\n" for rel in no_face)
    written = write_scores(out, table, record, "quality scores", loc,
                           ScoreSheet(cfg.figure_tiles, "eDifFIQA quality scores", cfg.model, detector.first_face),
                           extra=[(os.path.join(out, FACES_CSV), csv_writer(_FACE_COLUMNS, rows)),
                                  (os.path.join(out, NO_FACE), ("w", lambda handle: handle.write(no_face_lines)))])
    print_summary(written, len(rows), len(skipped), seconds, list(skipped),
                  extra=f", photos without a face {len(no_face)}")
    if no_face:
        print(f"no face found in: {', '.join(no_face[:5])}{' ...' if len(no_face) > 5 else ''} "
              f"(listed in {os.path.join(out, NO_FACE)})", file=sys.stderr)
    return {"scored": len(rows), "skipped": len(skipped), "no_face": len(no_face)}
