"""DifFIQA(R): the regression baseline of the eDifFIQA paper, an FR backbone with one linear layer on top."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["DifFIQAR"]


class DifFIQAR(nn.Module):
    """``Sequential(base=iResNet-100, linear=Linear(512, 1))`` as the authors' ``diffiqa(r).pth`` stores it.

    ``state_dict`` keys are ``base.*`` and ``linear.*``. Like :class:`model.ediffiqa.EDifFIQA` it has ``backbone``
    and ``embed_and_score``, which is all the scorer, the ONNX export, BatchNorm folding and the trainer use.
    """

    def __init__(self, base: nn.Module, return_feat: bool = False, dim: int = 512) -> None:
        super().__init__()
        self.base = base
        self.linear = nn.Linear(dim, 1)
        self.return_feat = bool(return_feat)

    @property
    def backbone(self) -> nn.Module:
        """The FR backbone (``base``); the same name on :class:`model.ediffiqa.EDifFIQA`."""
        return self.base

    def embed_and_score(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, 512)`` raw embeddings and ``(B, 1)`` qualities (no activation)."""
        feat = self.base(x)
        return feat, self.linear(feat)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``(B, 1)`` qualities, or ``((B, 512), (B, 1))`` when ``return_feat`` is set."""
        feat, quality = self.embed_and_score(x)
        return (feat, quality) if self.return_feat else quality
