"""Exponential moving average of a model, state-dict compatible with ``ema-pytorch`` (as the official trainer used).

``state_dict`` keys: ``initted``, ``step``, ``online_model.*``, ``ema_model.*``. The update rule is ema-pytorch's:
every ``update_every`` steps; up to ``update_after_step`` a plain copy; then a warm-up decay
``1 - (1 + n)^(-2/3)`` capped at ``beta``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """EMA of ``model`` (held as ``online_model``; the average is ``ema_model``)."""

    def __init__(self, model: nn.Module, beta: float = 0.995, update_every: int = 10, update_after_step: int = 100,
                 inv_gamma: float = 1.0, power: float = 2 / 3, min_value: float = 0.0) -> None:
        super().__init__()
        self.beta = beta
        self.online_model = model
        self.ema_model = copy.deepcopy(model)
        self.ema_model.requires_grad_(False)
        self.update_every, self.update_after_step = update_every, update_after_step
        self.inv_gamma, self.power, self.min_value = inv_gamma, power, min_value
        self.register_buffer("initted", torch.Tensor([False]))
        self.register_buffer("step", torch.tensor([0]))

    def current_decay(self) -> float:
        epoch = max(self.step.item() - self.update_after_step - 1, 0.0)
        if epoch <= 0:
            return 0.0
        value = 1 - (1 + epoch / self.inv_gamma) ** -self.power
        return min(max(value, self.min_value), self.beta)

    @torch.no_grad()
    def copy_from_model(self) -> None:
        for ema_p, p in zip(self.ema_model.parameters(), self.online_model.parameters()):
            ema_p.copy_(p)
        for ema_b, b in zip(self.ema_model.buffers(), self.online_model.buffers()):
            ema_b.copy_(b)

    @torch.no_grad()
    def update(self) -> None:
        """Call once per optimiser step."""
        step = int(self.step.item())
        self.step += 1
        if step % self.update_every != 0:
            return
        if step <= self.update_after_step:
            self.copy_from_model()
            return
        if not self.initted.item():
            self.copy_from_model()
            self.initted.fill_(1.0)
        weight = 1.0 - self.current_decay()
        for ema_p, p in zip(self.ema_model.parameters(), self.online_model.parameters()):
            ema_p.lerp_(p, weight)
        for ema_b, b in zip(self.ema_model.buffers(), self.online_model.buffers()):
            ema_b.copy_(b)
