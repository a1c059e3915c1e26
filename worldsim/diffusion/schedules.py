"""Noise levels: the distribution training draws them from, and the decreasing sequences
samplers walk down. Pure functions of their arguments (no stateful scheduler objects)."""

from __future__ import annotations

import torch


def sample_training_sigmas(shape: tuple[int, ...], *, p_mean: float, p_std: float,
                           sigma_min: float, sigma_max: float,
                           generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent log-normal noise levels, ln(sigma) ~ N(p_mean, p_std^2) (Karras et al. 2022,
    Sec. 5), clipped to [sigma_min, sigma_max]. For Diffusion Forcing, `shape` is (B, T): every
    frame of every window gets its own level."""
    log_sigma = torch.randn(shape, generator=generator, device=device) * p_std + p_mean
    return log_sigma.exp().clamp(sigma_min, sigma_max)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The sampling schedule of Karras et al. 2022, Eq. 5: `num_steps` levels from sigma_max
    down to sigma_min, evenly spaced in sigma^(1/rho), followed by a final 0.
    Returns (num_steps + 1,) float32."""
    if num_steps < 1:
        raise ValueError(f"a sampling schedule needs at least one step, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    if num_steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)  # one step: straight from sigma_max to 0
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)
