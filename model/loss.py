"""eDifFIQA's distillation objective, with the official loss modules.

``loss = theta * L_rc + (1 - theta) * L_q`` with

* ``L_rc = mean(CosineEmbeddingLoss(student embedding, teacher embedding, target 1))`` (representation
  consistency: ``1 - cos`` per sample), and
* ``L_q = L1(predicted quality, clamp(q - epsilon * ad, 0, 1))`` where ``ad`` is the same ``CosineEmbeddingLoss``
  between the student embedding and its identity centre, computed without gradient (``ExtendedL1``; validation
  uses the raw label ``q``).

The terms are computed with the official ops in the official order, so gradients agree to the last bit.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from utils.errors import ConfigError

__all__ = ["ExtendedL1", "DistillationLoss", "RegressionLoss", "BASE_LOSSES", "QUALITY_LOSSES", "CONSISTENCY_LOSSES",
           "loss_argument_problem"]

#: Official module strings admitted in configs, mapped to classes (nothing else can be named).
BASE_LOSSES = {"torch.nn.L1Loss": nn.L1Loss, "torch.nn.MSELoss": nn.MSELoss, "torch.nn.SmoothL1Loss": nn.SmoothL1Loss}
QUALITY_LOSSES = ("loss.ExtendedL1",)
#: The arguments a config may give each base loss.
_LOSS_ARGUMENTS = {"torch.nn.L1Loss": ("reduction",), "torch.nn.MSELoss": ("reduction",),
                   "torch.nn.SmoothL1Loss": ("reduction", "beta")}
CONSISTENCY_LOSSES = ("torch.nn.CosineEmbeddingLoss",)


def loss_argument_problem(module: str, params: Dict) -> str:
    """What is wrong with ``params`` for the base loss ``module`` ("" when nothing), without building it."""
    for name, value in params.items():
        if name not in _LOSS_ARGUMENTS[module]:
            return f"it takes {', '.join(_LOSS_ARGUMENTS[module])}, not '{name}'"
        if name == "reduction" and value not in ("none", "mean", "sum"):
            return f"reduction must be none, mean or sum, got {value!r}"
        if name == "beta" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            return f"beta must be a number >= 0, got {value!r}"
    return ""


class ExtendedL1(nn.Module):
    """Quality loss with the label optimised by the sample's position in embedding space: ``base_loss`` on ``(B,)``
    tensors (official ``L1Loss``), ``epsilon`` the weight of the angular distance to the identity centre (0.5)."""

    def __init__(self, base_loss: Optional[nn.Module] = None, epsilon: float = 0.5) -> None:
        super().__init__()
        self.base_loss = base_loss if base_loss is not None else nn.L1Loss()
        self.epsilon = float(epsilon)

    def forward(self, pred: torch.Tensor, quality: torch.Tensor, ad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of predictions ``(B,)`` against labels ``(B,)``: the target is ``clamp(q - epsilon * ad, 0, 1)``
        with the angular distances ``ad`` ``(B,)`` (training), else ``q`` (validation)."""
        if ad is not None:
            return self.base_loss(pred, torch.clamp(quality - self.epsilon * ad, 0.0, 1.0))
        return self.base_loss(pred, quality)


class DistillationLoss(nn.Module):
    """``theta * L_rc + (1 - theta) * L_q``.

    Returns named terms: ``loss`` (the total, to minimise) and each term of :attr:`terms`; the training loop sums,
    logs and plots them by name, so a new term is added here only. ``consistency`` (official
    ``CosineEmbeddingLoss(reduction="none")``) gives ``L_rc`` and ``ad``.
    """

    terms = ("loss_rc", "loss_q")

    def __init__(self, quality_loss: ExtendedL1, consistency: Optional[nn.CosineEmbeddingLoss] = None,
                 theta: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= theta <= 1.0:
            raise ConfigError(f"'loss.theta' must be in [0, 1], got {theta}")
        self.quality_loss = quality_loss
        self.consistency = consistency if consistency is not None else nn.CosineEmbeddingLoss(reduction="none")
        self.theta = float(theta)

    def forward(self, feat: torch.Tensor, pred: torch.Tensor, quality: torch.Tensor, teacher: torch.Tensor,
                centre: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Args: student ``feat`` (B, D), ``pred`` (B, 1), labels (B,), ``teacher`` (B, D), ``centre`` (B, D) or
        None (no label optimisation, as in validation)."""
        target = torch.tensor([1], device=feat.device)  # the official target, broadcast over the batch
        feat = feat.float()
        ad = None
        if centre is not None:
            with torch.no_grad():
                ad = self.consistency(feat, centre, target)
        l_q = self.quality_loss(pred.float().reshape(-1), quality, ad)
        l_rc = torch.mean(self.consistency(feat, teacher, target))
        total = self.theta * l_rc + (1.0 - self.theta) * l_q
        return {"loss": total, "loss_rc": l_rc, "loss_q": l_q}


class RegressionLoss(nn.Module):
    """DifFIQA(R): a regression loss (official ``torch.nn.L1Loss``) of the predicted against the labelled quality;
    no label optimisation and no consistency term. Returns ``loss`` and :attr:`terms` as
    :class:`DistillationLoss`."""

    terms = ("loss_q",)

    def __init__(self, base_loss: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.base_loss = base_loss if base_loss is not None else nn.L1Loss()

    def forward(self, pred: torch.Tensor, quality: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: ``pred`` (B, 1), labels (B,)."""
        l_q = self.base_loss(pred.float().reshape(-1), quality)
        return {"loss": l_q, "loss_q": l_q}
