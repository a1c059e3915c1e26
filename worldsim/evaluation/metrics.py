"""Image fidelity metrics in torch, batched: PSNR and SSIM per image.

Tensor letters: B images, K channels, H W size. Metric functions take float images
(B, K, H, W) on a common `data_range` (1.0 for [0, 1], 255.0 for [0, 255]) and return one
value per image, (B,); average them yourself (the mean of per-image values is what papers
report). `frame_metrics` does the same for uint8 frames (..., H, W, 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

# PSNR of identical images would be infinite; the MSE floor caps it at 100 dB (data_range 1)
# so averages stay finite.
_MSE_FLOOR = 1e-10
# SSIM constants of Wang et al. 2004 ("Image quality assessment: from error visibility to
# structural similarity"), section III-C: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected images (B, K, H, W), got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE), per image: (B,)."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3)) / data_range**2
    return (-10.0 * torch.log10(mse.clamp_min(_MSE_FLOOR))).float()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
         window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity per image, (B,): the mean SSIM map over channels and over the
    valid (unpadded) window positions, Gaussian-weighted local statistics with population
    (not sample) covariances — the definition of Wang et al. 2004 (as in skimage with
    gaussian_weights=True, use_sample_covariance=False)."""
    _check_pair(x, y)
    B, K, H, W = x.shape
    if H < window or W < window:
        raise ValueError(f"SSIM with a {window}x{window} window needs images at least that "
                         f"large, got {H}x{W}")
    x = x.double() / data_range
    y = y.double() / data_range
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    # Separable Gaussian filter applied to all five statistics at once: (5 B K, 1, H, W).
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    stats = rearrange(stats, "n k h w -> (n k) 1 h w")
    stats = F.conv2d(stats, g.view(1, 1, 1, -1))
    stats = F.conv2d(stats, g.view(1, 1, -1, 1))
    stats = rearrange(stats, "(n b k) 1 h w -> n b k h w", n=5, b=B)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats
    var_x = e_xx - mu_x.pow(2)
    var_y = e_yy - mu_y.pow(2)
    cov = e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1) ** 2, (SSIM_K2) ** 2  # (K L)^2 with L = 1 after dividing by range
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).float()


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float images (N, 3, H, W) in [0, 255]."""
    frames = torch.as_tensor(frames)
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (..., H, W, 3), got {tuple(frames.shape)}")
    return rearrange(frames.reshape(-1, *frames.shape[-3:]), "n h w k -> n k h w").float()


def frame_metrics(real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR and SSIM of uint8 frames (..., H, W, 3), one value per frame: {"psnr": (N,),
    "ssim": (N,)} with N the product of the leading dims."""
    a, b = frames_to_images(real), frames_to_images(fake)
    return {"psnr": psnr(a, b, 255.0), "ssim": ssim(a, b, 255.0)}


def mse_to_psnr(mse: float, data_range: float = 1.0) -> float:
    """The PSNR (dB) that a mean squared error corresponds to."""
    return -10.0 * math.log10(max(mse / data_range**2, _MSE_FLOOR))
