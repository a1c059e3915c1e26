"""Noise levels: the distribution training draws them from, and the decreasing sequences
samplers walk down. Pure functions of their arguments (no stateful scheduler objects)."""

from __future__ import annotations

import math

import torch


def sample_training_sigmas(shape: tuple[int, ...], *, p_mean: float, p_std: float,
                           sigma_min: float, sigma_max: float, second_share: float = 0.0,
                           second_p_mean: float = 0.0,
                           generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent log-normal noise levels, ln(sigma) ~ N(p_mean, p_std^2) (Karras et al. 2022,
    Sec. 5), clipped to [sigma_min, sigma_max]. For Diffusion Forcing, `shape` is (B, T): every
    frame of every window gets its own level. With `second_share` > 0 the levels come from a
    mixture: that share of them, chosen independently, is drawn around `second_p_mean`
    instead (same p_std)."""
    log_sigma = torch.randn(shape, generator=generator, device=device) * p_std + p_mean
    if second_share > 0:
        second = torch.rand(shape, generator=generator, device=device) < second_share
        log_sigma = torch.where(second, log_sigma + (second_p_mean - p_mean), log_sigma)
    return log_sigma.exp().clamp(sigma_min, sigma_max)


def training_share_at_or_below(level: float, *, p_mean: float, p_std: float,
                               second_share: float = 0.0, second_p_mean: float = 0.0) -> float:
    """The share of `sample_training_sigmas`' levels at or below `level` (before clipping)."""
    def normal_cdf(mean: float) -> float:
        if p_std == 0:
            return float(math.log(level) >= mean)
        return 0.5 * math.erfc(-(math.log(level) - mean) / (p_std * math.sqrt(2)))

    return (1 - second_share) * normal_cdf(p_mean) + second_share * normal_cdf(second_p_mean)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The sampling schedule of Karras et al. 2022, Eq. 5, for few steps: a ramp evenly spaced
    in sigma^(1/rho) from sigma_max toward sigma_min in `num_steps` intervals, of which the
    sampler visits the first `num_steps` levels and then steps straight to 0.
    Returns (num_steps + 1,) float32: sigma_max, ..., then 0.

    EDM's schedule visits sigma_min itself before the final 0. At the 1-4 steps a world model
    samples with, that costs a network evaluation at a level (1e-3) where the frame is already
    decided: on the shipped model 2 such steps drew the same dreams as 1, and 4 the same as 3
    (`docs/DESIGN-NOTES.md`, sampler steps). Here every evaluation sits at a level where
    something is still undecided; one step is sigma_max -> 0 as before."""
    if num_steps < 1:
        raise ValueError(f"a sampling schedule needs at least one step, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)[:-1]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)
