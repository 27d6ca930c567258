"""eDifFIQA models: backbones, the quality head, the wrapper, the variant registry, building and checkpoints."""
from __future__ import annotations

import importlib
from typing import Any

#: Where each exported name lives. They are imported on first use, on purpose: importing the package (which every
#: ``import model.registry`` does) must not import torch, so that the scripts' ``--help`` is quick.
_EXPORTS = {
    "EDifFIQA": "model.ediffiqa", "MLP": "model.mlp", "IResNet": "model.iresnet", "iresnet18": "model.iresnet",
    "iresnet34": "model.iresnet", "iresnet50": "model.iresnet", "iresnet100": "model.iresnet",
    "iresnet200": "model.iresnet", "MobileFaceNet": "model.mobilefacenet", "mobilefacenet": "model.mobilefacenet",
    "BACKBONES": "model.registry", "VARIANTS": "model.registry", "Variant": "model.registry",
    "build_backbone": "model.build", "build_model": "model.build", "create_model": "model.checkpoint",
    "identify_variant": "model.checkpoint", "load_weights": "model.checkpoint", "read_state_dict": "model.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
