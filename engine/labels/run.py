"""``diffiqa_score.py``'s work: load the models, check the run, and label the folder through the score-folder driver
(:mod:`engine.resumable`); how labels are computed (official or default) is the policy's
(:class:`engine.labels.policy.LabelPolicy`)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List, Sequence

import torch

from dataset.folder_batches import iterate_folder
from dataset.image_folder import list_images
from engine.labels.config import ScoreConfig, resolve_denoiser, resolve_fr
from engine.labels.policy import LabelPolicy
from engine.resumable import BatchResult, FolderJob, FolderSummary, ScoreSheet, run_folder
from model.checkpoint import load_backbone
from model.diffusion import load_diffusion
from utils.config import to_dict
from utils.distributed import finish_distributed, init_distributed
from utils.errors import CheckpointError, ConfigError
from utils.io import check_output_dir
from utils.runtime import precision_context, reader_workers

__all__ = ["run_scoring", "resolved_config"]

_logger = logging.getLogger(__name__)

#: The official denoiser's number of diffusion steps (``diff_params.timesteps``).
DEFAULT_TIMESTEPS = 1000


def run_scoring(cfg: ScoreConfig, fresh: bool = False, command: Sequence[str] = ()) -> FolderSummary:
    """Label ``cfg.inference.images_loc`` into ``cfg.inference.save_loc``; ``fresh`` and ``command`` as
    :class:`engine.resumable.FolderJob` takes them. Returns what was done."""
    inf, base = cfg.inference, cfg.base
    check_output_dir(inf.save_loc, "inference.save_loc / --output")
    unet_kwargs, diff_kwargs = resolve_denoiser(cfg)
    timesteps = int((diff_kwargs or {}).get("timesteps", DEFAULT_TIMESTEPS))
    if not 1 <= inf.used_timesteps < timesteps:
        raise ConfigError(f"'inference.used_timesteps' is {inf.used_timesteps}; the denoiser has {timesteps} steps, "
                          f"so it must be in [1, {timesteps - 1}] (official: 5)")
    info, device = init_distributed(base.device)
    try:
        listing = list_images(inf.images_loc, cfg.dataset.order, key="inference.images_loc or --images")
        fr = resolve_fr(cfg)
        if not os.path.isfile(fr[1]):
            raise CheckpointError(f"face recognition weights '{fr[1]}' (fr_model.weights of inference.fr_config, or "
                                  "base.fr_weights / --fr-weights) not found; the official labels use insightface's "
                                  "glint360k_cosface_r100_fp16_0.1 backbone.pth")
        denoiser = load_diffusion(inf.model_loc, base.ema, unet_kwargs, diff_kwargs)
        levels = denoiser.model.levels
        if 112 % (2 ** (levels - 1)):
            raise ConfigError(f"the denoiser's {levels} levels need sides divisible by {2 ** (levels - 1)}; faces are "
                              "112")
        fr_model = load_backbone(*fr, key="fr_model.weights of inference.fr_config or --fr-weights",
                                 fix="set fr_model.module of inference.fr_config to the backbone the file holds")
        policy = LabelPolicy.from_config(cfg, device, info)
        denoiser, fr_model = denoiser.to(device).eval(), fr_model.to(device).eval()
        denoiser.model.to(memory_format=policy.memory_format)
        per_batch = max(1, policy.unet_batch // (2 * inf.repeats))  # images per batch
        workers = cfg.dataset.num_workers if cfg.dataset.num_workers is not None else reader_workers(device)
        settings = {"mode": policy.mode, "seed": base.seed, "timestep": inf.used_timesteps, "repeats": inf.repeats,
                    "unet_batch": policy.unet_batch, "denoiser": os.path.abspath(inf.model_loc), "ema": base.ema,
                    "fr_backbone": fr[0], "fr_weights": os.path.abspath(fr[1]), "precision": policy.precision,
                    "threads": torch.get_num_threads() if device.type == "cpu" else None, **policy.recorded}
        if info.main:
            _logger.info("DifFIQA %s mode: %d images in %s, t=%d, %d repeats, %d images per batch, %s, %d process(es) "
                         "on %s", policy.mode, len(listing.paths), inf.images_loc, inf.used_timesteps, inf.repeats,
                         per_batch, policy.precision, info.world, device)
        chunk = [max(1, policy.unet_batch)]  # rows per UNet call, halved on CUDA out-of-memory for the batches after

        def label_batches(paths: List[str], batch_size: int) -> Iterator[BatchResult]:
            for indices, x, bad in iterate_folder(inf.images_loc, paths, device, batch_size, workers,
                                                  channels_last=False):
                scored = [paths[i] for i in indices.tolist()]
                values: List[float] = []
                if scored:
                    with precision_context(device, policy.precision):
                        q = policy.score_batch(x, denoiser, fr_model, scored, inf.used_timesteps, inf.repeats, chunk)
                    values = q.float().cpu().tolist()
                yield BatchResult(scored, values, [(paths[i], e) for i, e in bad])

        job = FolderJob(root=inf.images_loc, rel_paths=listing.paths, stats=listing.stats, out=inf.save_loc,
                        batch_size=per_batch, settings=settings,
                        config=resolved_config(cfg, device, policy, workers, fr[1]),
                        sheet=ScoreSheet(base.figure_tiles, "DifFIQA quality labels", "the DifFIQA denoiser"),
                        device=str(device), what="DifFIQA scores", out_key="inference.save_loc (--output)",
                        keys=base.keys, limit=base.limit, flush_every=base.flush_every, fresh=fresh,
                        verbose=inf.verbose and info.main, state=policy.state, command=command)
        return run_folder(job, label_batches, info)
    finally:
        finish_distributed(info)


def resolved_config(cfg: ScoreConfig, device: torch.device, policy: LabelPolicy, workers: int,
                    fr_weights: str) -> Dict[str, Any]:
    """The config as this run used it, for the sidecar: the device, precision and UNet batch (the policy's), the
    reader's ``workers`` and the FR weights file, where the config may leave them to the run."""
    out = to_dict(cfg)
    out["base"].update(device=str(device), precision=policy.precision, fr_weights=fr_weights)
    out["inference"]["batch_size"] = policy.unet_batch
    out["dataset"]["num_workers"] = workers
    return out
