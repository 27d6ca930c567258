"""Building the registry's backbones and variants, randomly initialised (loading their checkpoints:
:mod:`model.checkpoint`)."""
from __future__ import annotations

import importlib
from typing import Callable, Dict

from torch import nn

from model.diffiqa_r import DifFIQAR
from model.ediffiqa import EDifFIQA
from model.mlp import MLP
from model.registry import BACKBONES, backbone_names, get_variant
from utils.errors import ConfigError

__all__ = ["WRAPPERS", "build_backbone", "build_variant", "build_model"]


def build_backbone(name: str) -> nn.Module:
    """Build a randomly initialised backbone by name (see :data:`model.registry.BACKBONES`)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose one of: {', '.join(backbone_names())}")
    module, function = BACKBONES[name].builder.split(":")
    return getattr(importlib.import_module(module), function)()


#: The model each kind of variant (:data:`model.registry.KINDS`) builds around its backbone: eDifFIQA's MLP quality
#: head, DifFIQA(R)'s linear layer.
WRAPPERS: Dict[str, Callable[[nn.Module], nn.Module]] = {
    "ediffiqa": lambda backbone: EDifFIQA(backbone, MLP(512, 1024, 1)), "regression": DifFIQAR}


def build_variant(backbone: str, kind: str) -> nn.Module:
    """A randomly initialised model of ``kind`` on ``backbone``: the backbone first, then the head, as the official
    code builds it (so the same seed gives the same weights)."""
    return WRAPPERS[kind](build_backbone(backbone))


def build_model(name: str, return_feat: bool = False) -> nn.Module:
    """Build a randomly initialised variant (``ediffiqaL/M/S/T`` an :class:`EDifFIQA`, ``diffiqaR`` a
    :class:`DifFIQAR`); both have ``backbone`` and ``embed_and_score``."""
    variant = get_variant(name)
    model = build_variant(variant.backbone, variant.kind)
    model.return_feat = bool(return_feat)
    return model
