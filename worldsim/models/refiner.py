"""The frame refiner: draws the next frame with the previous shown frame in view.

The frame VAE decodes every latent on its own, so every frame it draws carries the decoder's
error (35 dB on held-out Crafter frames). Between two Crafter frames most pixels do not change,
and the last frame shown is known exactly: it is the real frame at a reset and the refiner's
own output afterwards. A decoder that reads only the new latent cannot copy those pixels; this
model can. It reads three frames and returns the next one to show:

    decoded_next      D(z_{t+1}): the VAE's decode of the new (dreamt) latent
    previous_frame    x_t: the frame shown before (real at a reset, else this model's output)
    previous_decoded  D(z_t): the VAE's decode of the previous latent

and blends, per pixel,

    x_{t+1} = m * x_t + (1 - m) * (D(z_{t+1}) + r)          m, r = net(the three frames)

Where D(z_{t+1}) and D(z_t) agree the net learns m = 1 and copies the exact pixels; where the
dream changed the picture it keeps the decode and corrects it with r. The last layer starts
at m ~ 0 and r = 0, so an untrained refiner shows the plain decode.

With `copy_shift` = s > 0 the previous frame displaced by s pixels left, right, up and down
are four more copy sources, and the blend is a softmax over the five copies and the drawn
frame (the drawn frame's logit fixed at 0, so one source reduces to the sigmoid above):

    x_{t+1} = sum_j w_j * shift_j(x_t) + w_draw * (D(z_{t+1}) + r)

A move in Crafter scrolls the map by exactly one 7-pixel tile; the DiT's latent cells are 4
pixels, so a scroll is 1.75 cells that the dream redraws a little differently every step,
while a displaced copy carries the scrolled world over pixel for pixel. The band a
displacement uncovers is filled from the decode.

Shapes: frames (B, 3, H, W) float in [-1, 1] (`forward`) or uint8 (..., H, W, 3) (`refine`).
The trunk runs on 2x2 pixel patches (space-to-depth), so H and W must be even; it is a few
ResBlocks wide, since it runs on every imagined frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldsim.models.layers import ResBlock
from worldsim.models.vae import frames_to_images, images_to_frames

# Initial bias of the copy-mask logit: sigmoid(-4) = 0.018, so training starts from the plain
# decode rather than from a half-and-half blend of the two frames.
MASK_BIAS_INIT = -4.0


@dataclass
class RefinerConfig:
    """Width and depth of the frame refiner."""

    width: int = 64
    """Channels of the trunk."""
    blocks: int = 4
    """ResBlocks in the trunk."""
    patch: int = 2
    """Space-to-depth factor: the trunk runs at H/patch x W/patch."""
    groups: int = 8
    """GroupNorm groups."""
    copy_shift: int = 0
    """Pixels by which the previous frame is also offered displaced left, right, up and down
    as copy sources (Crafter: 7, one tile); 0: the undisplaced previous frame only."""
    # Settings introduced after the first checkpoints, with the value they were trained with.
    ADDED_LATER: ClassVar[dict[str, object]] = {"copy_shift": 0}

    @property
    def copy_sources(self) -> int:
        """Frames the blend may copy from: the previous frame, and its four displacements."""
        return 5 if self.copy_shift else 1

    def to_dict(self) -> dict:
        return asdict(self)


class RefinerParts(NamedTuple):
    """What the blend is made of (training scores the parts apart: once the blend settles on
    one source everywhere, the others get no gradient through it)."""

    shown: torch.Tensor   # (B, 3, H, W) the blended frame, what `forward` returns
    drawn: torch.Tensor   # (B, 3, H, W) the drawn frame D(z_{t+1}) + r
    logits: torch.Tensor  # (B, S + 1, H, W) the blend's logits: the S copies, then the drawn
    copies: torch.Tensor  # (B, S, 3, H, W) the copy sources: previous frame, its displacements


class FrameRefiner(nn.Module):
    """(decoded_next, previous_frame, previous_decoded) -> the next frame to show. See the
    module docstring."""

    def __init__(self, cfg: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.cfg = cfg
        # Inference only: each pixel comes from the one source with the largest weight
        # instead of the weighted mean. Training learns the soft blend; where several sources
        # half-match (late in a dream) their mean is a blur, and the pick keeps the frame
        # sharp (a bundle setting, `worldsim bundle --refiner-blend hard`).
        self.hard_blend = False
        p, D, S = cfg.patch, cfg.width, cfg.copy_sources
        # inputs: decoded_next, previous_decoded and the S copy sources, 3 channels each
        self.inp = nn.Conv2d(3 * (2 + S) * p * p, D, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(D, D, cfg.groups) for _ in range(cfg.blocks)])
        # per pixel: a logit per copy source, then the residual r
        self.out = nn.Conv2d(D, (S + 3) * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias.view(S + 3, p * p)[:S] = MASK_BIAS_INIT

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def forward(self, decoded_next: torch.Tensor, previous_frame: torch.Tensor,
                previous_decoded: torch.Tensor, with_parts: bool = False
                ) -> torch.Tensor | RefinerParts:
        """Three (B, 3, H, W) frames in [-1, 1] -> the next frame (B, 3, H, W); `with_parts`:
        the blend's parts (`RefinerParts`), which training scores apart."""
        H, W = decoded_next.shape[-2:]
        p = self.cfg.patch
        if H % p or W % p:
            raise ValueError(f"frame size {H}x{W} is not divisible by the refiner's patch {p}")
        moved = ([displaced(previous_frame, dy, dx, decoded_next)
                  for dy, dx in shifts(self.cfg.copy_shift)] if self.cfg.copy_shift else [])
        sources = [previous_frame, *moved]
        S = len(sources)
        # (B, 3 (2 + S), H, W), in the order of the first refiners' inputs, displaced copies last
        x = torch.cat([decoded_next, previous_frame, previous_decoded, *moved], 1)
        x = rearrange(x, "b k (h p1) (w p2) -> b (k p1 p2) h w", p1=p, p2=p)
        h = self.out(F.silu(self.body(self.inp(x))))
        h = rearrange(h, "b (k p1 p2) h w -> b k (h p1) (w p2)", p1=p, p2=p)  # (B, S + 3, H, W)
        drawn = decoded_next.float() + h[:, S:].float()
        # softmax over the copies' logits and the drawn frame's fixed 0: for S = 1 the sigmoid
        # mask m = sigmoid(logit) of the module docstring
        logits = torch.cat([h[:, :S].float(), torch.zeros_like(h[:, :1], dtype=torch.float32)], 1)
        w = logits.softmax(1)  # (B, S + 1, H, W): the copies, then the drawn frame
        if self.hard_blend and not with_parts:
            w = F.one_hot(logits.argmax(1), S + 1).permute(0, 3, 1, 2).to(w.dtype)
        copies = torch.stack([f.float() for f in sources], 1)  # (B, S, 3, H, W)
        shown = (w[:, :S, None] * copies).sum(1) + w[:, S:] * drawn
        return RefinerParts(shown, drawn, logits, copies) if with_parts else shown

    @torch.no_grad()
    def refine(self, decoded_next: torch.Tensor, previous_frame: torch.Tensor,
               previous_decoded: torch.Tensor) -> torch.Tensor:
        """The same on uint8 frames (..., H, W, 3) -> uint8 (..., H, W, 3), on the refiner's
        device. No autograd; wrap in `worldsim.runtime.autocast` for bf16."""
        lead = decoded_next.shape[:-3]
        frames = [frames_to_images(f.reshape(-1, *f.shape[-3:]).to(self.device))
                  for f in (decoded_next, previous_frame, previous_decoded)]
        return images_to_frames(self(*frames)).reshape(*lead, *decoded_next.shape[-3:])


def shifts(step: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) displacements of the copy sources: the content moved left, right, up, down."""
    return ((0, -step), (0, step), (-step, 0), (step, 0))


def displaced(frame: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """frame (B, C, H, W) with its content moved by (dy, dx) pixels; the band it uncovers is
    taken from `fill` (B, C, H, W)."""
    out = torch.roll(frame, shifts=(dy, dx), dims=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = fill[..., :dy, :]
    elif dy < 0:
        out[..., dy:, :] = fill[..., dy:, :]
    if dx > 0:
        out[..., :, :dx] = fill[..., :, :dx]
    elif dx < 0:
        out[..., :, dx:] = fill[..., :, dx:]
    return out


def load_refiner(directory, device: str | torch.device = "cpu",
                 vae_fingerprint: str | None = None) -> tuple[FrameRefiner, dict]:
    """A `FrameRefiner` from a checkpoint directory: a bundle's `refiner/`, a training
    checkpoint (EMA weights) or a run directory (its newest checkpoint). Strict; with
    `vae_fingerprint`, it must have been trained on that VAE's decodes."""
    from worldsim.training.checkpoint import dataclass_from_dict, load_state_dict_strict
    from worldsim.training.loop import read_model_checkpoint

    directory, meta, group, tensors = read_model_checkpoint(
        directory, "refiner", keys=("refiner",), name="frame refiner",
        vae_fingerprint=vae_fingerprint)
    config = dataclass_from_dict(RefinerConfig, meta["refiner"], "refiner config")
    model = FrameRefiner(config)
    load_state_dict_strict(model, tensors, f"{directory}/{group}.safetensors")
    return model.to(device).eval(), meta
