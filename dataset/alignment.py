"""Five-point face alignment to the standard ArcFace 112x112 template (NumPy + PIL only).

eDifFIQA expects crops aligned this way: its training data was aligned with RetinaFace landmarks and this template,
and the OpenCV Zoo port does the same with YuNet landmarks.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["ARCFACE_TEMPLATE", "estimate_similarity", "align_face"]

#: Left eye, right eye, nose tip, left and right mouth corner in a 112x112 crop (insightface ``arcface_dst``).
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) taking ``(N, 2)`` points ``src`` to ``dst``: the ``(2, 3)``
    matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]`` (as ``skimage.transform.SimilarityTransform``)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """Warp ``image`` so that its five ``landmarks`` ``(5, 2)`` land on the ArcFace template; returns a size x size
    crop."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    matrix = estimate_similarity(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template)
    # PIL wants the inverse map (output pixel -> input pixel).
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2].reshape(-1)
    return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, tuple(inverse),
                                          resample=Image.Resampling.BILINEAR)
