"""Generic convolutional building blocks shared by the image models (the frame VAE and any
later pixel-space heads).

Tensor letters: B batch, C channels, H W height and width of the feature map.
All blocks keep the spatial size except `Downsample` (halves it) and `Upsample` (doubles
it); both require even / any sizes respectively, so a model built from them runs at any
H, W divisible by its total factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most `groups` groups; fewer when `channels` is not divisible, so
    narrow layers (e.g. 16 channels with 32 groups) still build."""
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, plus a 1x1
    projection on the skip path when the width changes (He et al. 2016, "Identity Mappings";
    the layout of the LDM autoencoder's ResnetBlock).

    x: (B, C_in, H, W) -> (B, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 convolution (learned, unlike pooling).

    x: (B, C_in, H, W) -> (B, C_out, H/2, W/2); H and W must be even.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % 2 or W % 2:
            raise ValueError(f"Downsample needs even height and width, got {H}x{W}")
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 convolution. Nearest + conv
    avoids the checkerboard artefacts of transposed convolutions (Odena et al. 2016), which
    would show on crisp pixel art.

    x: (B, C_in, H, W) -> (B, C_out, 2H, 2W)
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
