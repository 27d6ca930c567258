"""DifFIQA's Gaussian diffusion around the denoiser: cosine schedule, ``q_sample``, x0 prediction, the training loss
with the clean/degraded mixing, and the short reconstruction chain used for quality scoring.

The module's ``state_dict`` equals ``denoising_diffusion_pytorch.GaussianDiffusion``'s (13 schedule buffers +
``model.*``), which is the ``model`` entry of the official checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import check_finite, describe_mismatch, strip_prefixes
from model.diffusion_unet import DiffusionUnet, diffiqa_unet
from utils.errors import CheckpointError
from utils.io import torch_load, torch_load_reason

__all__ = ["cosine_beta_schedule", "linear_beta_schedule", "GaussianDiffusion", "reconstruction_pairs", "noised_steps",
           "build_diffusion", "read_diffusion_state", "load_diffusion"]

_logger = logging.getLogger(__name__)

def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule in float64: ``(timesteps,)`` betas clipped to [0, 0.999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    abar = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return torch.clip(1 - (abar[1:] / abar[:-1]), 0, 0.999)


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    scale = 1000 / timesteps
    return torch.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=torch.float64)


def _extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``a[t]`` shaped ``(B, 1, 1, 1)`` for broadcasting over images."""
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


def noised_steps(t: int, steps: Optional[int] = None, skip_degenerate: bool = False) -> int:
    """How many noise draws :meth:`GaussianDiffusion.reconstruct` makes (steps whose next time is >= 0)."""
    return sum(1 for a, b in reconstruction_pairs(t, steps) if b >= 0 and not (skip_degenerate and a == b))


def reconstruction_pairs(t: int, steps: Optional[int] = None) -> List[Tuple[int, int]]:
    """The official DDIM step list of ``ddim_sample_at_t``: ``t=5 -> (4,3) (3,2) (2,1) (1,0) (0,0) (0,-1)``.

    ``int``-truncated ``linspace(-1, t - 1, steps + 1)`` reversed, ``steps = t + 1`` by default. The chain starts
    from an image noised at index ``t`` with the model told ``t - 1`` (one index lower, as officially).
    """
    steps = t + 1 if steps is None else steps
    times = torch.linspace(-1, t - 1, steps=steps + 1)
    times_list = list(reversed(times.int().tolist()))
    return list(zip(times_list[:-1], times_list[1:]))


class GaussianDiffusion(nn.Module):
    """Diffusion wrapper; ``forward`` is :meth:`training_loss`, :meth:`reconstruct` restores images.

    Args:
        model: The denoiser ``(B, C, H, W), (B,) -> (B, C, H, W)``.
        image_size: Training/sampling resolution (official 112).
        timesteps: Schedule length (1000).
        sampling_timesteps: The official key; DifFIQA never samples from noise, so it changes nothing.
        loss_type: ``l2`` (official) or ``l1``.
        objective: ``pred_x0`` (official) or ``pred_noise``.
        beta_schedule: ``cosine`` (official) or ``linear``.
        p2_loss_weight_gamma, p2_loss_weight_k: P2 weighting (gamma 0 = none, official).
        ddim_sampling_eta: eta of the DDIM steps (1, official).
        time_bound: Training draws t from ``[time_bound[0], time_bound[1])`` (official ``[0, 100]``).
        T: Training mixes clean and degraded images with ``a = sin(t / T * pi / 2)`` (official 100); None: the
            degraded image as it is.
    """

    def __init__(self, model: DiffusionUnet, *, image_size: int = 112, timesteps: int = 1000,
                 sampling_timesteps: Optional[int] = None, loss_type: str = "l2", objective: str = "pred_x0",
                 beta_schedule: str = "cosine", p2_loss_weight_gamma: float = 0.0, p2_loss_weight_k: float = 1,
                 ddim_sampling_eta: float = 1.0, time_bound: Sequence[int] = (0, 100),
                 T: Optional[int] = 100) -> None:  # noqa: N803 - the official argument name
        super().__init__()
        if objective not in ("pred_noise", "pred_x0"):
            raise ValueError(f"objective must be pred_noise or pred_x0, got '{objective}'")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be l1 or l2, got '{loss_type}'")
        if beta_schedule not in ("cosine", "linear"):
            raise ValueError(f"beta_schedule must be cosine or linear, got '{beta_schedule}'")
        self.model = model
        self.channels = model.channels
        self.image_size = image_size
        self.objective = objective
        self.loss_type = loss_type
        self.ddim_sampling_eta = ddim_sampling_eta
        self.time_bound = (int(time_bound[0]), int(time_bound[1]))
        self.T = T
        betas = cosine_beta_schedule(timesteps) if beta_schedule == "cosine" else linear_beta_schedule(timesteps)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
        self.num_timesteps = int(betas.shape[0])
        self.sampling_timesteps = sampling_timesteps if sampling_timesteps is not None else self.num_timesteps
        if not 0 <= self.time_bound[0] < self.time_bound[1] <= self.num_timesteps:
            raise ValueError(f"time_bound must be [lo, hi] with 0 <= lo < hi <= {self.num_timesteps}, got {time_bound}")
        if T is not None and T <= 0:
            raise ValueError(f"T must be positive or None, got {T}")

        def register(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32))

        register("betas", betas)
        register("alphas_cumprod", abar)
        register("alphas_cumprod_prev", abar_prev)
        register("sqrt_alphas_cumprod", torch.sqrt(abar))
        register("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - abar))
        register("log_one_minus_alphas_cumprod", torch.log(1.0 - abar))
        register("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / abar))
        register("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / abar - 1))
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        register("posterior_variance", posterior_variance)
        register("posterior_log_variance_clipped", torch.log(posterior_variance.clamp(min=1e-20)))
        register("posterior_mean_coef1", betas * torch.sqrt(abar_prev) / (1.0 - abar))
        register("posterior_mean_coef2", (1.0 - abar_prev) * torch.sqrt(alphas) / (1.0 - abar))
        register("p2_loss_weight", (p2_loss_weight_k + abar / (1 - abar)) ** -p2_loss_weight_gamma)

    # ----------------------------------------------------------------------------------------- diffusion maths
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; ``x_start (B, C, H, W)``, ``t (B,)`` int64."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

    def predict_noise_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return ((_extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
                / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * noise)

    def model_predictions(self, x: torch.Tensor, t: torch.Tensor,
                          clip_x_start: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(eps_hat, x0_hat)`` for ``x (B, C, H, W)`` at ``t (B,)``; x0_hat clamped to [-1, 1] when asked."""
        out = self.model(x, t)
        if self.objective == "pred_noise":
            x_start = self.predict_start_from_noise(x, t, out)
            if clip_x_start:
                x_start = torch.clamp(x_start, -1.0, 1.0)
            return out, x_start
        x_start = torch.clamp(out, -1.0, 1.0) if clip_x_start else out
        return self.predict_noise_from_start(x, t, x_start), x_start

    # ----------------------------------------------------------------------------------------- training
    def mix(self, hq: torch.Tensor, lq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(1 - a) hq + a lq`` with ``a = sin(t / T * pi / 2)`` per sample (``lq`` itself when ``T`` is None)."""
        if self.T is None:
            return lq
        a = torch.sin(t.to(hq.dtype) / self.T * (math.pi / 2)).reshape(-1, *((1,) * (hq.ndim - 1)))
        return (1 - a) * hq + a * lq

    def training_loss(self, hq: torch.Tensor, lq: torch.Tensor, t: Optional[torch.Tensor] = None,
                      noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The official denoiser loss on images in [0, 1].

        Args:
            hq: Clean images ``(B, C, H, W)`` in [0, 1].
            lq: Their degraded versions, same shape, in [0, 1].
            t: Timesteps ``(B,)`` (default: uniform in ``[time_bound[0], time_bound[1])``).
            noise: The q_sample noise (default: standard normal).

        Returns:
            Scalar: per-sample mean error (MSE for ``l2``) times the P2 weight, averaged over the batch.
        """
        b = hq.shape[0]
        if t is None:
            t = torch.randint(self.time_bound[0], self.time_bound[1], (b,), device=hq.device).long()
        if noise is None:
            noise = torch.randn_like(hq)
        hq, lq = hq * 2 - 1, lq * 2 - 1
        x = self.q_sample(self.mix(hq, lq, t), t, noise)
        out = self.model(x, t)
        target = hq if self.objective == "pred_x0" else noise
        fn = F.mse_loss if self.loss_type == "l2" else F.l1_loss
        loss = fn(out, target, reduction="none").reshape(b, -1).mean(dim=1)
        return (loss * self.p2_loss_weight.gather(-1, t)).mean()

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, t: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.training_loss(hq, lq, t, noise)

    # ----------------------------------------------------------------------------------------- reconstruction
    @torch.no_grad()
    def reconstruct(self, x_t: torch.Tensor, t: int, skip_degenerate: bool = False,
                    generator: Optional[torch.Generator] = None, steps: Optional[int] = None,
                    noises: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """The official ``ddim_sample_at_t``: restore ``x_t`` (noised at index ``t``, in [-1, 1]) in ``t + 1`` steps.

        Args:
            x_t: Noised images ``(B, C, H, W)``.
            t: The noising index (DifFIQA: 5).
            skip_degenerate: Leave out the ``(0, 0)`` step, an identity up to rounding that costs one UNet call and
                one noise draw (the official code keeps it; keep it for draw-for-draw equality).
            generator: Source of the step noise (default: the global one, as officially).
            steps: Number of DDIM steps (default ``t + 1``, the official chain).
            noises: The step noises, used in order instead of drawing (one per step that adds noise).

        Returns:
            The clamped ``x0_hat`` of the last step, ``(B, C, H, W)`` in [-1, 1].
        """
        img = x_t
        b = img.shape[0]
        drawn = 0
        for time, time_next in reconstruction_pairs(t, steps):
            if skip_degenerate and time == time_next:
                continue
            cond = torch.full((b,), time, device=img.device, dtype=torch.long)
            pred_noise, x_start = self.model_predictions(img, cond, clip_x_start=True)
            if time_next < 0:
                img = x_start
                continue
            alpha = self.alphas_cumprod[time]
            alpha_next = self.alphas_cumprod[time_next]
            sigma = self.ddim_sampling_eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c = (1 - alpha_next - sigma ** 2).sqrt()
            if noises is not None:
                noise = noises[drawn]
                drawn += 1
            elif generator is None:
                noise = torch.randn_like(img)
            else:
                noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
            img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
        return img


# ------------------------------------------------------------------------------------------------- building / loading
def build_diffusion(unet_params: Optional[Mapping[str, Any]] = None,
                    diff_params: Optional[Mapping[str, Any]] = None) -> GaussianDiffusion:
    """The official denoiser by default; ``unet_params`` / ``diff_params`` as in the training config."""
    unet = DiffusionUnet(**dict(unet_params)) if unet_params else diffiqa_unet()
    return GaussianDiffusion(unet, **dict(diff_params or {}))


def read_diffusion_state(path: str, ema: bool = False) -> Dict[str, torch.Tensor]:
    """The diffusion ``state_dict`` from an official/our trainer checkpoint (``model`` or its EMA copy) or a bare one.

    Raises:
        CheckpointError: Missing or unreadable file, or not a DifFIQA denoiser checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"denoiser checkpoint '{path}' not found; pass the official diff_pretrain.pt or a "
                              "model.pt written by train_diffusion.py")
    try:
        data = torch_load(path)
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        raise CheckpointError(f"cannot read denoiser checkpoint '{path}' ({torch_load_reason(exc, path)})") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"'{path}' does not hold a state dict or a trainer checkpoint")
    if ema:
        if not isinstance(data.get("ema"), Mapping):
            raise CheckpointError(f"'{path}' has no 'ema' entry (a trainer checkpoint is needed for the EMA weights)")
        state = {k[len("ema_model."):]: v for k, v in data["ema"].items() if k.startswith("ema_model.")}
        if not state:
            raise CheckpointError(f"the 'ema' entry of '{path}' holds no 'ema_model.*' tensors")
    elif "model" in data and isinstance(data["model"], Mapping):
        state = dict(data["model"])
    else:
        state = dict(data)
    state = strip_prefixes(state)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' is not a DifFIQA denoiser checkpoint (non-tensor entries)")
    if "betas" not in state or not any(k.startswith("model.init_conv.") for k in state):
        some = ", ".join(list(state)[:3])
        raise CheckpointError(f"'{path}' is not a DifFIQA denoiser checkpoint (expected 'betas' and 'model.*' "
                              f"UNet tensors, found {some}...)")
    check_finite(state, path)
    return state


def load_diffusion(path: str, ema: bool = False, unet_params: Optional[Mapping[str, Any]] = None,
                   diff_params: Optional[Mapping[str, Any]] = None) -> GaussianDiffusion:
    """Build the denoiser and load ``path`` strictly (see :func:`read_diffusion_state`); eval mode, on the CPU."""
    state = read_diffusion_state(path, ema)
    model = build_diffusion(unet_params, diff_params)
    mismatch = describe_mismatch(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if mismatch:
        raise CheckpointError(f"denoiser checkpoint '{path}' does not fit this UNet/schedule: {mismatch}; "
                              "check unet_params (official: dim 128, dim_mults [1, 2, 4, 8])")
    model.load_state_dict(state, strict=True)
    _logger.info("denoiser loaded from %s (%s weights)", path, "EMA" if ema else "model")
    return model.eval()
