"""The one preprocessing of eDifFIQA, shared by inference, training, embedding extraction and export.

Official pipeline: PIL ``open`` -> ``convert("RGB")`` -> ``Resize([112, 112])`` (bilinear, antialias) ->
``ToTensor()`` -> ``Normalize(0.5, 0.5)``. It is split in two so that DataLoader workers ship ``uint8`` tensors (4x
less inter-process traffic) and the float conversion runs once per batch, on the device: :func:`load_face` gives
``(3, 112, 112)`` uint8, :func:`normalize` gives the official float values bit for bit.

torchvision is not needed to compute it: on a PIL image, ``Resize`` is PIL's own ``resize`` (:func:`resize_face`),
and loading torchvision (about a second, with ``torch._dynamo`` through ``torchvision.ops``) would cost more than a
small job scores in; :func:`official_transform` builds the torchvision pipeline itself, for tests and benchmarks.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["INPUT_SIZE", "MEAN", "STD", "official_transform", "resize_face", "to_uint8_tensor",
           "decode_face", "load_face", "read_face_into", "normalize", "preprocess", "preprocess_batch"]

INPUT_SIZE = (112, 112)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

PathLike = Union[str, os.PathLike]


def official_transform() -> Callable[[Image.Image], torch.Tensor]:
    """The torchvision pipeline of the official code (PIL image -> ``(3, 112, 112)`` float tensor), the reference the
    tests and benchmarks compare :func:`load_face` and :func:`normalize` with."""
    # Imported here, not at the top: the scoring path must not load torchvision (see the module's docstring).
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    return T.Compose([
        T.Resize(list(INPUT_SIZE), interpolation=InterpolationMode.BILINEAR, antialias=True),
        T.ToTensor(),
        T.Normalize(mean=list(MEAN), std=list(STD)),
    ])


def resize_face(img: Image.Image) -> Image.Image:
    """Resize an RGB PIL image to 112x112 exactly as ``T.Resize([112, 112])`` does; no-op at that size."""
    if img.size == (INPUT_SIZE[1], INPUT_SIZE[0]):
        return img
    # What torchvision 0.29 runs for a PIL image (transforms.functional.resize -> _functional_pil.resize): the same
    # size check, then img.resize((W, H), BILINEAR) with PIL's defaults (no box, no reducing_gap); PIL's bilinear
    # filter is always antialiased, so antialias=True changes nothing. Equal bit for bit (tests/test_transforms.py).
    return img.resize((INPUT_SIZE[1], INPUT_SIZE[0]), Image.Resampling.BILINEAR)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image ``(H, W)`` -> ``(3, H, W)`` uint8 tensor."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_face(path: PathLike) -> Image.Image:
    """Read an aligned face crop: file -> 112x112 RGB PIL image (decoded, file closed). The pixels every reader
    below gives: an RGB file is not copied again, other modes are converted, other sizes resized as officially."""
    with Image.open(path) as img:
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    return resize_face(rgb)


def load_face(path: PathLike) -> torch.Tensor:
    """Read an aligned face crop: file -> ``(3, 112, 112)`` uint8 RGB tensor."""
    return to_uint8_tensor(decode_face(path))


def read_face_into(path: PathLike, out: np.ndarray) -> None:
    """Read an aligned face crop into ``out``, a ``(112, 112, 3)`` uint8 (HWC) slot of a batch buffer: the pixels of
    :func:`load_face`, copied once."""
    out[...] = np.asarray(decode_face(path))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, 112, 112)`` -> float32 in [-1, 1], bit-identical to ``ToTensor`` + ``Normalize(0.5, 0.5)``."""
    # Same elementwise ops in the same order as torchvision: div(255), then sub(mean), div(std).
    return x.to(torch.float32).div_(255).sub_(MEAN[0]).div_(STD[0])


def preprocess(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode, any size) -> ``(3, 112, 112)`` float32 model input."""
    return normalize(to_uint8_tensor(resize_face(img.convert("RGB"))))


def preprocess_batch(images: Iterable[Image.Image]) -> torch.Tensor:
    """PIL images -> ``(B, 3, 112, 112)`` float32 model input."""
    return torch.stack([preprocess(img) for img in images])
