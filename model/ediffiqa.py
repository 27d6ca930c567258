"""The eDifFIQA wrapper: an FR backbone followed by the MLP quality head."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["EDifFIQA"]


class EDifFIQA(nn.Module):
    """FR backbone (``base_model``) + quality head (``mlp``); its ``state_dict()`` is the official checkpoint layout."""

    def __init__(self, base_model: nn.Module, mlp: nn.Module, return_feat: bool = False) -> None:
        super().__init__()
        self.base_model = base_model
        self.mlp = mlp
        self.return_feat = bool(return_feat)

    @property
    def backbone(self) -> nn.Module:
        """The FR backbone (``base_model``); the same name on :class:`model.diffiqa_r.DifFIQAR`."""
        return self.base_model

    def embed_and_score(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, 112, 112)`` in [-1, 1] (:func:`dataset.preprocess`) -> ``(B, 512)`` embeddings and ``(B, 1)``
        qualities (higher is better): the one forward path, of ``forward``, scoring, the ONNX export and training."""
        feat = self.base_model(x)
        return feat, self.mlp(feat)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``(B, 1)`` qualities, or ``((B, 512) embeddings, (B, 1) qualities)`` when ``return_feat`` is set (as the
        official wrapper)."""
        feat, quality = self.embed_and_score(x)
        return (feat, quality) if self.return_feat else quality
