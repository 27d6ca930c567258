"""BSRGAN's blind degradation model (Zhang et al., ICCV 2021) as DifFIQA's denoiser training uses it.

Follows ``utils_blindsr.degradation_bsrgan`` (scale 4, no ISP model, no final random crop) with the probabilities,
ranges and order rules of the original, made to run on current libraries: ``scipy.interpolate.interp2d`` (removed in
SciPy 1.14) is replaced by the equivalent bilinear ``RectBivariateSpline(kx=1, ky=1)``, ``scipy.finfo`` by
``numpy.finfo``, and the mirror-mode ``scipy.ndimage.convolve`` by the same convolution in OpenCV (``filter2D`` on the
flipped kernel with ``BORDER_REFLECT_101``; equal up to float32 rounding and many times faster). Every random draw
comes from one ``numpy.random.Generator`` passed in, so a seeded run is reproducible (the original draws from the
global ``random`` and ``numpy.random`` states).

Images are float32 ``(H, W, 3)`` RGB arrays in [0, 1].
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.linalg import orth

__all__ = ["fspecial_gaussian", "anisotropic_gaussian", "shift_pixel", "imresize_np", "convolve_mirror", "add_blur",
           "add_gaussian_noise", "add_jpeg_noise", "degradation_bsrgan", "degrade_face", "DEGRADE_INPUT_SIZE"]

#: Side length the official training resizes every face to before degrading it (output: a quarter of it).
DEGRADE_INPUT_SIZE = 512
_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)  # random.choice([1, 2, 3]) in the original


# ------------------------------------------------------------------------------------------------- kernels
def fspecial_gaussian(hsize: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', hsize, sigma)``: ``(hsize, hsize)`` float64 summing to 1."""
    sigma = max(float(sigma), 1e-12)  # sigma 0 (probability 0 in theory) would give 0/0
    siz = (hsize - 1.0) / 2.0
    x, y = np.meshgrid(np.arange(-siz, siz + 1), np.arange(-siz, siz + 1))
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(float).eps * h.max()] = 0
    total = h.sum()
    return h / total if total != 0 else h


def anisotropic_gaussian(ksize: int, theta: float, l1: float, l2: float) -> np.ndarray:
    """Gaussian kernel with eigenvalues ``l1, l2`` rotated by ``theta``: ``(ksize, ksize)`` float64 summing to 1.

    The original evaluates ``scipy.stats.multivariate_normal.pdf`` on the grid and normalises; the constant factor
    cancels, so the density's exponent is enough. Eigenvalues are floored at 1e-6 (the original raises on a
    singular covariance, which a draw of exactly 0 would give).
    """
    v = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.array([1.0, 0.0])
    V = np.array([[v[0], v[1]], [v[1], -v[0]]])
    D = np.diag([max(l1, 1e-6), max(l2, 1e-6)])
    sigma = V @ D @ np.linalg.inv(V)
    center = ksize / 2.0 + 0.5
    coords = np.arange(ksize) - center + 1
    cx, cy = np.meshgrid(coords, coords)  # k[y, x] at the point (cx, cy), as gm_blur_kernel
    pts = np.stack([cx, cy], axis=-1)
    inv = np.linalg.inv(sigma)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pts, inv, pts))
    return k / k.sum()


def shift_pixel(x: np.ndarray, sf: int, upper_left: bool = True) -> np.ndarray:
    """Shift a kernel by ``(sf - 1) / 2`` pixels with bilinear interpolation (the original's ``interp2d``)."""
    h, w = x.shape[:2]
    shift = (sf - 1) * 0.5
    xv, yv = np.arange(0, w, 1.0), np.arange(0, h, 1.0)
    x1, y1 = (xv + shift, yv + shift) if upper_left else (xv - shift, yv - shift)
    x1, y1 = np.clip(x1, 0, w - 1), np.clip(y1, 0, h - 1)
    spline = RectBivariateSpline(yv, xv, x, kx=1, ky=1)
    return spline(y1, x1)


def convolve_mirror(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.convolve(img, kernel[..., None], mode='mirror')`` per channel, computed by OpenCV."""
    flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
    out = cv2.filter2D(np.ascontiguousarray(img, dtype=np.float32), -1, flipped, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)


# ------------------------------------------------------------------------------------------------- MATLAB imresize
def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    return ((1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """``(out_len, in_len)`` weights of MATLAB's bicubic ``imresize`` along one axis, symmetric borders."""
    width = 4.0 / scale if (scale < 1 and antialias) else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based, as in MATLAB
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if (scale < 1 and antialias) else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    j = idx.astype(np.int64) - 1
    j = np.where(j < 0, -j - 1, j)
    j = np.where(j >= in_len, 2 * in_len - 1 - j, j)
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), j.ravel()), weights.ravel())
    return matrix


def imresize_np(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` (BSRGAN's ``imresize_np``).

    ``(H, W, C)`` -> ``(ceil(H * scale), ceil(W * scale), C)``, antialiased when shrinking, symmetric borders.
    """
    h, w = img.shape[:2]
    rows = _resize_matrix(h, int(math.ceil(h * scale)), scale, antialiasing)
    cols = _resize_matrix(w, int(math.ceil(w * scale)), scale, antialiasing)
    out = np.einsum("oh,hwc->owc", rows, img.astype(np.float64))
    out = np.einsum("pw,owc->opc", cols, out)
    return out.astype(img.dtype)


# ------------------------------------------------------------------------------------------------- degradations
def add_blur(img: np.ndarray, sf: int, rng: np.random.Generator) -> np.ndarray:
    """Anisotropic (p 0.5) or isotropic Gaussian blur, kernel size ``2 * U{2..11} + 3``."""
    wd2 = 4.0 + sf
    wd = 2.0 + 0.2 * sf
    if rng.random() < 0.5:
        l1 = wd2 * rng.random()
        l2 = wd2 * rng.random()
        k = anisotropic_gaussian(2 * int(rng.integers(2, 12)) + 3, rng.random() * np.pi, l1, l2)
    else:
        k = fspecial_gaussian(2 * int(rng.integers(2, 12)) + 3, wd * rng.random())
    return convolve_mirror(img, k)


def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, noise_level1: int = 2,
                       noise_level2: int = 25) -> np.ndarray:
    """Colour (p 0.4), grey (p 0.4) or channel-correlated (p 0.2) Gaussian noise of level ``U{2..25}/255``."""
    noise_level = int(rng.integers(noise_level1, noise_level2 + 1))
    rnum = rng.random()
    if rnum > 0.6:
        img = img + rng.normal(0, noise_level / 255.0, img.shape).astype(np.float32)
    elif rnum < 0.4:
        img = img + rng.normal(0, noise_level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        level = noise_level2 / 255.0
        d = np.diag(rng.random(3))
        u = orth(rng.random((3, 3)))
        cov = u.T @ d @ u
        img = img + rng.multivariate_normal([0, 0, 0], np.abs(level ** 2 * cov), img.shape[:2]).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.uint8((img.clip(0, 1) * 255.0).round())


def add_jpeg_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG round trip at quality ``U{30..95}`` (OpenCV codec, as the original)."""
    quality = int(rng.integers(30, 96))
    bgr = cv2.cvtColor(_to_uint8(img), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(np.float32(decoded / 255.0), cv2.COLOR_BGR2RGB)


def _resize(img: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    out = cv2.resize(img, (width, height), interpolation=interpolation)
    return out.reshape(height, width, -1) if img.ndim == 3 and out.ndim == 2 else out


def degradation_bsrgan(img: np.ndarray, rng: np.random.Generator, sf: int = 4) -> np.ndarray:
    """One BSRGAN degradation of ``img`` ``(H, W, 3)`` float32 in [0, 1]; returns ``(H/sf, W/sf, 3)`` in [0, 1].

    Order rules of the original: an optional x1/2 pre-downscale (p 0.25, then the remaining factor is 2), then a
    random permutation of blur, blur, downsample, final resize to ``1/sf`` of the size before that downsample (kept
    after the downsample), Gaussian noise, JPEG (p 0.9), camera noise (no ISP model: a no-op that still draws);
    then a final JPEG. No random crop.
    """
    jpeg_prob, scale2_prob = 0.9, 0.25  # isp_prob 0.25 is drawn against but there is no ISP model
    h1, w1 = img.shape[:2]
    img = img.copy()[:h1 - h1 % sf, :w1 - w1 % sf, ...]  # mod crop
    h, w = img.shape[:2]
    if sf == 4 and rng.random() < scale2_prob:
        if rng.random() < 0.5:
            img = _resize(img, int(1 / 2 * img.shape[1]), int(1 / 2 * img.shape[0]),
                          _INTERPOLATIONS[int(rng.integers(0, 3))])
        else:
            img = imresize_np(img, 1 / 2, True)
        img = np.clip(img, 0.0, 1.0)
        sf = 2
    order = [int(i) for i in rng.permutation(7)]
    idx1, idx2 = order.index(2), order.index(3)
    if idx1 > idx2:  # the final resize (3) must come after the random downsample (2)
        order[idx1], order[idx2] = order[idx2], order[idx1]
    a, b = img.shape[1], img.shape[0]
    for step in order:
        if step in (0, 1):
            img = add_blur(img, sf, rng)
        elif step == 2:
            a, b = img.shape[1], img.shape[0]
            if rng.random() < 0.75:
                sf1 = rng.uniform(1, 2 * sf)
                img = _resize(img, int(1 / sf1 * img.shape[1]), int(1 / sf1 * img.shape[0]),
                              _INTERPOLATIONS[int(rng.integers(0, 3))])
            else:
                k = fspecial_gaussian(25, rng.uniform(0.1, 0.6 * sf))
                k_shifted = shift_pixel(k, sf)
                k_shifted = k_shifted / k_shifted.sum()
                img = convolve_mirror(img, k_shifted)
                img = img[0::sf, 0::sf, ...]
            img = np.clip(img, 0.0, 1.0)
        elif step == 3:
            img = _resize(img, int(1 / sf * a), int(1 / sf * b), _INTERPOLATIONS[int(rng.integers(0, 3))])
            img = np.clip(img, 0.0, 1.0)
        elif step == 4:
            img = add_gaussian_noise(img, rng, 2, 25)
        elif step == 5:
            if rng.random() < jpeg_prob:
                img = add_jpeg_noise(img, rng)
        elif step == 6:
            rng.random()  # the camera-noise draw of the original (isp_model is None, so nothing is applied)
    img = add_jpeg_noise(img, rng)
    return np.ascontiguousarray(img, dtype=np.float32)


def degrade_face(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official per-image degradation: uint8 RGB ``(H, W, 3)`` -> 512x512 (linear) -> BSRGAN x4 -> uint8 128x128."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
    big = cv2.resize(image, (DEGRADE_INPUT_SIZE, DEGRADE_INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    out = degradation_bsrgan(np.float32(big / 255.0), rng, sf=4)
    return _to_uint8(out)
