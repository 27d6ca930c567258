"""Raw photos to scored faces: MTCNN detection, five-point alignment to the ArcFace template, annotation.

MTCNN comes from ``facenet-pytorch==2.5.3`` (its weights ship inside the wheel; later releases pin an old torch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from dataset.alignment import align_face
from utils.errors import ConfigError

__all__ = ["FaceResult", "load_photo", "FaceDetector", "annotate"]

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
    """MTCNN face detector with landmarks; photos larger than ``max_side`` are scaled down for detection only.

    Args:
        device: Where MTCNN runs.
        min_probability: Faces below this detection probability are ignored.
        max_side: Longest side used for detection (crops are always taken from the full-resolution photo).
    """

    def __init__(self, device: str = "cpu", min_probability: float = 0.9, max_side: int = 1600) -> None:
        try:
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
