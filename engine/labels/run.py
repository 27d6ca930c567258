"""``diffiqa_score.py``'s work: load the models, check the run, and score the folder through the resumable driver
(:mod:`engine.resumable`), which writes ``quality-scores.pkl`` / ``.csv`` / ``.json`` as one set."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from dataset.folder_batches import iterate_folder
from dataset.formats import SCORES_CSV, SCORES_PICKLE
from dataset.image_folder import list_images
from engine.labels.config import resolve_denoiser, resolve_fr
from engine.labels.scoring import image_seed, score_batch_fast, score_batch_official
from engine.resumable import BatchResult, FolderJob, FolderSummary, RunState, run_folder
from model.checkpoint import load_backbone
from model.diffusion import load_diffusion
from utils.config import to_dict
from utils.distributed import DistInfo, finish_distributed, init_distributed
from utils.errors import CheckpointError, ConfigError
from utils.io import check_output_dir, json_writer
from utils.runtime import precision_context, reader_workers, resolve_precision

__all__ = ["run_scoring", "SCORES_PICKLE", "SCORES_CSV", "SCORES_META", "SCORES_FIGURE"]

_logger = logging.getLogger(__name__)

SCORES_META = "quality-scores.json"
SCORES_FIGURE = "quality-scores.png"
#: The official denoiser's number of diffusion steps (``diff_params.timesteps``).
DEFAULT_TIMESTEPS = 1000


def run_scoring(cfg: Any, fresh: bool = False, command: Sequence[str] = ()) -> FolderSummary:
    """Score ``cfg.inference.images_loc`` (a :class:`engine.labels.config.ScoreConfig`); ``fresh`` removes the files
    of an earlier run in the output folder first (its finished scores too); ``command`` (``[program, *arguments]``)
    is named after a ``base.limit`` stop. Returns what was done."""
    check_output_dir(cfg.inference.save_loc, "inference.save_loc / --output")
    unet_kwargs, diff_kwargs = resolve_denoiser(cfg)
    timesteps = int((diff_kwargs or {}).get("timesteps", DEFAULT_TIMESTEPS))
    if not 1 <= cfg.inference.used_timesteps < timesteps:
        raise ConfigError(f"'inference.used_timesteps' is {cfg.inference.used_timesteps}; the denoiser has "
                          f"{timesteps} steps, so it must be in [1, {timesteps - 1}] (official: 5)")
    info, device = init_distributed(cfg.base.device)
    try:
        return _run(cfg, info, device, fresh, command, unet_kwargs, diff_kwargs)
    finally:
        finish_distributed(info)


def _run(cfg: Any, info: DistInfo, device: torch.device, fresh: bool, command: Sequence[str],
         unet_kwargs: Optional[Dict[str, Any]], diff_kwargs: Optional[Dict[str, Any]]) -> FolderSummary:
    inf, base = cfg.inference, cfg.base
    listing = list_images(inf.images_loc, cfg.dataset.order, key="inference.images_loc or --images")
    rel_paths = listing.paths
    fr = resolve_fr(cfg)
    if not os.path.isfile(fr[1]):
        raise CheckpointError(f"face recognition weights '{fr[1]}' (fr_model.weights of inference.fr_config, or "
                              "base.fr_weights / --fr-weights) not found; the official labels use insightface's "
                              "glint360k_cosface_r100_fp16_0.1 backbone.pth")
    denoiser = load_diffusion(inf.model_loc, base.ema, unet_kwargs, diff_kwargs)
    levels = denoiser.model.levels
    if 112 % (2 ** (levels - 1)):
        raise ConfigError(f"the denoiser's {levels} levels need sides divisible by {2 ** (levels - 1)}; faces are 112")
    fr_model = load_backbone(*fr, key="fr_model.weights of inference.fr_config or --fr-weights",
                             fix="set fr_model.module of inference.fr_config to the backbone the file holds")
    denoiser, fr_model = denoiser.to(device).eval(), fr_model.to(device).eval()
    if not base.official and device.type == "cpu":
        denoiser.model.to(memory_format=torch.channels_last)  # faster on CPUs; scores within 1e-5
    unet_batch = inf.batch_size or (64 if base.official or device.type == "cpu" else 256)
    per_batch = max(1, unet_batch // (2 * inf.repeats))  # images per batch
    workers = cfg.dataset.num_workers if cfg.dataset.num_workers is not None else reader_workers(device)
    precision = resolve_precision(device, base.precision) if base.precision else None
    if precision is None:
        # The official code runs with PyTorch's defaults: TF32 convolutions on CUDA.
        precision = "tf32" if base.official and device.type == "cuda" else "fp32"
    mode = "official" if base.official else "default"
    settings = {"mode": mode, "seed": base.seed, "timestep": inf.used_timesteps, "repeats": inf.repeats,
                "unet_batch": unet_batch, "denoiser": os.path.abspath(inf.model_loc), "ema": base.ema,
                "fr_backbone": fr[0], "fr_weights": os.path.abspath(fr[1]), "precision": precision,
                "threads": torch.get_num_threads() if device.type == "cpu" else None}
    if base.official:
        # The official draws come from each process's global RNG in its order of images.
        settings.update({"order": cfg.dataset.order, "processes": info.world})
    if info.main:
        _logger.info("DifFIQA %s mode: %d images in %s, t=%d, %d repeats, %d images per batch, %s, %d process(es) on "
                     "%s", mode, len(rel_paths), inf.images_loc, inf.used_timesteps, inf.repeats, per_batch,
                     precision, info.world, device)
    chunk = [max(1, unet_batch)]

    def label_batches(paths: List[str], batch_size: int) -> Iterator[BatchResult]:
        for indices, x, bad in iterate_folder(inf.images_loc, paths, device, batch_size, workers,
                                              channels_last=False):
            values: List[float] = []
            if len(indices):
                with precision_context(device, precision):
                    if base.official:
                        q = score_batch_official(x, denoiser, fr_model, inf.used_timesteps, inf.repeats)
                    else:
                        seeds = [image_seed(base.seed, paths[i]) for i in indices.tolist()]
                        q = score_batch_fast(x, denoiser, fr_model, seeds, inf.used_timesteps, inf.repeats, chunk)
                values = q.float().cpu().tolist()
            yield BatchResult([paths[i] for i in indices.tolist()], values, [(paths[i], e) for i, e in bad])

    def meta(table: Dict[str, float], skipped: Dict[str, str], summary: FolderSummary) -> List[Tuple[str, Any]]:
        return [*_figure(cfg, table), (os.path.join(inf.save_loc, SCORES_META), json_writer({
            "seed": base.seed, "mode": mode, "timestep": inf.used_timesteps, "repeats": inf.repeats,
            "batch_size": unet_batch, "precision": precision, "denoiser": inf.model_loc, "ema": base.ema,
            "fr_backbone": fr[0], "fr_weights": fr[1], "images": len(rel_paths), "scored": len(table),
            "skipped": skipped, "processes": info.world, "device": str(device),
            "last_run_seconds": round(summary.seconds, 2), "config": to_dict(cfg)}))]

    job = FolderJob(root=inf.images_loc, rel_paths=rel_paths, stats=listing.stats, out=inf.save_loc,
                    batch_size=per_batch, settings=settings, what="DifFIQA scores",
                    out_key="inference.save_loc (--output)", keys=base.keys, limit=base.limit,
                    flush_every=base.flush_every, fresh=fresh, verbose=inf.verbose and info.main,
                    state=_rng_state(base.seed + info.rank, device) if base.official else None, extra_outputs=meta,
                    extra_names=(SCORES_META, SCORES_FIGURE), command=command)
    summary = run_folder(job, label_batches, info)
    if summary.complete and summary.skipped_names:
        _logger.warning("%d unreadable image(s) were skipped, e.g. %s", len(summary.skipped_names),
                        "; ".join(summary.skipped_names[:3]))
    return summary


def _figure(cfg: Any, table: Dict[str, float]) -> List[Tuple[str, Any]]:
    """``[(quality-scores.png, writer)]``: the labels' score sheet (``base.figure_tiles`` lowest and highest faces);
    empty when turned off or when it cannot be drawn (said in a warning; the labels are written anyway)."""
    if not cfg.base.figure_tiles:
        return []
    import numpy as np

    from dataset.transforms import decode_face
    from engine.figures import figure_file, score_sheet, sheet_title

    root = cfg.inference.images_loc
    where = (lambda key: key) if cfg.base.keys == "joined" else (lambda key: os.path.join(root, key))
    title = sheet_title("DifFIQA quality labels", len(table), root, "the DifFIQA denoiser")
    return figure_file(os.path.join(cfg.inference.save_loc, SCORES_FIGURE),
                       lambda: score_sheet(table, lambda key: np.asarray(decode_face(where(key))),
                                           cfg.base.figure_tiles, title), "the labels are written without it")


def _rng_state(seed: int, device: torch.device) -> RunState:
    """The global RNG of the official computation: seeded on a fresh start, saved at every flush, restored on a
    resume so that the draws continue as in a run that was never stopped."""

    def save() -> Dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
        return state

    def load(state: Optional[Dict[str, Any]]) -> None:
        if state is None:
            torch.manual_seed(seed)
            return
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)

    return RunState(save, load)
