"""Training the DifFIQA denoiser: the official recipe with resume, DDP, AMP, EMA, sample grids and a loss log.

Checkpoints use the official layout (``step``, ``model``, ``opt``, ``ema``, ``scaler``) so the official code and
:func:`model.diffusion.load_diffusion` read them; extra keys (``version``, ``rng``, ``config``, ``samples_seen``) let a
run resume to the same result as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from typing import Any, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.diffusion_data import DegradationPairs, SampleStream, scan_training_images
from engine import figures
from engine.denoiser.config import DiffusionTrainConfig
from engine.training_run import TrainingRun
from model.diffusion import GaussianDiffusion, build_diffusion
from model.ema import EMA
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.config import to_dict
from utils.distributed import DistInfo, all_reduce_sum
from utils.errors import ConfigError, RunError
from utils.io import atomic_open
from utils.run_log import WandbSection
from utils.runtime import default_workers, rng_state, set_rng_state

__all__ = ["DiffusionTrainer", "train_diffusion", "CHECKPOINT_NAME"]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"
LOSS_FIGURE = "loss_log.png"
CHECKPOINT_VERSION = 1
_SAMPLE_POSITION = 2 ** 60


class DiffusionTrainer:
    """Runs :func:`train_diffusion`; one instance per process."""

    def __init__(self, cfg: DiffusionTrainConfig) -> None:
        self.cfg = cfg
        tp = cfg.trainer_params
        self.run = TrainingRun(tp.device, tp.seed, tp.results_folder, "trainer_params.results_folder")
        self.info: DistInfo = self.run.info
        self.device = self.run.device
        if tp.train_batch_size % self.info.world:
            raise ConfigError(f"trainer_params.train_batch_size {tp.train_batch_size} must be divisible by the "
                              f"{self.info.world} processes")
        self.paths = scan_training_images(tp.folder, tp.min_image_size)
        self.data = DegradationPairs(tp.folder, self.paths, cfg.diff_params.image_size, tp.seed,
                                     flip=tp.augment_horizontal_flip, probs=tp.degradation_probs)
        self.diffusion: GaussianDiffusion = build_diffusion(cfg.unet_params.build_kwargs(),
                                                            cfg.diff_params.build_kwargs()).to(self.device)
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=tp.train_lr, betas=tuple(tp.adam_betas))
        use_amp = tp.amp and self.device.type == "cuda"
        if tp.amp and not use_amp:
            _logger.warning("trainer_params.amp is set but the device is %s: training in fp32", self.device)
        self.amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        self.ema = EMA(self.diffusion, beta=tp.ema_decay, update_every=tp.ema_update_every,
                       update_after_step=tp.ema_update_after_step)
        self.step = 0
        self.samples_seen = 0
        if tp.resume:
            self._resume(tp.resume)
        self.model: nn.Module = self.run.wrap(self.diffusion)

    # ----------------------------------------------------------------------------------------- data
    def _loader(self) -> DataLoader:
        tp = self.cfg.trainer_params
        stream = SampleStream(len(self.data), tp.seed, True, tp.train_batch_size, self.info.rank, self.info.world,
                              start=self.samples_seen)
        workers = tp.num_workers if tp.num_workers is not None else default_workers(self.device)
        return DataLoader(self.data, batch_size=tp.train_batch_size // self.info.world, sampler=stream,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, generator=torch.Generator().manual_seed(tp.seed),
                          **({"prefetch_factor": 4} if workers > 0 else {}))

    # ----------------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> Dict[str, Any]:
        return {"step": self.step, "model": self.diffusion.state_dict(), "opt": self.opt.state_dict(),
                "ema": self.ema.state_dict(), "scaler": self.scaler.state_dict() if self.amp else None,
                "version": CHECKPOINT_VERSION, "samples_seen": self.samples_seen, "rng": rng_state(),
                "config": to_dict(self.cfg)}

    def _resume(self, path: str) -> None:
        # An official checkpoint carries no version: any version is accepted, the official keys are needed.
        state = read_checkpoint(path, "trainer_params.resume", needed=("step", "model", "opt", "ema"),
                                what="a denoiser trainer checkpoint")
        try:
            self.diffusion.load_state_dict(state["model"], strict=True)
            self.ema.load_state_dict(state["ema"], strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"trainer_params.resume: '{path}' does not fit unet_params/diff_params "
                              f"({str(exc).splitlines()[0]})") from None
        self.opt.load_state_dict(state["opt"])
        if self.amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        tp = self.cfg.trainer_params
        # An official checkpoint has no sample count: continue the stream as if every step used full batches.
        self.samples_seen = int(state.get("samples_seen",
                                          self.step * tp.train_batch_size * tp.gradient_accumulate_every))
        if "rng" in state:
            set_rng_state(state["rng"])
        _logger.info("resumed from %s at step %d", path, self.step)

    @torch.no_grad()
    def _sample_grid(self, folder: str, milestone: int) -> None:
        """Restore ``num_samples`` fixed degraded faces with the EMA model and save a square grid."""
        from torchvision.utils import save_image  # torchvision (a second to import) only for the sample grids

        tp = self.cfg.trainer_params
        n = min(tp.num_samples, len(self.data))
        pairs = [self.data[(i, _SAMPLE_POSITION + i)] for i in range(n)]  # positions no training sample reaches
        hq = torch.stack([p[0] for p in pairs]).to(self.device).float() / 255
        lq = torch.stack([p[1] for p in pairs]).to(self.device).float() / 255
        diffusion = self.ema.ema_model
        diffusion.eval()
        t = diffusion.time_bound[1] - 1
        generator = torch.Generator(device=self.device).manual_seed(tp.seed)
        x = lq * 2 - 1
        noise = torch.randn(x.shape, generator=generator, device=self.device)
        x_t = diffusion.q_sample(x, torch.full((n,), t, device=self.device, dtype=torch.long), noise)
        restored = (diffusion.reconstruct(x_t, t, steps=min(t + 1, 10), generator=generator) + 1) / 2
        nrow = int(math.sqrt(tp.num_samples))
        with atomic_open(os.path.join(folder, f"sample-{milestone}.png"), "wb") as handle:
            save_image(restored.clamp(0, 1).cpu(), handle, nrow=nrow, format="png")
        if milestone == 1 or not os.path.exists(os.path.join(folder, "sample-inputs.png")):
            with atomic_open(os.path.join(folder, "sample-inputs.png"), "wb") as handle:
                save_image(torch.cat([lq, hq]).cpu(), handle, nrow=nrow, format="png")

    def _write_figure(self, folder: str) -> None:
        """``loss_log.png``: the loss of every logged step so far (``loss_log.csv``, which a resumed run appends to),
        written atomically."""
        def draw():
            with open(os.path.join(folder, "loss_log.csv"), newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            return figures.denoiser_curve([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows],
                                          "DifFIQA denoiser: training loss")

        figures.write_figure(os.path.join(folder, LOSS_FIGURE), draw)

    def _diverged(self, what: str) -> None:
        """Stop at the first non-finite loss or weight: the checkpoint already written stays as it is."""
        path = os.path.join(self.cfg.trainer_params.results_folder, CHECKPOINT_NAME)
        kept = f"'{path}' of an earlier step is kept" if os.path.exists(path) else "no checkpoint was written"
        raise RunError(f"{what}: training diverged ({kept}); lower trainer_params.train_lr, set "
                       "trainer_params.max_grad_norm, or turn trainer_params.amp off")

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        cfg, tp = self.cfg, self.cfg.trainer_params
        folder = tp.results_folder
        run_log = self.run.log(cfg, "loss_log.csv", ["step", "loss", "images", "seconds"], resumed=self.step > 0,
                               wandb_cfg=WandbSection(use=tp.use_wandb, project=tp.project_name))
        if self.info.main:
            _logger.info("training the denoiser on %d images from %s: %d steps of %d x %d images, %d process(es) "
                         "on %s", len(self.paths), tp.folder, tp.train_num_steps, tp.train_batch_size,
                         tp.gradient_accumulate_every, self.info.world, self.device)
        losses: List[float] = []
        start = time.perf_counter()
        try:
            if self.step >= tp.train_num_steps:
                return {"step": self.step, "losses": losses}
            batches = iter(self._loader())
            bar = tqdm(total=tp.train_num_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       disable=not (tp.verbose and self.info.main))
            self.model.train()
            while self.step < tp.train_num_steps:
                total = 0.0
                for k in range(tp.gradient_accumulate_every):
                    hq, lq = next(batches)
                    hq = hq.to(self.device, non_blocking=True).float().div_(255)
                    lq = lq.to(self.device, non_blocking=True).float().div_(255)
                    sync = k == tp.gradient_accumulate_every - 1 or not self.info.enabled
                    with self.model.no_sync() if not sync else contextlib.nullcontext():
                        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                            # GaussianDiffusion.forward is the training loss (DDP needs it to be forward)
                            loss = self.model(hq, lq) / tp.gradient_accumulate_every
                        self.scaler.scale(loss).backward()
                    total += loss.item()
                self.samples_seen += tp.train_batch_size * tp.gradient_accumulate_every
                if tp.max_grad_norm:
                    self.scaler.unscale_(self.opt)
                    torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), tp.max_grad_norm)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                total = all_reduce_sum(torch.tensor([total], dtype=torch.float64), self.info).item() / self.info.world
                if not math.isfinite(total):
                    self._diverged(f"the training loss is {total} at step {self.step + 1}")
                self.step += 1
                losses.append(total)
                self.ema.update()
                bar.set_postfix(loss=f"{total:.4f}")
                bar.update(1)
                if self.info.main:
                    if self.step % tp.log_every == 0 or self.step == tp.train_num_steps:
                        run_log.row([self.step, f"{total:.6f}", self.samples_seen,
                                     round(time.perf_counter() - start, 2)])
                        run_log.flush()
                    run_log.log({"loss": total}, step=self.step)
                    if self.step % tp.save_and_sample_every == 0 or self.step == tp.train_num_steps:
                        bad = [n for n, p in self.diffusion.state_dict().items()
                               if p.is_floating_point() and not bool(torch.isfinite(p).all())]
                        if bad:
                            self._diverged(f"{len(bad)} tensor(s) of the model are NaN or infinite after step "
                                           f"{self.step} (first: {bad[0]})")
                        self._sample_grid(folder, math.ceil(self.step / tp.save_and_sample_every))
                        save_checkpoint(os.path.join(folder, CHECKPOINT_NAME), self._checkpoint())
                        if tp.figure:
                            run_log.flush()
                            self._write_figure(folder)
            bar.close()
        finally:
            run_log.close()
            self.run.close()
        return {"step": self.step, "losses": losses}


def train_diffusion(cfg: DiffusionTrainConfig) -> Dict[str, Any]:
    """Train the denoiser with ``cfg``; returns the final step and this run's per-step losses."""
    return DiffusionTrainer(cfg).fit()
