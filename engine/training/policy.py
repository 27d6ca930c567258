"""How a training run computes: one field per difference between the official update and the default mode (the table
"What the default mode changes" in docs/training.md names the field of each row). Built once from the config; the
trainer reads its fields and nothing else decides these things."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from engine.training.config import TrainConfig
from engine.training.objective import Objective
from model.conv_grad import fast_weight_grad_layers
from utils.errors import ConfigError
from utils.runtime import cpu_has_native_bf16

__all__ = ["TrainingPolicy"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPolicy:
    """Attributes:
        mode: ``official`` or ``default``, for logs.
        freeze_outside_groups: Tensors outside the optimizer groups get no gradient (official: they stay trainable,
            their gradients accumulate and count in the clip).
        memory_format: Of the model and its inputs (official: ``torch.contiguous_format``).
        fast_conv_grad: 3x3 convolution weight gradients by ``model/conv_grad.py`` (CPU, fp32).
        seeded_loader: Shuffle with a generator seeded per epoch (official: the global RNG's ``RandomSampler``).
        amp_dtype: Autocast dtype, or None for fp32 (official CPU: fp32; default CPU: bf16 where native).
        fp32_trunk: Keep the iResNet trunk in fp32 under autocast (the official iResNet's ``fp16=False``).
        validation_autocast: Validate under autocast (the official DifFIQA(R) validates without).
        compile: ``torch.compile`` the training step.
    """

    mode: str
    freeze_outside_groups: bool
    memory_format: torch.memory_format
    fast_conv_grad: bool
    seeded_loader: bool
    amp_dtype: Optional[torch.dtype]
    fp32_trunk: bool
    validation_autocast: bool
    compile: bool

    @classmethod
    def from_config(cls, cfg: TrainConfig, device: torch.device, world: int, model: nn.Module, objective: Objective,
                    log: bool = True) -> "TrainingPolicy":
        """The policy of ``cfg`` on ``device`` with ``world`` processes for ``model`` (whose 3x3 convolutions decide
        the memory format of a compiled CPU run) trained with ``objective``. The official update is one process: under
        torchrun a :class:`ConfigError`."""
        official = cfg.base.official
        if official and world > 1:
            raise ConfigError("'base.official: 1' reproduces the official single-process loop; run it without torchrun")
        amp = _amp_dtype(cfg, device, official, log)
        fast = cfg.base.fast_conv_grad and device.type == "cpu" and not official and amp is None
        fast = fast and fast_weight_grad_layers(model) > 0
        # channels_last speeds up eager kernels. Compiled CPU code with PyTorch's conv gradients is faster on the plain
        # layout, with ours on channels_last (benchmarks/train_step.py). The official loop is plain NCHW.
        plain = official or (cfg.base.compile and device.type == "cpu" and not fast)
        return cls(mode="official" if official else "default", freeze_outside_groups=not official,
                   memory_format=torch.contiguous_format if plain else torch.channels_last, fast_conv_grad=fast,
                   seeded_loader=not official, amp_dtype=amp, fp32_trunk=official and amp is not None,
                   validation_autocast=not official or objective.official_validation_autocast, compile=cfg.base.compile)


def _amp_dtype(cfg: TrainConfig, device: torch.device, official: bool, log: bool) -> Optional[torch.dtype]:
    """``base.amp``: fp16 autocast with a GradScaler on CUDA. On a CPU the official code runs fp32 (its autocast and
    GradScaler are CUDA-only); the default mode uses bf16 where the CPU computes it natively."""
    if not cfg.base.amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if official:
        return None
    if cpu_has_native_bf16():
        return torch.bfloat16
    if log:
        _logger.info("base.amp: this CPU has no native bf16, so training runs in fp32 (bf16 would be slower)")
    return None
