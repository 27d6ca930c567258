"""Data loading: the shared preprocessing, image-folder reading, official file formats and label preparation.

Submodules are imported on first use: one of them (``evaluate.py`` reads formats without torch) imports no other.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_EXTENSIONS": "dataset.image_folder", "FaceFolder": "dataset.image_folder",
    "collate_faces": "dataset.image_folder", "find_images": "dataset.image_folder",
    "INPUT_SIZE": "dataset.transforms", "MEAN": "dataset.transforms", "STD": "dataset.transforms",
    "load_face": "dataset.transforms", "normalize": "dataset.transforms", "official_transform": "dataset.transforms",
    "preprocess": "dataset.transforms", "preprocess_batch": "dataset.transforms",
    "resize_face": "dataset.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dataset' has no attribute '{name}'")
