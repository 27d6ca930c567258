"""``extract_embeddings.py``'s work: teacher embeddings of every face crop in a folder."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from dataset.folder_batches import map_folder
from dataset.formats import write_embeddings
from dataset.image_folder import find_images
from engine.scoring.scorer import folder_batching
from engine.scoring.weights import resolve_weights
from model.checkpoint import load_backbone
from model.registry import VARIANTS, backbone_names, get_variant, variant_names
from utils.config import check, check_batch, check_workers
from utils.errors import CheckpointError, DataError, RunError
from utils.io import check_output_dir
from utils.runtime import resolve_device

__all__ = ["EmbedConfig", "embedding_forward", "extract_embeddings"]

_logger = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """``extract_embeddings.py``'s settings (keys = the long flag names)."""

    images: Optional[str] = None       # folder of aligned 112x112 face crops (recursive)
    backbone: Optional[str] = None     # a registered backbone
    weights: Optional[str] = None      # its insightface checkpoint
    model: Optional[str] = None        # or a variant: its backbone, weights fetched by name unless given
    output: Optional[str] = None       # .pkl (official dict) or .npz
    flip: bool = False                 # average with the horizontally flipped image
    device: str = "auto"
    batch_size: Optional[int] = None   # null: per device
    workers: Optional[int] = None      # DataLoader workers; null: per device
    verbose: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "output"):
            check(getattr(self, name) is not None, f"'{name}' (--{name}) is required")
        if self.model is not None:
            check(self.backbone is None, "give 'backbone' (--backbone) or 'model' (--model), not both: a model names "
                  "its own backbone")
            check(self.model in variant_names(), f"'model' is '{self.model}'; choose one of: "
                  f"{', '.join(variant_names())}")
        else:
            for name in ("backbone", "weights"):
                check(getattr(self, name) is not None, f"'{name}' (--{name}) is required (or 'model' (--model): a "
                      "published variant's backbone)")
        check(self.output.lower().endswith((".pkl", ".npz")), f"'output' (--output) '{self.output}' must end with "
              ".pkl or .npz")
        check(self.backbone is None or self.backbone in backbone_names(), f"'backbone' is '{self.backbone}'; choose "
              f"one of: {', '.join(backbone_names())}")
        check_batch(self.batch_size, "batch_size")
        check_workers(self.workers, "workers")


def embedding_forward(net: torch.nn.Module, weights: str, flip: bool = False
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The embeddings of a backbone ``net`` (on its device, channels_last) as every embedding run computes them: a
    normalised ``(B, 3, 112, 112)`` batch -> ``(B, D)``, averaged with the flipped image with ``flip``; a NaN or
    infinite embedding is a :class:`RunError` naming ``weights``."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            feat = net(x)
            if flip:
                feat = (feat + net(torch.flip(x, dims=[3]))) / 2
        bad = int((~torch.isfinite(feat).all(dim=1)).sum())
        if bad:
            raise RunError(f"{bad} of the {len(feat)} embeddings of a batch are NaN or infinite: the backbone "
                           f"'{weights}' overflows (random or damaged weights?); nothing was written")
        return feat

    return forward


def extract_embeddings(cfg: EmbedConfig) -> Dict[str, int]:
    """Embed every image below ``cfg.images`` with backbone ``cfg.backbone`` loaded from ``cfg.weights`` (with
    ``cfg.model``: the backbone part of that variant's checkpoint, ``cfg.weights`` or the one ``inference.py`` would
    load, fetched by name) and write ``cfg.output`` (official pickled dict, or ``.npz``); returns the counts."""
    images, weights, output, flip = cfg.images, cfg.weights, cfg.output, cfg.flip
    backbone = cfg.backbone or get_variant(cfg.model).backbone
    check_output_dir(os.path.dirname(os.path.abspath(output)), "--output")
    if cfg.model is not None:
        variant = get_variant(cfg.model)
        if weights and not os.path.isfile(weights):
            fetch = ", or leave --weights out to fetch it" if variant.weights is not None else ""
            article = "an" if variant.title[0] in "aeiouAEIOU" else "a"  # eDifFIQA reads "ee-": an eDifFIQA(T)
            raise CheckpointError(f"weights file '{weights}' not found; pass {article} {variant.title} checkpoint "
                                  f"with --weights{fetch} (see README: Weights)")
        weights = resolve_weights(cfg.model, weights, progress=cfg.verbose)
    target = resolve_device(cfg.device)
    rel_paths = find_images(images, key="--images")
    if cfg.model is None:
        net = load_backbone(backbone, weights)
    else:  # a variant's checkpoint: its hints name variants and their weights, never --backbone (refused with it)
        title = get_variant(cfg.model).title

        def fix(held: str) -> str:
            others = [v.name for v in VARIANTS.values() if v.backbone == held]
            return (f"give --model {' or --model '.join(others)}, whose backbone it is, " if others else "") + \
                f"or leave --weights out to fetch {title}'s"

        net = load_backbone(backbone, weights, fix=fix, source=f"--model {cfg.model} takes {title}'s checkpoint")
    net = net.to(target).to(memory_format=torch.channels_last)

    embed = embedding_forward(net, weights, flip)

    def forward(x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (embed(x),)

    _logger.info("embedding %d images in '%s' with %s on %s", len(rel_paths), images, backbone, target)
    result = map_folder(images, rel_paths, target, forward, **folder_batching(target, "fp32", cfg.batch_size,
                                                                              cfg.workers), verbose=cfg.verbose)
    if not result.paths:
        raise DataError(f"none of the {len(rel_paths)} images in '{images}' could be read")
    write_embeddings(output, result.paths, result.embeddings)
    print(f"embedded {len(result.paths)}, skipped {len(result.skipped)}, {result.seconds:.1f} s, "
          f"{result.images_per_second:.1f} images/s; wrote {output}", file=sys.stderr)
    return {"embedded": len(result.paths), "skipped": len(result.skipped)}
