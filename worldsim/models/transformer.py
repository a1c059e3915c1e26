"""Layers of the spacetime Diffusion Transformer: noise-level embedding, rotary positions in
space and time, block-causal spacetime attention, adaLN-Zero blocks and the final layer.

Tensor letters (one convention for the whole model):
    B batch, T frames, N tokens per frame (= h/p * w/p), D model width,
    H attention heads, E head dim, L tokens in an attention call (T * N).
Every frame has its own conditioning vector c (B, T, D); the adaLN modulations computed from it
are broadcast over that frame's N tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: scale and shift normalised activations (DiT, Peebles & Xie 2023).
    One fused multiply-add: at batch 1 a step of the dream is a few hundred small ops, and
    their count, not their arithmetic, sets its time on a CPU."""
    return torch.addcmul(shift, x, 1 + scale)


class NoiseLevelEmbedder(nn.Module):
    """EDM's c_noise = ln(sigma) / 4 per frame -> a D-dim vector: sinusoidal features, then a
    two-layer MLP (DiT's TimestepEmbedder).

    c_noise: (B, T) -> (B, T, D)
    """

    # c_noise spans about [-1.4, 0.9] for sigma in [4e-3, 40]; x1000 maps it onto the range of
    # DDPM timesteps the sinusoidal features (max period 10^4) were designed for.
    INPUT_SCALE = 1000.0
    MAX_PERIOD = 10_000.0

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.MAX_PERIOD)
                          * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
        angles = (c_noise.float() * self.INPUT_SCALE)[..., None] * freqs  # (B, T, half)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))


class SpacetimeRotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) over three axes: time (frame index), row and
    column (patch coordinates). The head dim is split: 3/8 for rows, 3/8 for columns, the rest
    (about 1/4) for time. Attention logits then depend on relative offsets only, so the same
    weights run at another resolution or context length (DESIGN decision 3), and keys cached at
    absolute frame indices stay valid (kv_cache.py).

    Angles are computed in float64 on the CPU and reduced modulo 2 pi before the cosine, so a
    frame index of a million is as precise as 10.
    """

    def __init__(self, head_dim: int, theta_time: float, theta_space: float):
        super().__init__()
        space = 2 * ((head_dim * 3 // 8) // 2)  # even number of dims per spatial axis
        time = head_dim - 2 * space
        if head_dim % 2 or head_dim < 8:
            raise ValueError(f"rotary embedding needs an even head dim >= 8, got {head_dim}")
        self.head_dim = head_dim
        # Standard RoPE frequencies theta^(-2i/d) per axis, kept in float64 on the CPU.
        self.freq_time = theta_time ** (-torch.arange(0, time, 2, dtype=torch.float64) / time)
        self.freq_space = theta_space ** (-torch.arange(0, space, 2, dtype=torch.float64) / space)
        self._memo: tuple | None = None

    def forward(self, time_positions: torch.Tensor, rows: int, cols: int,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """time_positions: (B', T) integer frame indices (B' is 1 or B), for a grid of rows x
        cols patches per frame. Returns the tables `apply_rotary` takes, (cos, signed sin),
        each (B', 1, T * rows * cols, E) float32 on `device`, broadcasting over heads: the
        angles' cosines and sines repeated for both halves of the head dim, the sines negated
        in the first half. The last result is memoised: a rollout step asks for the same
        positions once per sampler evaluation."""
        key = (tuple(time_positions.shape), tuple(time_positions.flatten().tolist()), rows, cols,
               str(device))
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        t = time_positions.detach().to("cpu", torch.float64)
        r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                              torch.arange(cols, dtype=torch.float64), indexing="ij")
        Bp, T = t.shape
        N = rows * cols
        angles = torch.cat([
            (t[:, :, None, None] * self.freq_time).expand(Bp, T, N, -1),
            (r.reshape(N, 1) * self.freq_space).expand(Bp, T, N, -1),
            (c.reshape(N, 1) * self.freq_space).expand(Bp, T, N, -1),
        ], dim=-1).remainder(2 * math.pi)  # (B', T, N, E/2)
        angles = rearrange(angles, "b t n e -> b 1 (t n) e")
        cos, sin = angles.cos(), angles.sin()
        tables = (torch.cat([cos, cos], -1).to(device=device, dtype=torch.float32),
                  torch.cat([-sin, sin], -1).to(device=device, dtype=torch.float32))
        self._memo = (key, tables)
        return tables


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+E/2}) by their angles ("rotate half" layout):
    (x1 cos - x2 sin, x2 cos + x1 sin) as x * cos + (x2, x1) * signed_sin, in three ops.
    x: (..., B, H, L, E) float32 (queries and keys may come stacked on a leading dim);
    cos, signed_sin: (B' in {1, B}, 1, L, E) from `SpacetimeRotary`."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), signed_sin)


def frame_attention_mask(frames: int, window: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Which frames each frame attends to, (T, T) bool (True = attend): itself and the
    window-1 frames before it, never a later frame (DESIGN decision 4)."""
    frame = torch.arange(frames, device=device)
    offset = frame[:, None] - frame[None, :]  # query frame - key frame
    return (offset >= 0) & (offset < window)


def token_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor | None:
    """A frame-level mask (T, T) expanded to tokens, (T*N, T*N): every token of a frame sees
    every token of the frames its frame sees. None when everything is visible, so attention
    takes its unmasked path."""
    if bool(frame_mask.all()):
        return None
    return (frame_mask.repeat_interleave(tokens_per_frame, dim=0)
            .repeat_interleave(tokens_per_frame, dim=1))


def block_causal_mask(frames: int, tokens_per_frame: int, window: int,
                      device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The block-causal band mask over tokens, (T*N, T*N) bool, or None for one frame."""
    return token_mask(frame_attention_mask(frames, window, device), tokens_per_frame)


class Attend(Protocol):
    """How the queries of one attention call meet keys and values: q, k, v (B, H, L, E) of the
    call's tokens -> (B, H, L, E). `layer` names the block (a KV cache keeps one per layer)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 layer: int) -> torch.Tensor: ...


@dataclass
class MaskedAttention:
    """All tokens of the call attend to each other under a token mask (None: all visible)."""

    mask: torch.Tensor | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 layer: int) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def teacher_forcing_positions(frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Time positions (1, 2T) of the teacher-forcing layout: a window of T frames twice."""
    return torch.arange(frames, device=device).repeat(2)[None]


def teacher_forcing_frame_mask(frames: int, window: int,
                               device: torch.device | str = "cpu") -> torch.Tensor:
    """Frame mask (2T, 2T) of the teacher-forcing layout: T frames at the context noise level,
    then the same T frames noised for training. Context frame t sees context frames
    t-W+1 .. t (as the KV cache holds them); noisy frame t sees context frames t-W+1 .. t-1
    and itself, exactly what a frame being sampled sees at inference."""
    band = frame_attention_mask(frames, window, device)  # offsets 0 .. W-1
    itself = torch.eye(frames, dtype=torch.bool, device=device)
    mask = torch.zeros(2 * frames, 2 * frames, dtype=torch.bool, device=device)
    mask[:frames, :frames] = band
    mask[frames:, :frames] = band & ~itself  # strictly earlier context frames
    mask[frames:, frames:] = itself
    return mask


class TeacherForcingAttention:
    """The teacher-forcing layout's attention (`teacher_forcing_frame_mask`) without computing
    the blocks it masks out: the context stream attends block-causally among itself; each
    noisy frame attends to its window's W-1 earlier context frames and to itself. That is
    about 2 T^2 frame pairs instead of the dense mask's 4 T^2 (the attention dominated training
    time on CPU).

    The noisy frames' attention has two forms, equal up to rounding:
    - `explicit` (the default on CPU): the scores of the noisy queries against all T context
      frames (the band of earlier frames kept by an additive mask) and against their own
      frame, one softmax in fp32 over both, written as matrix products. On CPU the fused
      attention's backward pass is slow (ten times its forward pass here, where the matrix
      products run on bf16 units): the shipped DiT's size trains at 31.4 windows of 4 frames
      per second this way against 27.1 with the fused form (batch 32, bf16 autocast, 2 cores;
      `benchmarks/dit_step.py --presets XS`, which times the two interleaved);
    - otherwise `scaled_dot_product_attention` with one batch entry per noisy frame, whose
      keys are gathered window by window (the fused kernels of a GPU).
    `explicit` None: the class's `prefer_explicit` if set (what a benchmark compares), else by
    device.
    """

    prefer_explicit: ClassVar[bool | None] = None

    def __init__(self, frames: int, tokens_per_frame: int, window: int,
                 device: torch.device | str = "cpu", explicit: bool | None = None):
        self.T, self.N, self.W = frames, tokens_per_frame, window
        explicit = self.prefer_explicit if explicit is None else explicit
        self.explicit = torch.device(device).type == "cpu" if explicit is None else explicit
        self.context_mask = block_causal_mask(frames, tokens_per_frame, window, device)
        frame = torch.arange(frames, device=device)
        if self.explicit:
            # Noisy frame t sees context frames t-W+1 .. t-1: 0 there, -inf elsewhere, per
            # token (T*N, T*N) float32 (frame 0 sees none of them, only itself).
            offset = frame[:, None] - frame[None, :]
            seen = token_mask((offset >= 1) & (offset < window), tokens_per_frame)  # never all
            self.earlier_bias = torch.zeros(seen.shape, device=device).masked_fill(
                ~seen, float("-inf"))
        else:
            # Noisy frame t's keys: context frames t-W+1 .. t-1 (those before frame 0 are
            # padding), then its own tokens. (T, W*N), True = attend.
            earlier = frame[:, None] - window + 1 + torch.arange(window - 1, device=device)[None, :]
            keys = torch.cat([earlier >= 0, torch.ones(frames, 1, dtype=torch.bool,
                                                       device=device)], 1)
            self.noisy_mask = (None if bool(keys.all())
                               else keys.repeat_interleave(tokens_per_frame, 1))

    def _windows(self, context: torch.Tensor) -> torch.Tensor:
        """(B, H, T*N, E) context keys or values -> (B, H, T, (W-1)*N, E): for every frame t,
        those of frames t-W+1 .. t-1 (zeros before frame 0)."""
        B, H, _, E = context.shape
        T, N, W = self.T, self.N, self.W
        frames = rearrange(context, "b h (t n) e -> b h t n e", n=N)
        padded = torch.cat([frames.new_zeros(B, H, W - 1, N, E), frames], dim=2)
        windows = padded.unfold(2, W - 1, 1)[:, :, :T]  # (B, H, T, N, E, W-1)
        return rearrange(windows, "b h t n e w -> b h t (w n) e")

    def _noisy_explicit(self, q: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor,
                        k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Noisy queries q (B, H, T*N, E) against the context's keys/values (B, H, T*N, E) and
        their own frame's (k, v) -> (B, H, T*N, E)."""
        T, N = self.T, self.N
        per_frame = lambda t: rearrange(t, "b h (t n) e -> b h t n e", n=N)  # noqa: E731
        q = q * q.shape[-1] ** -0.5
        to_context = q @ k_ctx.transpose(-1, -2) + self.earlier_bias.to(q.dtype)  # (B,H,TN,TN)
        to_itself = per_frame(q) @ per_frame(k).transpose(-1, -2)  # (B, H, T, N, N)
        scores = torch.cat([rearrange(to_context, "b h (t n) m -> b h t n m", n=N), to_itself],
                           dim=-1)  # (B, H, T, N, T*N + N)
        p = scores.float().softmax(-1).to(v.dtype)
        return (rearrange(p[..., :T * N], "b h t n m -> b h (t n) m") @ v_ctx
                + rearrange(p[..., T * N:] @ per_frame(v), "b h t n e -> b h (t n) e"))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 layer: int) -> torch.Tensor:
        B, H, L, E = q.shape
        T, N = self.T, self.N
        if L != 2 * T * N:
            raise ValueError(f"teacher-forcing attention for {T} frames of {N} tokens got {L}")
        (q_ctx, q_noisy), (k_ctx, k_noisy), (v_ctx, v_noisy) = (
            t.split(T * N, dim=2) for t in (q, k, v))
        out_ctx = F.scaled_dot_product_attention(q_ctx, k_ctx, v_ctx, attn_mask=self.context_mask)
        if self.explicit:
            return torch.cat([out_ctx, self._noisy_explicit(q_noisy, k_ctx, v_ctx, k_noisy,
                                                            v_noisy)], dim=2)
        per_frame = lambda t: rearrange(t, "b h (t n) e -> b h t n e", n=N)  # noqa: E731
        k_all = torch.cat([self._windows(k_ctx), per_frame(k_noisy)], dim=3)  # (B, H, T, W*N, E)
        v_all = torch.cat([self._windows(v_ctx), per_frame(v_noisy)], dim=3)
        out_noisy = F.scaled_dot_product_attention(
            rearrange(per_frame(q_noisy), "b h t n e -> b (h t) n e"),
            rearrange(k_all, "b h t m e -> b (h t) m e"),
            rearrange(v_all, "b h t m e -> b (h t) m e"),
            attn_mask=None if self.noisy_mask is None
            else repeat(self.noisy_mask, "t m -> 1 (h t) 1 m", h=H))
        out_noisy = rearrange(out_noisy, "b (h t) n e -> b h (t n) e", h=H)
        return torch.cat([out_ctx, out_noisy], dim=2)


class SpacetimeAttention(nn.Module):
    """Multi-head self-attention among the tokens of the frames in the call (and those of
    cached frames), with spacetime rotary positions and optional QK-normalisation (RMSNorm on
    queries and keys per head; Dehghani et al. 2023). Which tokens meet is up to `attend`
    (a mask, a KV cache, the teacher-forcing layout); all go through
    `scaled_dot_product_attention`.

    x: (B, T, N, D) -> (B, T, N, D)
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        head_dim = dim // heads
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attend: Attend,
                layer: int = 0) -> torch.Tensor:
        B, T, N, D = x.shape
        qkv = rearrange(self.qkv(x), "b t n (three h e) -> three b h (t n) e",
                        three=3, h=self.heads)
        v = qkv[2]
        if isinstance(self.q_norm, nn.Identity):
            q, k = apply_rotary(qkv[:2].float(), *rope)  # both in one rotation
        else:
            q, k = apply_rotary(torch.stack([self.q_norm(qkv[0].float()),
                                             self.k_norm(qkv[1].float())]), *rope)
        # Norms and rotation run in fp32; attention runs in the projections' dtype (bf16 under
        # autocast), which is also the dtype a KV cache stores.
        out = attend(q.to(v.dtype), k.to(v.dtype), v, layer).to(v.dtype)  # (B, H, T*N, E)
        return self.proj(rearrange(out, "b h (t n) e -> b t n (h e)", t=T))


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, GELU, Linear. x: (..., D) -> (..., D)
    The exact (erf) GELU, not DiT's tanh approximation: on CPU the erf kernel measured 2x (fp32)
    to 4x (bf16) faster, and the tanh form only ever existed for speed."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (Peebles & Xie 2023, Fig. 3): the per-frame conditioning
    vector regresses shift, scale and a residual gate for attention and MLP. The regression is
    zero-initialised (DiT.initialize_weights), so a fresh block is the identity.

    x: (B, T, N, D), c: (B, T, D) -> (B, T, N, D)
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SpacetimeAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attend: Attend, layer: int = 0) -> torch.Tensor:
        mod = rearrange(self.adaLN_modulation(c), "b t d -> b t 1 d")  # one per frame
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa),
                                                 rope, attend, layer))
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to latent patches
    (zero-initialised, so a fresh DiT predicts F = 0).

    x: (B, T, N, D), c: (B, T, D) -> (B, T, N, p*p*C)
    """

    def __init__(self, dim: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_values)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = rearrange(self.adaLN_modulation(c), "b t d -> b t 1 d").chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
