"""``diffiqa_score.py``'s work: load the models, score this process's share, and (rank 0) merge and write outputs."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Tuple

import torch

from dataset.formats import SCORES_CSV, SCORES_PICKLE
from dataset.image_folder import find_images
from engine.labels.config import resolve_denoiser, resolve_fr
from engine.labels.scoring import RNG_GLOB, ScoreRun, score_folder
from engine.parts import check_settings, read_parts, read_scores, remove_parts
from model.diffusion import load_diffusion
from model.registry import load_backbone
from utils.config import to_dict
from utils.distributed import init_distributed
from utils.errors import CheckpointError, ConfigError
from utils.io import check_output_dir, csv_writer, json_writer, pickle_writer, write_together
from utils.runtime import default_workers, resolve_precision

__all__ = ["run_scoring", "SCORES_PICKLE", "SCORES_CSV", "SCORES_META"]

_logger = logging.getLogger(__name__)

SCORES_META = "quality-scores.json"
SCORES_SETTINGS = "quality-scores.settings.json"


def run_scoring(cfg: Any) -> Dict[str, Any]:
    """Score ``cfg.inference.images_loc`` (a :class:`engine.labels.config.ScoreConfig`); returns a summary of what
    was done."""
    info, device = init_distributed(cfg.base.device)
    try:
        return _run(cfg, info, device)
    finally:
        if info.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def _settings(cfg: Any, run: ScoreRun, fr: Tuple[str, str]) -> Dict[str, Any]:
    """What the scores depend on; scores made with other settings must not be mixed in one output folder."""
    settings = {"mode": "official" if run.official else "default", "seed": run.seed, "timestep": run.t,
                "repeats": run.repeats, "denoiser": os.path.abspath(cfg.inference.model_loc), "ema": cfg.base.ema,
                "fr_backbone": fr[0], "fr_weights": os.path.abspath(fr[1]),
                "precision": run.precision}
    if run.official:
        settings["batch_size"] = run.batch_size  # the official draws depend on the batch composition
        settings["order"] = cfg.dataset.order
    return settings


def _previous_results(cfg: Any, run: ScoreRun, main: bool,
                      fr: Tuple[str, str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """Scores of a completed earlier run in the output folder (so a rerun only scores new images), after checking
    that it used the same settings; a first run records its settings."""
    out = cfg.inference.save_loc
    if not check_settings(out, _settings(cfg, run, fr), "DifFIQA scores", "inference.save_loc (--output)", main):
        return {}, {}
    if not os.path.isfile(os.path.join(out, SCORES_PICKLE)):
        return {}, {}
    scores = read_scores(out, cfg.inference.images_loc)
    skipped: Dict[str, str] = {}
    meta_path = os.path.join(out, SCORES_META)
    if os.path.isfile(meta_path):
        with open(meta_path, "r", encoding="utf-8") as handle:
            skipped = dict(json.load(handle).get("skipped", {}))
    if main:
        _logger.info("%d image(s) already scored in %s: only new images are scored", len(scores), out)
    return scores, skipped


def _run(cfg: Any, info: Any, device: torch.device) -> Dict[str, Any]:
    check_output_dir(cfg.inference.save_loc, "inference.save_loc / --output")
    rel_paths = find_images(cfg.inference.images_loc, cfg.dataset.order, key="inference.images_loc or --images")
    fr = resolve_fr(cfg)
    if not os.path.isfile(fr[1]):
        raise CheckpointError(f"face recognition weights '{fr[1]}' (fr_model.weights of inference.fr_config, or "
                              "base.fr_weights / --fr-weights) not found; the "
                              "official labels use insightface's glint360k_cosface_r100_fp16_0.1 backbone.pth")
    denoiser = load_diffusion(cfg.inference.model_loc, cfg.base.ema, *resolve_denoiser(cfg))
    levels = denoiser.model.levels
    if 112 % (2 ** (levels - 1)):
        raise ConfigError(f"the denoiser's {levels} levels need sides divisible by {2 ** (levels - 1)}; faces are 112")
    fr_model = load_backbone(*fr, key="fr_model.weights of inference.fr_config or --fr-weights")
    denoiser, fr_model = denoiser.to(device).eval(), fr_model.to(device).eval()
    if not cfg.base.official and device.type == "cpu":
        denoiser.model.to(memory_format=torch.channels_last)  # faster on CPUs; scores within 1e-5
    out = cfg.inference.save_loc
    os.makedirs(out, exist_ok=True)
    batch = cfg.inference.batch_size or (64 if cfg.base.official or device.type == "cpu" else 256)
    workers = cfg.dataset.num_workers if cfg.dataset.num_workers is not None else default_workers(device)
    precision = resolve_precision(device, cfg.base.precision) if cfg.base.precision else None
    if precision is None:
        # The official code runs with PyTorch's defaults: TF32 convolutions on CUDA.
        precision = "tf32" if cfg.base.official and device.type == "cuda" else "fp32"
    run = ScoreRun(root=cfg.inference.images_loc, out_dir=out, t=cfg.inference.used_timesteps,
                   repeats=cfg.inference.repeats,
                   seed=cfg.base.seed, official=cfg.base.official, batch_size=batch,
                   flush_every=cfg.base.flush_every, limit=cfg.base.limit, workers=workers,
                   verbose=cfg.inference.verbose and info.main, precision=precision, rank=info.rank,
                   world=info.world)
    previous, previous_skipped = _previous_results(cfg, run, info.main, fr)
    if info.main:
        _logger.info("DifFIQA %s mode: %d images in %s, t=%d, %d repeats, batch %d, %s, %d process(es) on %s",
                     "official" if run.official else "default", len(rel_paths), run.root, run.t, run.repeats, batch,
                     run.precision, info.world, device)
    done_scores, done_skipped = read_parts(out)
    done_scores, done_skipped = {**previous, **done_scores}, {**previous_skipped, **done_skipped}
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()  # every rank has read the part files before any rank appends to them
    start = time.perf_counter()
    counts = score_folder(run, rel_paths, denoiser, fr_model, device, done=set(done_scores) | set(done_skipped))
    seconds = time.perf_counter() - start
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
    summary: Dict[str, Any] = {"rank": info.rank, "scored": counts["scored"], "skipped": counts["skipped"],
                               "new": counts["scored"]}
    if not info.main:
        return summary
    scores, skipped = read_parts(out)
    current = set(rel_paths)  # images deleted from the folder since an earlier run are left out
    scores = {p: v for p, v in {**previous, **scores}.items() if p in current}
    skipped = {p: e for p, e in {**previous_skipped, **skipped}.items() if p in current}
    left = [p for p in rel_paths if p not in scores and p not in skipped]
    summary.update({"left": len(left), "complete": not left})
    if left:
        return summary
    key = (lambda p: p) if cfg.base.keys == "relative" else (lambda p: os.path.join(cfg.inference.images_loc, p))
    ordered = [p for p in rel_paths if p in scores]
    table = {key(p): scores[p] for p in ordered}
    outputs = [(os.path.join(out, SCORES_PICKLE), pickle_writer(table)),
               (os.path.join(out, SCORES_CSV), csv_writer(("path", "quality"),
                                                          [(k, f"{v:.8f}") for k, v in table.items()]))]
    if skipped:
        names = sorted(skipped)
        _logger.warning("%d unreadable image(s) were skipped, e.g. %s", len(names),
                        "; ".join(f"{p} ({skipped[p]})" for p in names[:3]))
    write_together(outputs + [(os.path.join(out, SCORES_META), json_writer({
        "seed": cfg.base.seed, "mode": "official" if cfg.base.official else "default",
        "timestep": run.t, "repeats": run.repeats, "batch_size": batch, "precision": run.precision,
        "denoiser": cfg.inference.model_loc, "ema": cfg.base.ema, "fr_backbone": fr[0],
        "fr_weights": fr[1], "images": len(rel_paths), "scored": len(ordered),
        "skipped": {p: skipped[p] for p in sorted(skipped)}, "processes": info.world, "device": str(device),
        "last_run_seconds": round(seconds, 2), "config": to_dict(cfg)}))])
    remove_parts(out, RNG_GLOB)
    # New = scored by this invocation (every process), not by an earlier --limit run whose parts were merged.
    summary.update({"scored": len(ordered), "skipped": len(skipped),
                    "new": sum(1 for p in ordered if p not in done_scores)})
    return summary
