"""``extract_embeddings.py``'s work: teacher embeddings of every face crop in a folder."""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, Optional, Tuple

from utils.errors import DataError, RunError

__all__ = ["extract_embeddings"]

_logger = logging.getLogger(__name__)


def extract_embeddings(images: str, backbone: str, weights: str, output: str, device: str = "auto",
                       batch_size: Optional[int] = None, workers: Optional[int] = None, flip: bool = False,
                       quiet: bool = False) -> Dict[str, int]:
    """Embed every image below ``images`` with backbone ``backbone`` loaded from ``weights`` and write ``output``
    (official pickled dict, or ``.npz``); returns the counts."""
    import torch

    from dataset.formats import write_embeddings
    from dataset.image_folder import find_images
    from model.registry import build_backbone, load_backbone
    from dataset.folder_batches import map_folder
    from engine.scoring.scorer import default_batch_size
    from utils.io import check_output_dir
    from utils.runtime import default_workers, resolve_device

    build_backbone(backbone)  # unknown names fail before any file is read
    check_output_dir(os.path.dirname(os.path.abspath(output)), "--output")
    target = resolve_device(device)
    rel_paths = find_images(images, key="--images")
    net = load_backbone(backbone, weights).to(target).to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> Tuple[torch.Tensor]:
        with torch.inference_mode():
            feat = net(x)
            if flip:
                feat = (feat + net(torch.flip(x, dims=[3]))) / 2
        bad = int((~torch.isfinite(feat).all(dim=1)).sum())
        if bad:
            raise RunError(f"{bad} of the {len(feat)} embeddings of a batch are NaN or infinite: the backbone "
                           f"'{weights}' overflows (random or damaged weights?); nothing was written")
        return (feat,)

    _logger.info("embedding %d images in '%s' with %s on %s", len(rel_paths), images, backbone, target)
    result = map_folder(images, rel_paths, target, forward,
                        batch_size=batch_size or default_batch_size(target),
                        workers=default_workers(target) if workers is None else workers,
                        verbose=not quiet)
    if not result.paths:
        raise DataError(f"none of the {len(rel_paths)} images in '{images}' could be read")
    write_embeddings(output, result.paths, result.embeddings)
    print(f"embedded {len(result.paths)}, skipped {len(result.skipped)}, {result.seconds:.1f} s, "
          f"{result.images_per_second:.1f} images/s; wrote {output}", file=sys.stderr)
    return {"embedded": len(result.paths), "skipped": len(result.skipped)}
