"""Exponential moving average of a model's weights (Polyak averaging), the copy that is
evaluated and shipped: averaged weights reconstruct and sample better than the last
iterate of a noisy optimiser (used by DDPM, LDM and DiT alike)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `self.model`, a frozen copy of `model` whose parameters track
    ema = decay_t * ema + (1 - decay_t) * param after every `update`, with the warm-up
    decay_t = min(decay, (1 + t) / (10 + t)) so early averages are not dominated by the
    random initialisation. Buffers (e.g. normalisation statistics) are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model` (pass the unwrapped module, not DDP's wrapper)."""
        decay = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.updates += 1
