"""Synthetic face-like images for tests and benchmarks: smooth random RGB pictures that compress like photos."""
from __future__ import annotations

import io
import os
import pickle
from typing import List

import numpy as np
from PIL import Image

__all__ = ["face_array", "save_image", "verification_bin"]


def face_array(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random ``(size, size, 3)`` uint8 image (compresses like a photo, unlike white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, size=(size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def save_image(path: str, seed: int, size: int = 112, mode: str = "RGB") -> None:
    """Write :func:`face_array` to ``path`` (JPEG for ``.jpg``/``.jpeg``, else by extension), folders created."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(face_array(seed, size))
    if mode != "RGB":
        img = img.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(os.path.splitext(path)[1].lower())
    img.save(path, format=fmt) if fmt else img.save(path)


def verification_bin(path: str, pairs: int, seed: int = 0) -> List[bool]:
    """Write an insightface verification file (a pickle of ``(JPEG bytes of 2 * pairs images, issame)``, protocol 2
    as the published files, comparison ``p`` being images ``2p`` and ``2p + 1``): even comparisons mated (a face and
    a copy blended with another face by a random share, so that some look like two faces), odd ones two faces;
    returns ``issame``."""
    rng = np.random.default_rng(seed)
    encoded, issame = [], []
    for p in range(pairs):
        a = face_array(seed * 100003 + 2 * p)
        mated = p % 2 == 0
        b = face_array(seed * 100003 + 2 * p + 1)
        if mated:
            share = rng.uniform(0.1, 0.9)
            b = np.round((1 - share) * a + share * b).astype(np.uint8)
        for image in (a, b):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=95)
            encoded.append(buffer.getvalue())
        issame.append(mated)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump((encoded, issame), handle, protocol=2)
    return issame
