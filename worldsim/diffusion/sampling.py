"""Stateless samplers of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
(Karras et al. 2022, Eq. 4 with sigma(t) = t). All share one signature:

    sample(denoiser, x, sigmas, cond, *, callback=None) -> x

x:       the starting point, already noise of level sigmas[0] (e.g. randn * sigmas[0]);
         any shape whose first dim is the batch.
sigmas:  (S + 1,) decreasing levels ending in 0 (`schedules.karras_sigmas`).
cond:    passed through to `denoiser(x, sigma, cond)` untouched.
callback: called as callback(i, x, denoised) after each step, for previews.

Both are deterministic given x: all randomness is in the caller's starting noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None


def _batch_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One noise level per sample: (B,)."""
    return sigma.to(x.device).expand(x.shape[0])


def sample_euler(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, cond: Any, *,
                 callback: Callback = None) -> torch.Tensor:
    """Euler's method: one network evaluation per step (len(sigmas) - 1 in all). DIAMOND found
    it the better choice for few-step world-model sampling."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _batch_sigma(sigma, x), cond)
        d = (x - denoised) / sigma  # the ODE's slope dx/dsigma
        x = x + d * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_heun(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, cond: Any, *,
                callback: Callback = None) -> torch.Tensor:
    """Heun's second-order method, deterministic (Karras et al. 2022, Algorithm 1): two
    evaluations per step, except the last step to sigma = 0, which is an Euler step (the slope
    at 0 is undefined). S steps cost 2S - 1 evaluations."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _batch_sigma(sigma, x), cond)
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            # Trapezoidal correction: average the slopes at both ends (Algorithm 1, lines 9-11).
            denoised_next = denoiser(x_euler, _batch_sigma(sigma_next, x), cond)
            d_next = (x_euler - denoised_next) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "heun": sample_heun}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler called `name`; the error lists the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def num_evaluations(sampler: str, num_steps: int) -> int:
    """Network evaluations a sampler spends on one sample with `num_steps` steps."""
    get_sampler(sampler)
    return num_steps if sampler == "euler" else 2 * num_steps - 1
