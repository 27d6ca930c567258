"""``inference.py``'s work: score a folder of aligned faces through the score-folder driver (:mod:`engine.resumable`),
or a folder of photos, detecting and aligning every face (:mod:`engine.scoring.photos`)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Sequence

import torch

from dataset.folder_batches import cuda_jpeg_decoder, iterate_folder, pins_memory
from dataset.image_folder import ImageListing, list_images
from engine.resumable import BatchResult, FolderJob, ScoreSheet, run_folder
from engine.scoring.backends import resolve_backend
from engine.scoring.config import InferenceConfig
from engine.scoring.photos import score_photos
from engine.scoring.scorer import QualityScorer, folder_batching
from engine.scoring.weights import resolve_weights
from utils.config import to_dict
from utils.distributed import DistInfo, finish_distributed, init_distributed
from utils.errors import ConfigError
from utils.io import check_output_dir, sha256_of
from utils.runtime import seed_everything

__all__ = ["score", "resolved_config"]

_logger = logging.getLogger(__name__)


def score(cfg: InferenceConfig, fresh: bool = False, command: Sequence[str] = ()) -> Dict[str, int]:
    """Score ``cfg.dataset.loc`` (faces, or photos with ``cfg.align``) and write the outputs as one set; ``fresh``
    and ``command`` as :class:`engine.resumable.FolderJob` takes them. Returns the counts: ``scored`` and ``skipped``
    (and ``no_face`` for photos; ``left`` after a ``base.limit`` stop)."""
    check_output_dir(cfg.base.save_path, "base.save_path / --output")
    for folder, flag in ((cfg.save_crops, "--save-crops"), (cfg.annotate, "--annotate")):
        if folder:
            check_output_dir(folder, flag)
    seed_everything(cfg.base.seed)
    info, device = init_distributed(cfg.base.device)
    try:
        if info.enabled and cfg.align:
            raise ConfigError("photos (align) are scored by one process; run inference.py --align without torchrun")
        listing = list_images(cfg.dataset.loc)
        backend = resolve_backend(cfg.model, cfg.backend, device, cfg.precision)
        weights = resolve_weights(cfg.model, cfg.weights, backend, progress=cfg.base.verbose and info.main)
        scorer = QualityScorer.from_pretrained(cfg.model, weights, device=device, precision=cfg.precision,
                                               backend=backend, fold_bn=cfg.fold_bn)
        _logger.info("scoring %d %s in '%s' with %s on %s (%s, %s backend)", len(listing.paths),
                     "photos" if cfg.align else "images", cfg.dataset.loc, cfg.model, scorer.device,
                     scorer.precision, scorer.backend)
        if cfg.align:
            return score_photos(cfg, listing.paths, scorer, resolved_config(cfg, scorer, weights, pin_memory=False))
        return _score_faces(cfg, listing, scorer, info, fresh, weights, command)
    finally:
        finish_distributed(info)


def resolved_config(cfg: InferenceConfig, scorer: QualityScorer, weights: str, **loader: Any) -> Dict[str, Any]:
    """The config as this run used it, for the sidecar: the device, precision, backend and weights file chosen, and
    ``loader`` (the batch size and workers, where the config may leave them to the run, and whether host memory was
    pinned) in ``dataloader.params``."""
    out = to_dict(cfg)
    out["base"]["device"] = str(scorer.device)
    out["dataloader"]["params"].update(loader)
    out.update(precision=scorer.precision, backend=scorer.backend, weights=weights)
    return out


def _score_faces(cfg: InferenceConfig, listing: ImageListing, scorer: QualityScorer, info: DistInfo, fresh: bool,
                 weights: str, command: Sequence[str]) -> Dict[str, int]:
    """Score the folder through :func:`engine.resumable.run_folder` (resumable, in shares under ``torchrun``)."""
    params = cfg.dataloader.params
    decode = None
    if cfg.gpu_decode:
        if scorer.device.type != "cuda" or scorer.backend != "torch":
            raise ConfigError("'gpu_decode' (--gpu-decode) needs a CUDA device and the torch backend")
        decode = cuda_jpeg_decoder(scorer.device)
    settings = {"model": cfg.model, "weights_sha256": sha256_of(weights), "precision": scorer.precision,
                "backend": scorer.backend, "fold_bn": cfg.fold_bn, "gpu_decode": cfg.gpu_decode,
                # the thread count changes the last bits of CPU results
                "threads": torch.get_num_threads() if scorer.device.type == "cpu" else None}
    batching = folder_batching(scorer.device, scorer.precision, params.batch_size, params.num_workers)
    batch_size, workers = batching["batch_size"], batching["workers"]
    job = FolderJob(root=cfg.dataset.loc, rel_paths=listing.paths, stats=listing.stats, out=cfg.base.save_path,
                    batch_size=batch_size, settings=settings,
                    config=resolved_config(cfg, scorer, weights, batch_size=batch_size, num_workers=workers,
                                           pin_memory=decode is None and pins_memory(params.pin_memory,
                                                                                     scorer.device, workers)),
                    sheet=ScoreSheet(cfg.figure_tiles, "eDifFIQA quality scores", cfg.model),
                    device=str(scorer.device), what="quality scores", out_key="base.save_path (--output)",
                    keys="joined", limit=cfg.base.limit, flush_every=cfg.base.flush_every, fresh=fresh,
                    verbose=cfg.base.verbose, command=command)

    def score_batches(paths: List[str], batch_size: int) -> Iterator[BatchResult]:
        for indices, x, bad in iterate_folder(cfg.dataset.loc, paths, scorer.device, batch_size, workers,
                                              pin_memory=params.pin_memory, prefetch_factor=params.prefetch_factor,
                                              persistent_workers=params.persistent_workers,
                                              channels_last=scorer.channels_last, decode_jpegs=decode):
            values = scorer(x).tolist() if len(indices) else []
            yield BatchResult([paths[i] for i in indices.tolist()], values, [(paths[i], r) for i, r in bad])

    summary = run_folder(job, score_batches, info)
    return {"scored": summary.scored, "skipped": summary.skipped, **({"left": summary.left} if summary.left else {})}
