"""The action-conditioned spacetime Diffusion Transformer (DESIGN decisions 3 and 4).

Latent frames are cut into p x p patches (tokens); every frame has its own conditioning vector
(its noise level's embedding + the embedding of the action that led to it); adaLN-Zero blocks
attend block-causally over the frames of a window. The network is EDM's F: it takes
c_in-scaled noisy latents and c_noise, and never sees sigma otherwise (diffusion/edm.py).

Tensor letters: B batch, T frames, C latent channels, h w latent height and width, p patch
size, N tokens per frame (h/p * w/p), D width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from worldsim.models.kv_cache import CachedAttention, KVCache
from worldsim.models.transformer import (
    Attend,
    DiTBlock,
    FinalLayer,
    MaskedAttention,
    NoiseLevelEmbedder,
    SpacetimeRotary,
    block_causal_mask,
)


@dataclass
class DiTConfig:
    """Shape of the spacetime DiT. Defaults are the "S" preset."""

    in_channels: int = 4
    """Latent channels C (the VAE's)."""
    patch_size: int = 2
    """Patch side p in latent pixels; a 16x16 latent gives 64 tokens per frame at p = 2."""
    width: int = 256
    """Model width D."""
    depth: int = 6
    """Number of DiT blocks."""
    heads: int = 4
    """Attention heads (head dim = width / heads, at least 8)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of the model width."""
    window: int = 8
    """Attention window W in frames: a frame attends to itself and the W-1 frames before it.
    The KV cache holds W frames."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head (bounds attention logits, for stability at
    scale). Off by default: it bounds logits by sqrt(head dim), and measured here a small DiT
    learnt to copy the previous frame 4-5 times slower with it (head dims 16 and 64)."""
    # Settings introduced after the first checkpoints, with the value they were trained with.
    ADDED_LATER: ClassVar[dict[str, object]] = {"previous_frame": False}

    previous_frame: bool = True
    """Each frame's patches also carry the frame before it (channels concatenated before the
    patch embedding), so copying and shifting what was there is a local operation rather than
    one attention has to learn (DIAMOND and GameNGen stack past frames as channels too)."""
    rope_theta_time: float = 1000.0
    """Rotary base for time; its longest wavelength (~2700 frames at head dim 64) far exceeds
    any window, so no two offsets inside a window look alike."""
    rope_theta_space: float = 100.0
    """Rotary base for rows and columns (positions are a few dozen patches at most)."""

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def dit_tiny(**overrides) -> DiTConfig:
    """For tests: width 64, 2 blocks, 2 heads, window 4 (0.18M parameters)."""
    return replace(DiTConfig(width=64, depth=2, heads=2, window=4), **overrides)


def dit_xs(**overrides) -> DiTConfig:
    """The shipped Crafter model's size: width 192, 4 blocks, 3 heads, window 4 (2.8M
    parameters; 3.0M with the action encoder and heads)."""
    return replace(DiTConfig(width=192, depth=4, heads=3, window=4), **overrides)


def dit_s(**overrides) -> DiTConfig:
    """The default: width 256, 6 blocks, 4 heads, window 8 (7.4M parameters)."""
    return replace(DiTConfig(width=256, depth=6, heads=4), **overrides)


def dit_m(**overrides) -> DiTConfig:
    """Width 384, 8 blocks, 6 heads, window 8 (21.8M parameters)."""
    return replace(DiTConfig(width=384, depth=8, heads=6), **overrides)


# Size presets; the keys are also the CLI choices.
DIT_PRESETS: dict[str, Callable[..., DiTConfig]] = {"tiny": dit_tiny, "XS": dit_xs, "S": dit_s,
                                                   "M": dit_m}


@dataclass
class Conditioning:
    """Everything the DiT needs besides the noisy latents and their noise levels.

    action_emb: (B, T, D) embedding of the action that led to each frame (the first frame
                of a window carries the action encoder's learned "no action" embedding)
    cache:      a KV cache for incremental rollout (None for a whole window at once). With a
                cache, the frames are the next ones of each row (positions from the cache):
                either one frame attending to the cached frames, or a prefill of an empty cache.
    positions:  (1 or B, T) time index of each frame; default 0 .. T-1 (without a cache)
    attention:  which tokens attend to which (transformer.Attend); default the block-causal
                band of the model's window (without a cache). With `positions` it describes
                other layouts, e.g. the teacher-forcing layout of `DynamicsModel.loss`.
    previous:   (B, T, C, h, w) the frame before each frame (normalised latents, as the network
                saw it in context), for a DiT with `previous_frame`
    """

    action_emb: torch.Tensor
    cache: KVCache | None = None
    positions: torch.Tensor | None = None
    attention: Attend | None = None
    previous: torch.Tensor | None = None


class DiT(nn.Module):
    """Spacetime DiT over a window of latent frames, block-causal in time.

    forward(x (B, T, C, h, w), c_noise (B, T), cond) -> (B, T, C, h, w)
    Any h, w divisible by p and any T run with the same weights (rotary positions); frames
    farther apart than `window` do not attend to each other.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.width % cfg.heads:
            raise ValueError(f"DiT width {cfg.width} is not divisible by {cfg.heads} heads")
        patch_values = cfg.in_channels * cfg.patch_size**2
        inputs = 2 * patch_values if cfg.previous_frame else patch_values
        self.x_embedder = nn.Linear(inputs, cfg.width)
        self.noise_embedder = NoiseLevelEmbedder(cfg.width)
        self.rotary = SpacetimeRotary(cfg.head_dim, cfg.rope_theta_time, cfg.rope_theta_space)
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.width, patch_values)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All of the DiT's initialisation in one place (following DiT's `initialize_weights`)."""
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(basic_init)
        # The patch embedding is a linear map of p*p*C values, like ViT's conv patch embedding.
        nn.init.xavier_uniform_(self.x_embedder.weight)
        # Noise-level MLP: small normal weights, as DiT's timestep embedder.
        nn.init.normal_(self.noise_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.noise_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity (shift = scale = gate = 0).
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # The output starts at zero, so a fresh denoiser is D(x) = c_skip x.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- spacetime patches -----------------------------------------------------------------

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, N, p*p*C), patches in row-major order."""
        B, T, C, h, w = x.shape
        p = self.config.patch_size
        if C != self.config.in_channels:
            raise ValueError(f"the DiT expects {self.config.in_channels} latent channels, got {C}")
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}")
        return rearrange(x, "b t c (gh p) (gw q) -> b t (gh gw) (c p q)", p=p, q=p)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, T, N, p*p*C) -> (B, T, C, h, w); the inverse of `patchify`."""
        p = self.config.patch_size
        return rearrange(tokens, "b t (gh gw) (c p q) -> b t c (gh p) (gw q)",
                         gh=h // p, gw=w // p, p=p, q=p)

    # -- network ---------------------------------------------------------------------------

    def features(self, x: torch.Tensor, c_noise: torch.Tensor,
                 cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' output tokens and the per-frame conditioning vectors.

        x: (B, T, C, h, w) network input (c_in-scaled noisy latents); c_noise: (B, T);
        cond.previous (B, T, C, h, w) if the config has `previous_frame`.
        Returns tokens (B, T, N, D) and c (B, T, D).
        """
        B, T, C, h, w = x.shape
        p = self.config.patch_size
        if c_noise.shape != (B, T) or cond.action_emb.shape[:2] != (B, T):
            raise ValueError(f"latents {tuple(x.shape)} need c_noise and action embeddings for "
                             f"(B, T) = {(B, T)}, got {tuple(c_noise.shape)} and "
                             f"{tuple(cond.action_emb.shape)}")
        patches = self.patchify(x)  # (B, T, N, p*p*C)
        if self.config.previous_frame:
            if cond.previous is None or cond.previous.shape != x.shape:
                raise ValueError(f"this DiT reads each frame's previous frame: latents "
                                 f"{tuple(x.shape)} need Conditioning.previous of the same shape, "
                                 f"got {None if cond.previous is None else tuple(cond.previous.shape)}")
            patches = torch.cat([patches, self.patchify(cond.previous.to(x.dtype))], dim=-1)
        tokens = self.x_embedder(patches)  # (B, T, N, D)
        N = tokens.shape[2]
        c = self.noise_embedder(c_noise) + cond.action_emb  # (B, T, D)
        if cond.cache is None:
            positions = (torch.arange(T, device=x.device)[None] if cond.positions is None
                         else cond.positions)  # (1 or B, T)
            attend = (MaskedAttention(block_causal_mask(T, N, self.config.window, x.device))
                      if cond.attention is None else cond.attention)
        elif cond.positions is not None or cond.attention is not None:
            raise ValueError("with a KV cache, positions and attention come from the cache")
        elif cond.cache.window != self.config.window:
            raise ValueError(f"cache window {cond.cache.window} != model window "
                             f"{self.config.window}")
        else:
            positions = cond.cache.positions(T)  # (B, T) absolute frame indices
            attend = CachedAttention(cond.cache, T,
                                     block_causal_mask(T, N, self.config.window, x.device))
        rope = self.rotary(positions, h // p, w // p, x.device)
        for layer, block in enumerate(self.blocks):
            tokens = block(tokens, c, rope, attend, layer)
        return tokens, c

    def output(self, tokens: torch.Tensor, c: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The final layer: tokens (B, T, N, D) and c (B, T, D) -> F (B, T, C, h, w)."""
        return self.unpatchify(self.final_layer(tokens, c), h, w)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """x: (B, T, C, h, w) network input; c_noise: (B, T) -> F: (B, T, C, h, w)."""
        tokens, c = self.features(x, c_noise, cond)
        return self.output(tokens, c, *x.shape[-2:])
