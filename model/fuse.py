"""Inference-time folding of BatchNorm into the neighbouring convolution or linear layer.

Exact up to float rounding (about 1e-6 relative on the scores). Only layer pairs where folding is exact are folded:
conv -> BN and linear -> BN, and the BN before iResNet's ``fc`` (no padding in between). iResNet's pre-activation BN
(``bn1`` before ``conv1`` in each block) stays, since zero padding after it is not zero padding before it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from model.ediffiqa import EDifFIQA
from model.iresnet import IBasicBlock, IResNet
from model.mobilefacenet import ConvBlock, LinearBlock, MobileFaceNet

__all__ = ["fold_batchnorm"]


def _fold_bn_into_next_linear(bn: nn.BatchNorm2d, fc: nn.Linear, spatial: int) -> nn.Linear:
    """``fc(flatten(bn(x)))`` as one linear layer; ``spatial`` = H * W of the flattened map."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    scale_in = scale.repeat_interleave(spatial)  # flatten order is (C, H, W)
    shift_in = shift.repeat_interleave(spatial)
    fused = nn.Linear(fc.in_features, fc.out_features, bias=True).eval()
    with torch.no_grad():
        fused.weight.copy_(fc.weight * scale_in[None, :])
        bias = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
        fused.bias.copy_(bias + fc.weight @ shift_in)
    return fused


@torch.no_grad()
def fold_batchnorm(model: EDifFIQA) -> EDifFIQA:
    """Return an eval-mode copy of ``model`` with BatchNorm folded away where that is exact."""
    model = copy.deepcopy(model).eval()
    backbone = model.backbone
    if isinstance(backbone, IResNet):
        backbone.conv1 = fuse_conv_bn_eval(backbone.conv1, backbone.bn1)
        backbone.bn1 = nn.Identity()
        for module in backbone.modules():
            if isinstance(module, IBasicBlock):
                module.conv1 = fuse_conv_bn_eval(module.conv1, module.bn2)
                module.bn2 = nn.Identity()
                module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn3)
                module.bn3 = nn.Identity()
                if module.downsample is not None:
                    module.downsample = fuse_conv_bn_eval(module.downsample[0], module.downsample[1])
        fc = _fold_bn_into_next_linear(backbone.bn2, backbone.fc, backbone.fc_scale)
        backbone.bn2 = nn.Identity()
        backbone.fc = fuse_linear_bn_eval(fc, backbone.features)
        backbone.features = nn.Identity()
    elif isinstance(backbone, MobileFaceNet):
        for module in backbone.modules():
            if isinstance(module, (ConvBlock, LinearBlock)):
                module.conv = fuse_conv_bn_eval(module.conv, module.bn)
                module.bn = nn.Identity()
        linear = nn.Linear(backbone.linear.in_features, backbone.linear.out_features, bias=True).eval()
        with torch.no_grad():
            linear.weight.copy_(backbone.linear.weight)
            linear.bias.zero_()
        backbone.linear = fuse_linear_bn_eval(linear, backbone.bn)
        backbone.bn = nn.Identity()
    return model
