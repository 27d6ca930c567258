"""DifFIQA(R): the regression baseline of the eDifFIQA paper, an FR backbone with one linear layer on top."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["DifFIQAR"]


class DifFIQAR(nn.Module):
    """``Sequential(base=iResNet-100, linear=Linear(512, 1))`` as the authors' ``diffiqa(r).pth`` stores it.

    ``state_dict`` keys are ``base.*`` and ``linear.*``. ``base_model`` and ``mlp`` name the same two parts (without
    adding keys) so the scorer, the ONNX export, BatchNorm folding and the trainer treat it like an eDifFIQA model.

    Args:
        base: Backbone mapping ``(B, 3, 112, 112)`` to ``(B, 512)`` raw embeddings.
        return_feat: If true, ``forward`` returns ``(embedding, quality)``; else only ``quality`` ``(B, 1)``.
    """

    def __init__(self, base: nn.Module, return_feat: bool = False, dim: int = 512) -> None:
        super().__init__()
        self.base = base
        self.linear = nn.Linear(dim, 1)
        self.return_feat = bool(return_feat)

    _ALIASES = {"base_model": "base", "mlp": "linear"}

    @property
    def base_model(self) -> nn.Module:
        return self.base

    @property
    def mlp(self) -> nn.Module:
        return self.linear

    def __setattr__(self, name: str, value) -> None:
        # nn.Module.__setattr__ would register ``base_model = ...`` as a new child (and new keys); keep the layout.
        super().__setattr__(self._ALIASES.get(name, name), value)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, 1)`` qualities (or ``((B, 512), (B, 1))``); no activation."""
        feat = self.base(x)
        quality = self.linear(feat)
        if self.return_feat:
            return feat, quality
        return quality
