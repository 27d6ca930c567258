"""The eDifFIQA wrapper: an FR backbone followed by the MLP quality head."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["EDifFIQA"]


class EDifFIQA(nn.Module):
    """FR backbone (``base_model``) + quality head (``mlp``); its ``state_dict()`` is the official checkpoint layout.

    Args:
        base_model: Backbone mapping ``(B, 3, 112, 112)`` to ``(B, 512)`` embeddings.
        mlp: Head mapping ``(B, 512)`` embeddings to ``(B, 1)`` qualities.
        return_feat: If true, ``forward`` returns ``(embedding, quality)``; else only ``quality``.
    """

    def __init__(self, base_model: nn.Module, mlp: nn.Module, return_feat: bool = False) -> None:
        super().__init__()
        self.base_model = base_model
        self.mlp = mlp
        self.return_feat = bool(return_feat)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Score faces.

        Args:
            x: ``(B, 3, 112, 112)`` images normalised to [-1, 1] (see :func:`dataset.preprocess`).

        Returns:
            ``(B, 1)`` qualities (higher is better), or ``((B, 512) embeddings, (B, 1) qualities)`` when
            ``return_feat`` is set.
        """
        feat = self.base_model(x)
        quality = self.mlp(feat)
        if self.return_feat:
            return feat, quality
        return quality
