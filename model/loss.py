"""eDifFIQA's distillation objective.

``loss = theta * L_rc + (1 - theta) * L_q`` with

* ``L_rc = mean(1 - cos(student embedding, teacher embedding))`` (representation consistency,
  ``CosineEmbeddingLoss`` with target 1), and
* ``L_q = L1(predicted quality, clamp(q - epsilon * ad, 0, 1))`` where ``ad = 1 - cos(student embedding, identity
  centre)`` is computed without gradient (``ExtendedL1``; validation uses the raw label ``q``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from utils.errors import ConfigError

__all__ = ["ExtendedL1", "RepresentationLoss", "DistillationLoss", "BASE_LOSSES", "QUALITY_LOSSES",
           "REPRESENTATION_LOSSES"]

#: Official module strings admitted in configs, mapped to classes (nothing else can be named).
BASE_LOSSES = {"torch.nn.L1Loss": nn.L1Loss, "torch.nn.MSELoss": nn.MSELoss, "torch.nn.SmoothL1Loss": nn.SmoothL1Loss}
QUALITY_LOSSES = ("loss.ExtendedL1",)
REPRESENTATION_LOSSES = ("torch.nn.CosineEmbeddingLoss",)


class ExtendedL1(nn.Module):
    """Quality loss with the label optimised by the sample's position in embedding space.

    Args:
        base_loss: Regression loss on ``(B,)`` tensors (official: ``L1Loss``).
        epsilon: Weight of the angular distance to the identity centre (official: 0.5).
    """

    def __init__(self, base_loss: Optional[nn.Module] = None, epsilon: float = 0.5) -> None:
        super().__init__()
        self.base_loss = base_loss if base_loss is not None else nn.L1Loss()
        self.epsilon = float(epsilon)

    def forward(self, pred: torch.Tensor, quality: torch.Tensor, feat: Optional[torch.Tensor] = None,
                centre: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of predictions ``(B, 1)`` or ``(B,)`` against labels ``(B,)``.

        With ``feat`` ``(B, D)`` and ``centre`` ``(B, D)``, the target is ``clamp(q - epsilon * ad, 0, 1)``;
        without them (validation) it is ``q``.
        """
        target = quality
        if feat is not None and centre is not None:
            with torch.no_grad():
                ad = 1.0 - F.cosine_similarity(feat.float(), centre.float(), dim=1)
                target = torch.clamp(quality - self.epsilon * ad, 0.0, 1.0)
        return self.base_loss(pred.float().reshape(-1), target.float())


class RepresentationLoss(nn.Module):
    """``mean(1 - cos(student, teacher))``, i.e. ``CosineEmbeddingLoss`` with all targets 1."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


class DistillationLoss(nn.Module):
    """``theta * L_rc + (1 - theta) * L_q``; returns the total and both terms (named correctly)."""

    def __init__(self, quality_loss: ExtendedL1, theta: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= theta <= 1.0:
            raise ConfigError(f"'loss.theta' must be in [0, 1], got {theta}")
        self.quality_loss = quality_loss
        self.representation_loss = RepresentationLoss()
        self.theta = float(theta)

    def forward(self, feat: torch.Tensor, pred: torch.Tensor, quality: torch.Tensor, teacher: torch.Tensor,
                centre: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Args: student ``feat`` (B, D), ``pred`` (B, 1), labels (B,), ``teacher`` (B, D), ``centre`` (B, D) or None."""
        l_rc = self.representation_loss(feat, teacher)
        l_q = self.quality_loss(pred, quality, feat, centre)
        total = self.theta * l_rc + (1.0 - self.theta) * l_q
        return total, {"loss": total.detach(), "loss_rc": l_rc.detach(), "loss_q": l_q.detach()}
