"""Which checkpoint a scoring run loads: the file given, else ``weights/<model>.pth`` when it exists (in the current
folder, else in the repository), else the published file fetched by name into torch's cache (see
:mod:`utils.download` and the sources in the registry)."""
from __future__ import annotations

import os
from typing import Optional

from model.checkpoint import check_checkpoint
from model.registry import OFFICIAL_WEIGHTS_HELP, VARIANTS
from utils.download import fetch
from utils.errors import CheckpointError
from utils.paths import repo_path

__all__ = ["resolve_weights"]


def resolve_weights(model: str, weights: Optional[str] = None, backend: str = "torch", progress: bool = True) -> str:
    """The checkpoint of variant ``model`` to load (see the module's docstring): ``weights``, a file the user named,
    as it is; for an ONNX ``backend`` the published ONNX file where there is one. A fetched checkpoint is kept (and
    its SHA-256 recorded) only once it loads as ``model``'s, and a cached one is checked the same way before it is
    used (:func:`model.checkpoint.check_checkpoint`). Nothing given, nothing at the default path and nothing to
    fetch (or a failed fetch) is a :class:`CheckpointError`."""
    if weights:
        return weights
    default = repo_path(os.path.join("weights", f"{model}.pth"), shipped=True)
    if os.path.isfile(default):
        return default
    variant = VARIANTS[model]
    source = variant.onnx if backend != "torch" and variant.onnx is not None else variant.weights
    if source is None:
        raise CheckpointError(f"weights file '{default}' not found and {variant.title} has no published file to fetch; "
                              f"{OFFICIAL_WEIGHTS_HELP}; pass its path with --weights or the config key 'weights'")
    if source is variant.onnx:
        return fetch(source.url, source.name, f"{variant.title} ONNX model", sha256=source.sha256, size=source.size,
                     progress=progress)

    def check(path: str, label: str) -> None:
        check_checkpoint(path, model, label)

    return fetch(source.url, source.name, f"{variant.title} weights", sha256=source.sha256, size=source.size,
                 progress=progress, check=check)
