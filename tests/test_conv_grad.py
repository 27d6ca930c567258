"""The CPU 3x3 convolution weight gradient of model/conv_grad.py against PyTorch's own."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.conv_grad as conv_grad
from model.build import build_model
from model.conv_grad import FastGradConv2d, conv3x3_weight_grad, use_fast_weight_grad


def _reference(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, [stride, stride], [1, 1], [1, 1], False,
                                               [0, 0], 1, [False, True, False])[1]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 7), (8, 8), (9, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_grad_equals_pytorch(stride, size, channels_last, monkeypatch) -> None:
    """float64, odd and even sizes, both layouts, several images per chunk and a last partial chunk."""
    monkeypatch.setattr(conv_grad, "_CHUNK_PIXELS", 2 * (size[0] + 2) * (size[1] + 2))  # chunks of 2 of 5 images
    gen = torch.Generator().manual_seed(stride)
    x = torch.randn(5, 6, *size, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, generator=gen, dtype=torch.float64)
    grad_out = torch.randn_like(F.conv2d(x, weight, None, stride, 1))
    if channels_last:
        x, grad_out = x.contiguous(memory_format=torch.channels_last), grad_out.contiguous(
            memory_format=torch.channels_last)
    ours = conv3x3_weight_grad(x, grad_out, stride)
    assert ours.shape == weight.shape
    torch.testing.assert_close(ours, _reference(x, grad_out, weight, stride), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_autograd_function_gradcheck(stride) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: conv_grad._Conv3x3.apply(a, b, stride), (x, weight))


def test_swapped_model_trains_like_the_original() -> None:
    """eDifFIQA(S): same keys and parameters, same loss and gradients (float32 rounding) as plain nn.Conv2d."""
    torch.manual_seed(0)
    plain = build_model("ediffiqaS", return_feat=True).train()
    fast = copy.deepcopy(plain)
    keys = list(fast.state_dict())
    params = [id(p) for p in fast.parameters()]
    swapped = use_fast_weight_grad(fast)
    assert swapped == 16  # every 3x3 conv of iResNet-18 except the RGB stem
    assert sum(isinstance(m, FastGradConv2d) for m in fast.modules()) == 16
    assert list(fast.state_dict()) == keys and [id(p) for p in fast.parameters()] == params
    x = torch.randn(4, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    losses = []
    for m in (plain, fast):
        m.zero_grad()
        feat, pred = m(x)
        loss = feat.square().mean() + pred.mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    checked = 0
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert (a.grad is None) == (b.grad is None), name  # features.weight is frozen in both
        if a.grad is None:
            continue
        checked += 1
        scale = a.grad.abs().max().clamp_min(1e-12)
        assert (a.grad - b.grad).abs().max() / scale < 1e-4, name
    assert checked > 90


def test_plain_path_outside_cpu_fp32_training(monkeypatch) -> None:
    """No grad, frozen weights and bf16 autocast take nn.Conv2d's path (the custom function never runs)."""
    conv = nn.Conv2d(16, 8, 3, 1, 1, bias=False)
    model = nn.Sequential(conv)
    assert use_fast_weight_grad(model) == 1
    fast = model[0]
    assert fast.weight is conv.weight
    x = torch.randn(2, 16, 5, 5)
    calls = []
    original = conv_grad._Conv3x3.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(conv_grad._Conv3x3, "apply", spy)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), F.conv2d(x, conv.weight, None, 1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    fast.weight.requires_grad_(False)
    fast(x)
    assert calls == []
    fast.weight.requires_grad_(True)
    fast(x).sum().backward()
    assert calls == [1] and fast.weight.grad is not None


def test_ineligible_layers_stay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                          nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, 3, 1), nn.Conv2d(16, 16, 3, 1, 1, bias=True))
    assert use_fast_weight_grad(model) == 0
    assert not any(isinstance(m, FastGradConv2d) for m in model.modules())


def test_compiled_training_step_matches_eager() -> None:
    """Under torch.compile the weight gradient runs as one custom op, without graph breaks, and gives the eager
    gradients."""
    pytest.importorskip("torch._inductor")
    import shutil

    if not any(shutil.which(cc) for cc in ("cc", "gcc", "g++", "clang")):
        pytest.skip("torch.compile needs a C++ compiler, and this machine has none")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.ReLU(), nn.Conv2d(16, 8, 3, 2, 1, bias=False))
    use_fast_weight_grad(net)
    x = torch.randn(2, 16, 8, 8)
    from torch._dynamo.utils import counters

    counters.clear()
    grads = []
    for runner in (net, torch.compile(net)):
        net.zero_grad()
        runner(x).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph: the op was registered up front
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
