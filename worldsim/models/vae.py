"""The frame VAE: a per-frame convolutional KL autoencoder between RGB frames and latents.

Tensor letters: B batch, C latent channels, H W frame size, h w latent size (H/f, W/f for
spatial factor f), K image channels (3).

    frames uint8 (..., H, W, 3) --encode_frames--> scaled latents float (..., C, h, w)
    scaled latents (..., C, h, w) --decode_frames--> frames uint8 (..., H, W, 3)

`encode` / `decode` do the same on float images (B, 3, H, W) in [-1, 1] and keep the
autograd graph. "Scaled" latents are the posterior mean z mapped to zero mean and unit
variance per channel: (z - latent_shift) * latent_scale. Shift and scale are buffers set by
`calibrate()` from training frames and stored with the weights (decision 2 of DESIGN.md).

Architecture (all convolutional, so any H, W divisible by the factor works):
  encoder: space-to-depth by s (`stem_factor`), 3x3 conv, then per level `encoder_blocks`
           ResBlocks and a strided-conv Downsample, ending at h x w with a 3x3 conv to the
           posterior's mean and log-variance (2C channels).
  decoder: 3x3 conv from C channels, per level `decoder_blocks` ResBlocks and an Upsample,
           ending with a 3x3 conv to 3 * s^2 channels and depth-to-space by s.
           Pixel shuffle at the output avoids running any convolution at
           full resolution, which is where a small decoder spends most of its time.
`channels` lists the widths of the levels from the highest resolution to the latent
level; whatever part of the factor the levels do not cover is the stem's s.

The latent space: every model downstream (dynamics, reward model, frame refiner, the latent
cache) is trained on the encoder's latents, so it is bound to `latent_fingerprint()`. A VAE
whose decoder was refitted with the encoder and statistics kept (`worldsim train vae
--init-from VAE --decoder-only`) records the latent space it keeps (`latent_space`) and stays
interchangeable with the VAE it came from; loading checks that its encoder still is that one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldsim.models.layers import Downsample, ResBlock, Upsample, group_norm

# Log-variance clamp of the diagonal Gaussian posterior, as in the LDM autoencoder: keeps
# exp() finite early in training when the encoder's outputs are still large.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class VAEConfig:
    """Shape and width of the frame VAE."""

    factor: int = 4
    """Spatial downsampling factor f (a power of 2): H x W frames become H/f x W/f latents."""
    latent_channels: int = 4
    """Latent channels C."""
    channels: tuple[int, ...] = (128,)
    """Widths of the network's resolution levels, from the highest resolution to the latent
    resolution; each extra level halves the resolution once. The rest of the factor is
    space-to-depth at the input (and depth-to-space at the output): with f=4, (128,) runs
    everything at H/4 on 4x4 pixel patches, (64, 128) runs one level at H/2."""
    encoder_blocks: int = 1
    """ResBlocks per level in the encoder."""
    decoder_blocks: int = 1
    """ResBlocks per level in the decoder (its speed sets the frame rate of live play)."""
    groups: int = 8
    """GroupNorm groups."""
    stem_factor: int = 0
    """Space-to-depth factor s at the input (and depth-to-space at the output); it follows
    from `factor` and `channels` (factor / 2^(len(channels) - 1)). 0 = derive it; any
    other value must equal the derived one."""

    def __post_init__(self):
        f = self.factor
        if f < 1 or f & (f - 1):
            raise ValueError(f"VAEConfig.factor must be a power of 2, got {f}")
        self.channels = tuple(self.channels)
        if not 1 <= len(self.channels) <= int(math.log2(f)) + 1:
            raise ValueError(f"VAEConfig.channels lists one width per resolution level; "
                             f"factor {f} allows 1 to {int(math.log2(f)) + 1} levels, got "
                             f"{self.channels}")
        derived = f // 2 ** (len(self.channels) - 1)
        if self.stem_factor not in (0, derived):
            raise ValueError(f"VAEConfig.stem_factor {self.stem_factor} disagrees with factor "
                             f"{f} and {len(self.channels)} channel levels (stem {derived})")
        self.stem_factor = derived


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> float images (B, 3, H, W) in [-1, 1]."""
    return rearrange(frames, "b h w k -> b k h w").float() / 127.5 - 1.0


def images_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float images (B, 3, H, W) in about [-1, 1] -> uint8 frames (B, H, W, 3)."""
    x = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "b k h w -> b h w k").contiguous()


def _as_tensor(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of `data`; read-only arrays (memory-mapped episodes) are copied first,
    since torch tensors must be writable."""
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        data = np.array(data)
    return torch.as_tensor(data)


class DiagonalGaussian(NamedTuple):
    """The posterior q(z|x): mean and log-variance, each (B, C, h, w), unscaled."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self) -> torch.Tensor:
        return self.mean + torch.exp(0.5 * self.logvar) * torch.randn_like(self.mean)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per element, (B, C, h, w)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)


class VAEOutput(NamedTuple):
    """What a training forward pass returns. recon: (B, 3, H, W) in roughly [-1, 1]."""

    recon: torch.Tensor
    posterior: DiagonalGaussian


class Encoder(nn.Module):
    """x (B, 3, H, W) in [-1, 1] -> posterior mean and log-variance, each (B, C, h, w)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        s, ch = cfg.stem_factor, cfg.channels
        self.stem_factor = s
        self.stem = nn.Conv2d(3 * s * s, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, width in enumerate(ch):
            layers += [ResBlock(width, width, cfg.groups) for _ in range(cfg.encoder_blocks)]
            if i + 1 < len(ch):
                layers.append(Downsample(width, ch[i + 1]))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(ch[-1], cfg.groups)
        self.out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        s = self.stem_factor
        x = rearrange(x, "b k (h s1) (w s2) -> b (k s1 s2) h w", s1=s, s2=s)
        h = self.out(F.silu(self.norm(self.body(self.stem(x)))))  # (B, 2C, h, w)
        mean, logvar = h.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))


class Decoder(nn.Module):
    """z (B, C, h, w), unscaled -> image (B, 3, H, W), unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        s, ch = cfg.stem_factor, cfg.channels
        self.stem_factor = s
        self.inp = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        layers: list[nn.Module] = []
        for i in reversed(range(len(ch))):
            layers += [ResBlock(ch[i], ch[i], cfg.groups) for _ in range(cfg.decoder_blocks)]
            if i > 0:
                layers.append(Upsample(ch[i], ch[i - 1]))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(ch[0], cfg.groups)
        self.out = nn.Conv2d(ch[0], 3 * s * s, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.stem_factor
        h = self.out(F.silu(self.norm(self.body(self.inp(z)))))  # (B, 3 s s, H/s, W/s)
        return rearrange(h, "b (k s1 s2) h w -> b k (h s1) (w s2)", s1=s, s2=s)


class VAE(nn.Module):
    """The frame VAE. See the module docstring for the data flow and shapes."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        C = cfg.latent_channels
        # Identity until `calibrate()` measures the training data; saved with the weights.
        self.register_buffer("latent_shift", torch.zeros(C))
        self.register_buffer("latent_scale", torch.ones(C))
        # The latent fingerprint of the VAE whose encoder and latent statistics this one kept
        # when its decoder was refitted; None: the latent space is its own.
        self.latent_space: str | None = None

    # ------------------------------------------------------------------ shapes
    @property
    def factor(self) -> int:
        return self.cfg.factor

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def device(self) -> torch.device:
        return self.latent_scale.device

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an H x W frame; raises if f does not divide H, W."""
        f = self.cfg.factor
        if height % f or width % f:
            raise ValueError(f"frame size {height}x{width} is not divisible by the VAE's "
                             f"spatial factor {f}")
        return (self.cfg.latent_channels, height // f, width // f)

    # ------------------------------------------------------------------ float API
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, 3, H, W) in [-1, 1] -> q(z|x) with unscaled mean/logvar (B, C, h, w)."""
        B, K, H, W = x.shape
        if K != 3:
            raise ValueError(f"expected 3 image channels, got input of shape {tuple(x.shape)}")
        self.latent_shape(H, W)
        return self.encoder(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> VAEOutput:
        """Training pass: x (B, 3, H, W) -> reconstruction of a posterior sample."""
        posterior = self.posterior(x)
        return VAEOutput(self.decoder(posterior.sample()), posterior)

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, C, h, w) -> unit-variance latents."""
        return (z - self.latent_shift[:, None, None]) * self.latent_scale[:, None, None]

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.latent_scale[:, None, None] + self.latent_shift[:, None, None]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, h, w) (the posterior mean)."""
        return self.scale(self.posterior(x).mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> image (B, 3, H, W), roughly in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"expected latents (B, {self.cfg.latent_channels}, h, w), got "
                             f"{tuple(z.shape)}")
        z = self.unscale(z.float()).contiguous(memory_format=torch.channels_last)
        return self.decoder(z)

    # ------------------------------------------------------------------ uint8 API
    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """frames uint8 (..., H, W, 3) -> scaled latents float32 (..., C, h, w) on the VAE's
        device. No autograd; wrap in `worldsim.runtime.autocast` for bf16."""
        frames = _as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (..., H, W, 3), got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).to(self.device, non_blocking=True)
        z = self.encode(frames_to_images(x)).float()
        return z.reshape(*lead, *z.shape[1:]).contiguous()

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scaled latents (..., C, h, w) -> frames uint8 (..., H, W, 3) on the VAE's device.
        No autograd; wrap in `worldsim.runtime.autocast` for bf16."""
        latents = _as_tensor(latents)
        if latents.ndim < 3:
            raise ValueError(f"expected latents (..., C, h, w), got {tuple(latents.shape)}")
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]).to(self.device, non_blocking=True)
        frames = images_to_frames(self.decode(z))
        return frames.reshape(*lead, *frames.shape[1:]).contiguous()

    @torch.no_grad()
    def round_trip(self, latents: torch.Tensor | np.ndarray) -> torch.Tensor:
        """encode_frames(decode_frames(latents)): scaled latents (..., C, h, w) -> the same
        shape, through uint8 frames, as a simulator that re-encodes its frames continues."""
        return self.encode_frames(self.decode_frames(latents))

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256
                  ) -> dict[str, list[float]]:
        """Set `latent_shift` / `latent_scale` so that the posterior means of `frames` (uint8
        (N, H, W, 3), training data) have zero mean and unit variance per channel. Returns
        the measured statistics."""
        total = torch.zeros(self.cfg.latent_channels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for i in range(0, len(frames), batch_size):
            x = frames_to_images(_as_tensor(frames[i:i + batch_size]).to(self.device))
            z = self.posterior(x).mean.double().cpu()
            total += z.sum(dim=(0, 2, 3))
            total_sq += z.pow(2).sum(dim=(0, 2, 3))
            count += z.shape[0] * z.shape[2] * z.shape[3]
        if count == 0:
            raise ValueError("calibrate() needs at least one frame")
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        self.latent_shift.copy_(mean.float())
        self.latent_scale.copy_(1.0 / std.float())
        return {"latent_mean": mean.tolist(), "latent_std": std.tolist()}

    # ------------------------------------------------------------------ persistence
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the weights and latent statistics: the latent cache's tag."""
        from worldsim.training.checkpoint import tensors_fingerprint

        return tensors_fingerprint(self.state_dict())

    def encoder_fingerprint(self) -> str:
        """SHA-256 (hex) of what maps frames to latents: the encoder's weights and the latent
        statistics (everything but the decoder)."""
        from worldsim.training.checkpoint import tensors_fingerprint

        return tensors_fingerprint({k: v for k, v in self.state_dict().items()
                                    if not k.startswith("decoder.")})

    def latent_fingerprint(self) -> str:
        """The name of the latent space, which models trained on these latents record: the
        VAE's own fingerprint, or, for a refitted decoder, that of the VAE it came from."""
        return self.latent_space or self.fingerprint()

    def describe(self) -> dict[str, Any]:
        """The JSON description saved beside the weights."""
        out = {"kind": "vae", "vae": dataclasses.asdict(self.cfg),
               "latent_shift": self.latent_shift.tolist(),
               "latent_scale": self.latent_scale.tolist()}
        if self.latent_space is not None:
            out["latent_space"] = {"fingerprint": self.latent_space,
                                   "encoder": self.encoder_fingerprint()}
        return out

    def save(self, directory: str | os.PathLike, metrics: dict | None = None,
             extra: dict | None = None) -> Path:
        """Write a standalone checkpoint: config.json + model.safetensors."""
        from worldsim.training.checkpoint import save_checkpoint, versions

        config = {**self.describe(), "versions": versions(), "metrics": metrics or {},
                  **(extra or {})}
        return save_checkpoint(directory, config, {"model": self.state_dict()})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        weights: str | None = None) -> VAE:
        """Load a VAE from a checkpoint directory: one written by `save()`, a training
        checkpoint (EMA weights by default, else `weights="model"`), or a training run's
        output directory (its latest checkpoint). Strict: the config must describe a VAE and
        every tensor must fit."""
        from worldsim.training.checkpoint import dataclass_from_dict, load_state_dict_strict
        from worldsim.training.loop import read_model_checkpoint

        directory, meta, group, tensors = read_model_checkpoint(path, "vae", keys=("vae",),
                                                                weights=weights, name="VAE")
        cfg = dataclass_from_dict(VAEConfig, meta["vae"], f"vae config in {directory}")
        vae = cls(cfg)
        load_state_dict_strict(vae, tensors, f"{directory}/{group}.safetensors")
        if "latent_space" in meta:
            from worldsim.training.checkpoint import CheckpointError

            kept = meta["latent_space"]
            if kept.get("encoder") != vae.encoder_fingerprint():
                raise CheckpointError(
                    f"{directory} says it keeps the encoder of VAE {kept.get('fingerprint')}, "
                    f"but its encoder weights or latent statistics differ from the ones "
                    f"recorded ({vae.encoder_fingerprint()[:16]} vs "
                    f"{str(kept.get('encoder'))[:16]})")
            vae.latent_space = kept["fingerprint"]
        vae.source = str(directory)
        return vae.to(device or "cpu").eval()

