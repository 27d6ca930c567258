"""The DifFIQA denoiser: lucidrains' UNet as in ``denoising-diffusion-pytorch`` 0.27.4-0.27.12.

Module names, parameter order and every operation (and its order, so outputs are bitwise equal) follow
``denoising_diffusion_pytorch.Unet`` 0.27.12, which the official DifFIQA checkpoint was trained with; the test
``tests/test_diffusion.py::test_unet_equals_reference`` compares keys and outputs against that package. The
options the official code never uses (self-conditioning, learned variance, learned sinusoidal embeddings) are left
out, so a config asking for them fails instead of building another network.
"""
from __future__ import annotations

import math
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

__all__ = ["DiffusionUnet", "diffiqa_unet"]


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def upsample(dim: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


def downsample(dim: int, dim_out: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim_out, 4, 2, 1)


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel (biased variance) before every use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if torch.is_grad_enabled() and self.weight.requires_grad:
            normalized = self._standardized(eps)
        else:
            # Inference: the standardised weight only changes with the weight (15% of a batch-4 forward otherwise).
            key = (self.weight._version, self.weight.data_ptr(), self.weight.device, eps)
            if getattr(self, "_cache_key", None) != key:
                self._cache = self._standardized(eps)
                self._cache_key = key
            normalized = self._cache
        return F.conv2d(x, normalized, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _standardized(self, eps: float) -> torch.Tensor:
        weight = self.weight
        # einops' reduce, as in the reference, so the rounding is the same
        mean = reduce(weight, "o ... -> o 1 1 1", "mean")
        var = reduce(weight, "o ... -> o 1 1 1", partial(torch.var, unbiased=False))
        return (weight - mean) * (var + eps).rsqrt()


class LayerNorm(nn.Module):
    """Normalisation over channels with a gain and no bias: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of the raw integer timestep: ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=t.device) * -emb)
        emb = t[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int = 8) -> None:
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two weight-standardised conv blocks; the time embedding scales and shifts the first."""

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        time_emb = self.mlp(time_emb)[:, :, None, None]
        scale_shift = time_emb.chunk(2, dim=1)
        h = self.block1(x, scale_shift=scale_shift)
        h = self.block2(h)
        return h + self.res_conv(x)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, heads*c, X, Y) -> (B, heads, c, X*Y)``"""
    b, hc, x, y = t.shape
    return t.reshape(b, heads, hc // heads, x * y)


class LinearAttention(nn.Module):
    """Linear attention (softmax over features for q, over positions for k), output LayerNorm."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        q = q * self.scale
        v = v / (h * w)
        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full attention with L2-normalised queries and keys and a fixed scale of 10 (the middle of the UNet)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32, scale: float = 10) -> None:
        super().__init__()
        self.scale = scale
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        sim = torch.einsum("b h d i, b h d j -> b h i j", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b h i j, b h d j -> b h i d", attn, v)
        # 'b h (x y) d -> b (h d) x y'
        return self.to_out(out.permute(0, 1, 3, 2).reshape(b, -1, h, w))


class DiffusionUnet(nn.Module):
    """The denoiser: ``forward(x (B, C, H, W), t (B,) int64) -> (B, C, H, W)``; H and W divisible by 2^(levels-1).

    Args:
        dim: Base width (official 128).
        init_dim: Width of the 7x7 input conv (default ``dim``).
        out_dim: Output channels (default ``channels``).
        dim_mults: Width multipliers per level (official ``(1, 2, 4, 8)``).
        channels: Image channels.
        resnet_block_groups: GroupNorm groups.
        attn_heads, attn_dim_head: Attention heads and their width (fixed at 4 and 32 in the reference; smaller
            values only make tiny test denoisers cheap).
    """

    def __init__(self, dim: int, init_dim: Optional[int] = None, out_dim: Optional[int] = None,
                 dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3, resnet_block_groups: int = 8,
                 attn_heads: int = 4, attn_dim_head: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.self_condition = False
        init_dim = init_dim if init_dim is not None else dim
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)
        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))

        def block(a: int, b: int) -> ResnetBlock:
            return ResnetBlock(a, b, time_emb_dim=time_dim, groups=resnet_block_groups)

        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= len(in_out) - 1
            self.downs.append(nn.ModuleList([
                block(dim_in, dim_in), block(dim_in, dim_in),
                Residual(PreNorm(dim_in, LinearAttention(dim_in, attn_heads, attn_dim_head))),
                downsample(dim_in, dim_out) if not is_last else nn.Conv2d(dim_in, dim_out, 3, padding=1)]))
        mid_dim = dims[-1]
        self.mid_block1 = block(mid_dim, mid_dim)
        self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim, attn_heads, attn_dim_head)))
        self.mid_block2 = block(mid_dim, mid_dim)
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out)):
            is_last = ind == len(in_out) - 1
            self.ups.append(nn.ModuleList([
                block(dim_out + dim_in, dim_out), block(dim_out + dim_in, dim_out),
                Residual(PreNorm(dim_out, LinearAttention(dim_out, attn_heads, attn_dim_head))),
                upsample(dim_out, dim_in) if not is_last else nn.Conv2d(dim_out, dim_in, 3, padding=1)]))
        self.out_dim = out_dim if out_dim is not None else channels
        self.final_res_block = block(dim * 2, dim)
        self.final_conv = nn.Conv2d(dim, self.out_dim, 1)
        self.levels = len(dim_mults)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time)
        h: List[torch.Tensor] = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            x = attn(x)
            h.append(x)
            x = down(x)
        x = self.mid_block1(x, t)
        x = self.mid_attn(x)
        x = self.mid_block2(x, t)
        for block1, block2, attn, up in self.ups:
            x = torch.cat((x, h.pop()), dim=1)
            x = block1(x, t)
            x = torch.cat((x, h.pop()), dim=1)
            x = block2(x, t)
            x = attn(x)
            x = up(x)
        x = torch.cat((x, r), dim=1)
        x = self.final_res_block(x, t)
        return self.final_conv(x)


def diffiqa_unet() -> DiffusionUnet:
    """The official DifFIQA denoiser: ``Unet(dim=128, dim_mults=(1, 2, 4, 8), channels=3)``, 142,872,835 params."""
    return DiffusionUnet(dim=128, dim_mults=(1, 2, 4, 8), channels=3)
