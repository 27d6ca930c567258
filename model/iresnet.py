"""iResNet backbones in the insightface ``arcface_torch`` layout.

Adapted from insightface ``recognition/arcface_torch/backbones/iresnet.py`` (commit 7fadd42, MIT licence). Module and
attribute names are kept exactly, so insightface ``r18/r34/r50/r100/r200`` checkpoints and the ``base_model.*`` part of
the official eDifFIQA checkpoints load with strict key matching. The official ``fp16`` switch is the attribute
``trunk_autocast``; the gradient-checkpoint path, misspelled in the official eDifFIQA copy, is removed.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["IBasicBlock", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("IBasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in IBasicBlock")
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """iResNet feature extractor for 112x112 faces.

    Input ``(B, 3, 112, 112)`` normalised to [-1, 1]; output ``(B, num_features)`` embedding, not L2-normalised.
    """

    fc_scale = 7 * 7

    def __init__(self, block: Callable[..., IBasicBlock], layers: Sequence[int], dropout: float = 0.0,
                 num_features: int = 512, zero_init_residual: bool = False, groups: int = 1,
                 width_per_group: int = 64, replace_stride_with_dilation: Optional[List[bool]] = None) -> None:
        super().__init__()
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=2)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.bn2 = nn.BatchNorm2d(512 * block.expansion, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * block.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        # insightface freezes the scale of the embedding BN; keep it so parameter lists match theirs.
        self.features.weight.requires_grad = False
        # False: the trunk (up to the flatten) runs in fp32 even under the caller's autocast, as the official
        # iResNet does with its fp16=False; fc and features follow the caller.
        self.trunk_autocast = True

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Callable[..., IBasicBlock], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion, eps=1e-05),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces.

        Args:
            x: ``(B, 3, 112, 112)`` images normalised to [-1, 1].

        Returns:
            ``(B, 512)`` embeddings (not L2-normalised).
        """
        with torch.autocast(x.device.type, enabled=False) if not self.trunk_autocast else contextlib.nullcontext():
            x = self.conv1(x)
            x = self.bn1(x)
            x = self.prelu(x)
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            x = self.layer4(x)
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def _iresnet(layers: Sequence[int], **kwargs) -> IResNet:
    return IResNet(IBasicBlock, layers, **kwargs)


def iresnet18(**kwargs) -> IResNet:
    """iResNet-18 (insightface ``r18``)."""
    return _iresnet([2, 2, 2, 2], **kwargs)


def iresnet34(**kwargs) -> IResNet:
    """iResNet-34 (insightface ``r34``)."""
    return _iresnet([3, 4, 6, 3], **kwargs)


def iresnet50(**kwargs) -> IResNet:
    """iResNet-50 (insightface ``r50``)."""
    return _iresnet([3, 4, 14, 3], **kwargs)


def iresnet100(**kwargs) -> IResNet:
    """iResNet-100 (insightface ``r100``)."""
    return _iresnet([3, 13, 30, 3], **kwargs)


def iresnet200(**kwargs) -> IResNet:
    """iResNet-200 (insightface ``r200``)."""
    return _iresnet([6, 26, 60, 6], **kwargs)
