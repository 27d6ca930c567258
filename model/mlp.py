"""The eDifFIQA quality-regression head."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Linear -> GELU -> Linear, keys ``l1``, ``ac``, ``l2`` as in the official checkpoints.

    There is no output activation: the quality is an unbounded regression value (about 0..1 for trained models).
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 1024, out_dim: int = 1) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_dim, hidden_dim)
        self.ac = nn.GELU()
        self.l2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_dim)`` embeddings to ``(B, out_dim)`` qualities."""
        return self.l2(self.ac(self.l1(x)))
