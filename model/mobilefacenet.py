"""MobileFaceNet, the backbone of eDifFIQA(T).

Same layout as the MobileFaceNet of TreB1eN/InsightFace_Pytorch (MIT licence), which the official eDifFIQA(T)
checkpoint uses: ``conv1 .. conv_6_dw``, ``linear`` (no bias) and ``bn``. Unlike iResNet, the output is L2-normalised.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MobileFaceNet", "mobilefacenet"]

_Pair = Tuple[int, int]


class LinearBlock(nn.Module):
    """Conv -> BN without activation (keys ``conv``, ``bn``)."""

    def __init__(self, in_c: int, out_c: int, kernel: _Pair = (1, 1), stride: _Pair = (1, 1),
                 padding: _Pair = (0, 0), groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, groups=groups, stride=stride, padding=padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBlock(LinearBlock):
    """Conv -> BN -> PReLU (keys ``conv``, ``bn``, ``prelu``)."""

    def __init__(self, in_c: int, out_c: int, kernel: _Pair = (1, 1), stride: _Pair = (1, 1),
                 padding: _Pair = (0, 0), groups: int = 1) -> None:
        super().__init__(in_c, out_c, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(super().forward(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise 3x3, 1x1 linear projection."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, kernel: _Pair = (3, 3),
                 stride: _Pair = (2, 2), padding: _Pair = (1, 1), groups: int = 1) -> None:
        super().__init__()
        self.conv = ConvBlock(in_c, groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.conv_dw = ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride)
        self.project = LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual :class:`DepthWise` blocks (key ``model``)."""

    def __init__(self, c: int, num_block: int, groups: int, kernel: _Pair = (3, 3), stride: _Pair = (1, 1),
                 padding: _Pair = (1, 1)) -> None:
        super().__init__()
        self.model = nn.Sequential(*[
            DepthWise(c, c, residual=True, kernel=kernel, padding=padding, stride=stride, groups=groups)
            for _ in range(num_block)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet feature extractor for 112x112 faces.

    Input ``(B, 3, 112, 112)`` normalised to [-1, 1]; output ``(B, embedding_size)`` L2-normalised embedding.
    """

    def __init__(self, embedding_size: int = 512) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
        self.conv2_dw = ConvBlock(64, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
        self.conv_23 = DepthWise(64, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128)
        self.conv_3 = Residual(64, num_block=4, groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_34 = DepthWise(64, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256)
        self.conv_4 = Residual(128, num_block=6, groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_45 = DepthWise(128, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512)
        self.conv_5 = Residual(128, num_block=2, groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_6_sep = ConvBlock(128, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.conv_6_dw = LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0))
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces.

        Args:
            x: ``(B, 3, 112, 112)`` images normalised to [-1, 1].

        Returns:
            ``(B, 512)`` L2-normalised embeddings.
        """
        out = self.conv1(x)
        out = self.conv2_dw(out)
        out = self.conv_23(out)
        out = self.conv_3(out)
        out = self.conv_34(out)
        out = self.conv_4(out)
        out = self.conv_45(out)
        out = self.conv_5(out)
        out = self.conv_6_sep(out)
        out = self.conv_6_dw(out)
        out = torch.flatten(out, 1)
        out = self.linear(out)
        out = self.bn(out)
        # torch.div(x, norm) as in the reference l2_norm; F.normalize adds an eps that only matters for zero vectors.
        return F.normalize(out, p=2.0, dim=1)


def mobilefacenet(embedding_size: int = 512) -> MobileFaceNet:
    """MobileFaceNet with a 512-d embedding."""
    return MobileFaceNet(embedding_size)
