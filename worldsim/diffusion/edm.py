"""EDM preconditioning and loss (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"), shared by training and sampling through one
`get_scalings`.

The network F never sees raw noisy latents: the denoiser is
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))     (Eq. 7)
and training minimises lambda(sigma) ||D(y + sigma n; sigma) - y||^2 with
lambda = 1 / c_out^2 (Eq. 8 and Table 1), which is the same as a unit-weight regression of F
onto the "effective target" (y - c_skip x) / c_out. `edm_loss` computes it in that form.

Tensor letters: B batch, T frames, C latent channels, h w latent height and width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

# Latents are divided by the VAE's latent scale factor (computed from data, stored in the VAE
# checkpoint) so that they have unit variance; EDM's sigma_data is the data's standard deviation.
SIGMA_DATA = 1.0

# Noise level of context frames at inference. Context frames carry a little noise so the model
# does not trust its own slightly-off predictions as if they were clean (Oasis labels its context
# with noise level 15/1000 of a sigmoid schedule, i.e. sigma ~0.07 in these units; GameNGen
# found context noise "critical" against drift). Training covers it: Diffusion Forcing draws
# every frame's level independently, and the context layout uses exactly this level.
CONTEXT_SIGMA = 0.07

# Training noise levels: log-normal (EDM Sec. 5). DIAMOND uses P_mean = -0.4, P_std = 1.2 for
# data with sigma_data = 0.5; shifted by ln 2 for unit-variance latents. Its higher median than
# EDM's images (-1.2) puts weight on the high levels where the layout of the next frame is set.
TRAIN_P_MEAN = 0.3
TRAIN_P_STD = 1.2
# Clipping of training levels (DIAMOND's 2e-3 and 20, doubled for sigma_data = 1).
TRAIN_SIGMA_MIN = 4e-3
TRAIN_SIGMA_MAX = 40.0

# Sampling schedule (Karras rho schedule). The next frame is largely determined by the context,
# so sampling starts at a lower level than image generation (EDM 80 for sigma_data 0.5);
# DIAMOND starts at 5 for sigma_data = 0.5, i.e. 10 here.
SAMPLE_SIGMA_MIN = 4e-3
SAMPLE_SIGMA_MAX = 10.0
SAMPLE_RHO = 7.0
# At most 4 network evaluations per generated frame by default (DESIGN decision 5).
SAMPLE_STEPS = 4


@dataclass
class DiffusionConfig:
    """Noise levels and sampler of the dynamics model (all in units of the normalised latent)."""

    # Settings added after checkpoints were first written, with the values older ones had.
    ADDED_LATER: ClassVar[dict[str, Any]] = {"train_second_share": 0.0,
                                             "train_second_p_mean": 0.0,
                                             "train_context_sigma_max": 0.0}

    sigma_data: float = SIGMA_DATA
    """Standard deviation of the (normalised) latents; EDM's sigma_data."""
    context_sigma: float = CONTEXT_SIGMA
    """Noise level of context frames at inference (stabilisation against drift)."""
    train_context_sigma_max: float = 0.0
    """Context-noise augmentation (GameNGen, Valevski et al. 2024): above `context_sigma`, the
    frames a training window reads as context (the teacher-forcing layout's context stream and
    every frame's previous-frame input) are noised at a level drawn per frame, log-uniform
    between `context_sigma` and this; the network is told each frame's level, and inference
    keeps `context_sigma`. 0: every context frame at `context_sigma`."""
    train_p_mean: float = TRAIN_P_MEAN
    """Mean of ln(sigma) for training noise levels (log-normal)."""
    train_p_std: float = TRAIN_P_STD
    """Standard deviation of ln(sigma) for training noise levels."""
    train_second_share: float = 0.0
    """Share of training levels drawn from a second log-normal, around `train_second_p_mean`
    (same std): a mixture, e.g. of shifted and default levels (`shifted_noise`). 0: one
    log-normal."""
    train_second_p_mean: float = 0.0
    """Mean of ln(sigma) of the second component (used when `train_second_share` > 0)."""
    train_sigma_min: float = TRAIN_SIGMA_MIN
    """Smallest training noise level (draws are clipped)."""
    train_sigma_max: float = TRAIN_SIGMA_MAX
    """Largest training noise level (draws are clipped)."""
    sampler: str = "euler"
    """Default sampler: "euler" (1 evaluation per step) or "heun" (2 per step, 1 for the last)."""
    num_steps: int = SAMPLE_STEPS
    """Default number of sampler steps per generated frame."""
    sample_sigma_min: float = SAMPLE_SIGMA_MIN
    """Where the sampling schedule's ramp ends: its last step jumps from one ramp interval above
    this level to 0 (`schedules.karras_sigmas`)."""
    sample_sigma_max: float = SAMPLE_SIGMA_MAX
    """First noise level of the sampling schedule."""
    rho: float = SAMPLE_RHO
    """Karras et al. 2022 Eq. 5 schedule exponent."""


@dataclass(frozen=True)
class Scalings:
    """EDM preconditioning coefficients, each shaped like the sigma they came from."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def get_scalings(sigma: torch.Tensor, sigma_data: float) -> Scalings:
    """EDM preconditioning (Karras et al. 2022, Table 1): sigma of any shape (> 0)."""
    total = sigma**2 + sigma_data**2
    return Scalings(
        c_skip=sigma_data**2 / total,          # how much of the noisy input passes through
        c_out=sigma * sigma_data / total.sqrt(),  # scale of the network's correction
        c_in=total.rsqrt(),                    # unit-variance network input
        c_noise=sigma.log() / 4,               # the noise level the network is told
    )


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """`t` with trailing singleton dims up to `ndim` dims, to broadcast over a sample's shape."""
    return t.reshape(*t.shape, *([1] * (ndim - t.ndim)))


def add_noise(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x = y + sigma n (the variance-exploding forward process). sigma (B, T), x0 (B, T, ...)."""
    return x0 + append_dims(sigma, x0.ndim) * noise


def edm_loss(net_out: torch.Tensor, x0: torch.Tensor, x_noisy: torch.Tensor,
             scalings: Scalings, position_weight: torch.Tensor | None = None) -> torch.Tensor:
    """EDM loss per frame: ||F - (y - c_skip x) / c_out||^2 averaged over (C, h, w), which
    equals lambda(sigma) ||D(x) - y||^2 with lambda = 1 / c_out^2 (Eq. 8).

    net_out, x0, x_noisy: (B, T, C, h, w); scalings shaped (B, T); position_weight: optional
    (h, w) weights of the latent positions, normalised here to mean 1 so that the loss keeps
    its scale. Returns (B, T) in fp32.
    """
    c_skip = append_dims(scalings.c_skip, x0.ndim)
    c_out = append_dims(scalings.c_out, x0.ndim)
    target = (x0 - c_skip * x_noisy) / c_out
    error = (net_out.float() - target.float()).pow(2)
    if position_weight is not None:
        error = error * (position_weight / position_weight.mean()).to(error)
    return error.flatten(2).mean(-1)


class Network(Protocol):
    def __call__(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any) -> torch.Tensor: ...


def frame_sigmas(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Noise levels per frame, (B, T), from sigma (B, T), (B,) or a scalar; x (B, T, ...)."""
    B, T = x.shape[:2]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 1:
        sigma = sigma[:, None]
    return sigma.expand(B, T)


@dataclass
class Denoiser:
    """D(x; sigma, cond) around a network F(x_in, c_noise, cond), the contract every sampler
    uses (`denoiser(x, sigma, cond)`). Holds no parameters of its own.

    x: (B, T, C, h, w) noisy latents; sigma: (B, T) per frame or (B,) for all frames of a
    sample; cond: whatever the network needs besides x and the noise level (opaque here).
    """

    net: Network
    sigma_data: float = SIGMA_DATA

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        sigma = frame_sigmas(sigma, x)
        s = get_scalings(sigma, self.sigma_data)
        net_out = self.net(append_dims(s.c_in, x.ndim) * x, s.c_noise, cond)
        # Eq. 7; the network may run in bf16, the skip path stays in x's precision.
        return append_dims(s.c_skip, x.ndim) * x + append_dims(s.c_out, x.ndim) * net_out.to(x.dtype)

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, cond: Any,
             noise: torch.Tensor) -> torch.Tensor:
        """Per-frame EDM loss (B, T) of denoising x0 + sigma * noise."""
        sigma = frame_sigmas(sigma, x0)
        s = get_scalings(sigma, self.sigma_data)
        x_noisy = add_noise(x0, sigma, noise)
        net_out = self.net(append_dims(s.c_in, x0.ndim) * x_noisy, s.c_noise, cond)
        return edm_loss(net_out, x0, x_noisy, s)


@dataclass
class OffsetDenoiser:
    """Diffusion of the difference from a known reference: D'(x) = offset + D(x - offset).

    Next-frame prediction diffuses the change from the previous frame (x = that frame + the
    noisy change), so a network that outputs zeros already copies the last frame, and its
    capacity goes to what moves. The samplers see absolute latents and need no change; start
    them at offset + noise. offset broadcasts against x (B, T, C, h, w).
    """

    denoiser: Denoiser
    offset: torch.Tensor

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.offset + self.denoiser(x - self.offset, sigma, cond)


@dataclass
class GuidedDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): D_u + scale * (D_c - D_u), where D_c is
    the denoiser under the condition and D_u without it (the same model with what is guided on
    left out). scale 1 is D_c; above 1 it pushes the sample further toward what the condition
    changes.

    Both predictions come from one network call on a doubled batch, so the conditioning the
    sampler passes must be paired: 2B rows, the first B with the condition, the last B
    without it (`DynamicsModel.step` builds it). One call of 2B rows instead of two calls of
    B: at the small batches of play and evaluation the network's cost is mostly per call.
    """

    denoiser: Denoiser
    scale: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond)
        conditional, unconditional = both.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)


def residual_diffusion_config(residual_std: float, **overrides: Any) -> DiffusionConfig:
    """Noise levels for diffusing frame-to-frame changes of standard deviation `residual_std`
    (in normalised latent units): sigma_data is that standard deviation, and the training and
    sampling levels, which the defaults set for sigma_data = 1, scale with it. The context
    level stays in latent units: it is noise on whole frames, not on changes."""
    scale = float(residual_std) / SIGMA_DATA
    return DiffusionConfig(**{
        "sigma_data": float(residual_std),
        "train_p_mean": default_train_p_mean(residual_std),
        "train_sigma_min": TRAIN_SIGMA_MIN * scale,
        "train_sigma_max": TRAIN_SIGMA_MAX * scale,
        "sample_sigma_min": SAMPLE_SIGMA_MIN * scale,
        "sample_sigma_max": SAMPLE_SIGMA_MAX * scale,
        **overrides})


def default_train_p_mean(sigma_data: float) -> float:
    """The default mean of ln(sigma) of the training levels for data of standard deviation
    `sigma_data`: TRAIN_P_MEAN, which is set for sigma_data = 1, moved with the data's scale
    (what `DiffusionConfig()` and `residual_diffusion_config` use, before any shift)."""
    return TRAIN_P_MEAN + math.log(float(sigma_data) / SIGMA_DATA)


def shifted_noise(config: DiffusionConfig, shift: float, share: float = 1.0) -> DiffusionConfig:
    """`config` with its training noise levels moved up (shift > 0) or down by `shift` in
    ln(sigma); the sampling levels stay where they are. With `share` < 1 only that share of
    the levels moves: the rest keep `config`'s (main) log-normal, as the mixture's second
    component. A config that already is a mixture has both components moved when `share` is 1;
    it cannot be split again."""
    if not 0 < share <= 1:
        raise ValueError(f"the share of shifted training levels must be in (0, 1], got {share}")
    if share == 1:
        second = config.train_second_p_mean + (float(shift) if config.train_second_share else 0.0)
        return dataclasses.replace(config, train_p_mean=config.train_p_mean + float(shift),
                                   train_second_p_mean=second)
    if config.train_second_share > 0:
        raise ValueError("the training levels already are a mixture (a share "
                         f"{config.train_second_share} around ln sigma "
                         f"{config.train_second_p_mean:.3f}); only a whole shift can move them")
    return dataclasses.replace(config, train_p_mean=config.train_p_mean + float(shift),
                               train_second_share=1.0 - share,
                               train_second_p_mean=config.train_p_mean)
