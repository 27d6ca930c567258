"""The shared preprocessing equals the official torchvision pipeline bit for bit."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import face_array, save_image
from PIL import Image

from dataset import load_face, normalize, official_transform, preprocess, preprocess_batch


@pytest.mark.parametrize("name,size,mode", [
    ("face.png", 112, "RGB"),
    ("big.jpg", 250, "RGB"),      # LFW-sized: goes through the antialiased bilinear resize
    ("small.PNG", 64, "RGB"),     # upsampling
    ("gray.png", 112, "L"),
    ("alpha.png", 130, "RGBA"),
    ("palette.bmp", 112, "P"),
])
def test_load_face_matches_official_pipeline(tmp_path, name: str, size: int, mode: str) -> None:
    path = os.path.join(str(tmp_path), name)
    save_image(path, seed=size, size=size, mode=mode)
    expected = official_transform()(Image.open(path).convert("RGB"))
    raw = load_face(path)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 112, 112)
    assert torch.equal(normalize(raw), expected)
    assert torch.equal(preprocess(Image.open(path)), expected)


def test_preprocess_batch_and_range() -> None:
    images = [Image.fromarray(face_array(i)) for i in range(3)]
    batch = preprocess_batch(images)
    assert batch.shape == (3, 3, 112, 112) and batch.dtype == torch.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert torch.equal(normalize(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


def test_channel_order_is_rgb(tmp_path) -> None:
    array = np.zeros((112, 112, 3), dtype=np.uint8)
    array[..., 0] = 255  # pure red
    path = str(tmp_path / "red.png")
    Image.fromarray(array).save(path)
    x = normalize(load_face(path))
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0) and torch.all(x[2] == -1.0)
