"""The denoiser training config: the official DifFIQA ``train_config.yaml`` sections (``unet_params``,
``diff_params``, ``trainer_params``, named after lucidrains' ``Unet``, ``GaussianDiffusion`` and ``Trainer``
arguments) as typed dataclasses, key for key, plus run settings this project adds (seed, device, resume...).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

from utils.config import RunBase, check, check_batch, check_workers

__all__ = ["UnetParams", "DiffParams", "TrainerParams", "DiffusionTrainConfig"]

#: Official UNet switches DifFIQA leaves off; the UNet here has none of them.
_UNSUPPORTED = ("self_condition", "learned_variance", "learned_sinusoidal_cond")


@dataclass
class UnetParams:
    """``unet_params``: the denoiser (official: dim 128, dim_mults [1, 2, 4, 8], 3 channels)."""

    dim: int = 128
    init_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dim_mults: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    channels: int = 3
    resnet_block_groups: int = 8
    attn_heads: int = 4                        # addition: the reference fixes 4 x 32
    attn_dim_head: int = 32
    self_condition: bool = False
    learned_variance: bool = False
    learned_sinusoidal_cond: bool = False

    def __post_init__(self) -> None:
        check(self.dim >= 1 and self.dim % self.resnet_block_groups == 0,
              f"'unet_params.dim' must be a positive multiple of resnet_block_groups ({self.resnet_block_groups})")
        check(len(self.dim_mults) >= 1 and all(m >= 1 for m in self.dim_mults),
              f"'unet_params.dim_mults' must list positive multipliers, got {self.dim_mults}")
        check(self.channels == 3, f"'unet_params.channels' must be 3 (faces are RGB), got {self.channels}")
        for flag in _UNSUPPORTED:
            check(not getattr(self, flag), f"'unet_params.{flag}' is not used by DifFIQA and not supported")

    def build_kwargs(self) -> dict:
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if k not in _UNSUPPORTED}
        return {**kwargs, "dim_mults": tuple(self.dim_mults)}


@dataclass
class DiffParams:
    """``diff_params``: the diffusion (official: 112 px, 1000 cosine steps, x0 objective, L2 loss)."""

    image_size: int = 112
    timesteps: int = 1000
    loss_type: str = "l2"
    objective: str = "pred_x0"
    beta_schedule: str = "cosine"
    p2_loss_weight_gamma: float = 0.0
    p2_loss_weight_k: float = 1.0
    ddim_sampling_eta: float = 1.0
    time_bound: List[int] = field(default_factory=lambda: [0, 100])  # training t ~ U[time_bound[0], time_bound[1])
    T: Optional[int] = 100             # mixing a = sin(t / T * pi / 2) of clean and degraded; null: degraded as is

    def __post_init__(self) -> None:
        check(self.loss_type in ("l1", "l2"), f"'diff_params.loss_type' must be l1 or l2, got '{self.loss_type}'")
        check(self.objective in ("pred_x0", "pred_noise"),
              f"'diff_params.objective' must be pred_x0 or pred_noise, got '{self.objective}'")
        check(self.beta_schedule in ("cosine", "linear"),
              f"'diff_params.beta_schedule' must be cosine or linear, got '{self.beta_schedule}'")
        check(len(self.time_bound) == 2 and 0 <= self.time_bound[0] < self.time_bound[1] <= self.timesteps,
              f"'diff_params.time_bound' must be [lo, hi] with 0 <= lo < hi <= timesteps, got {self.time_bound}")
        check(self.T is None or self.T > 0, f"'diff_params.T' must be positive or null, got {self.T}")
        check(self.image_size >= 8, f"'diff_params.image_size' must be at least 8, got {self.image_size}")

    def build_kwargs(self) -> dict:
        return {**dataclasses.asdict(self), "time_bound": tuple(self.time_bound)}


@dataclass
class TrainerParams(RunBase):
    """``trainer_params``: the official recipe (lucidrains ``Trainer`` names) and this project's run settings (the
    shared ``seed`` and ``device``; the seed defaults to 42, as in earlier releases of this trainer)."""

    seed: int = 42

    folder: str = "./data/celeba"
    train_batch_size: int = 16                 # global batch per micro-step (split across torchrun processes)
    gradient_accumulate_every: int = 4
    augment_horizontal_flip: bool = True
    train_lr: float = 8e-5
    train_num_steps: int = 100000
    ema_update_every: int = 10
    ema_decay: float = 0.995
    ema_update_after_step: int = 100
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    save_and_sample_every: int = 500
    num_samples: int = 25
    results_folder: str = "./results"
    amp: bool = False                          # CUDA: fp16 autocast + GradScaler
    use_wandb: bool = False                    # Weights & Biases (imported only then)
    project_name: str = "diffiqa"
    # additions
    degradation_probs: List[float] = field(default_factory=lambda: [1.0, 0.2, 0.01])
    min_image_size: int = 112
    max_grad_norm: Optional[float] = None      # official: no clipping
    num_workers: Optional[int] = None
    resume: Optional[str] = None
    verbose: bool = True
    log_every: int = 10
    figure: bool = True                        # loss_log.png at every save: the loss of every logged step

    def __post_init__(self) -> None:
        super().__post_init__()
        check_batch(self.train_batch_size, "trainer_params.train_batch_size")
        check(self.gradient_accumulate_every >= 1, "'trainer_params.gradient_accumulate_every' must be at least 1")
        check(self.train_num_steps >= 1, "'trainer_params.train_num_steps' must be at least 1")
        check(math.isfinite(self.train_lr) and self.train_lr > 0,
              f"'trainer_params.train_lr' must be a positive number, got {self.train_lr}")
        check(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
              f"'trainer_params.adam_betas' must be two numbers in [0, 1), got {self.adam_betas}")
        check(self.max_grad_norm is None or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
              f"'trainer_params.max_grad_norm' must be a positive number or null (no clipping), got "
              f"{self.max_grad_norm}")
        check(0.0 <= self.ema_decay < 1.0, "'trainer_params.ema_decay' must be in [0, 1)")
        check(self.ema_update_every >= 1, "'trainer_params.ema_update_every' must be at least 1")
        check(self.save_and_sample_every >= 1, "'trainer_params.save_and_sample_every' must be at least 1")
        root = int(round(self.num_samples ** 0.5))
        check(self.num_samples >= 1 and root * root == self.num_samples,
              f"'trainer_params.num_samples' must be a square number (official 25), got {self.num_samples}")
        check(len(self.degradation_probs) >= 1 and all(0.0 <= p <= 1.0 for p in self.degradation_probs),
              "'trainer_params.degradation_probs' must list probabilities in [0, 1]")
        check(self.min_image_size >= 0, "'trainer_params.min_image_size' must be 0 or more")
        check_workers(self.num_workers, "trainer_params.num_workers")
        check(self.log_every >= 1, "'trainer_params.log_every' must be at least 1")


@dataclass
class DiffusionTrainConfig:
    """The whole denoiser training config."""

    unet_params: UnetParams = field(default_factory=UnetParams)
    diff_params: DiffParams = field(default_factory=DiffParams)
    trainer_params: TrainerParams = field(default_factory=TrainerParams)

