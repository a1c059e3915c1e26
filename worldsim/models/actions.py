"""Action encoders built from the source env's Gymnasium action space (DESIGN decision 8).

Actions arrive batched as the episode store keeps them (worldsim/spaces.py):
{key: (B, T, *sub_space.shape)}, key "action" for a non-Dict space, else the Dict's keys,
plus a (B, T) bool mask of "no action" frames (the first frame of a window has no action
that led to it). The output is one D-dim vector per frame, (B, T, D), which the DiT adds to
the frame's noise-level embedding.

Per sub-space:
    Discrete       a learned vector per action
    MultiDiscrete  one table per component, summed
    MultiBinary    a linear map of the bits (as -1 / +1)
    Box            an MLP over clipped, normalised values and their mu-law companding
    Dict           the sum of its keys' encodings (MineRL: 23 buttons + a camera Box)
and a shared two-layer MLP on top, so that keys can interact (e.g. "forward" + "jump").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from worldsim.spaces import action_keys

# mu-law companding (ITU-T G.711, as VPT quantises the camera) of normalised Box values:
# a camera turn of a few degrees out of +-180 is ~0.02 after normalisation, too small a signal
# for a linear layer to tell apart from no turn; mu-law with mu = 255 maps it to ~0.3.
MU_LAW_MU = 255.0
# Box bounds wider than this count as unbounded (symlog): normalising by a range like
# +-3.4e38 (float32's max, which some envs use for "no bound") would crush every value to 0.
BOX_BOUND_LIMIT = 1e6


def mu_law(x: torch.Tensor, mu: float = MU_LAW_MU) -> torch.Tensor:
    """sign(x) ln(1 + mu |x|) / ln(1 + mu): expands small magnitudes, keeps [-1, 1] in place."""
    return x.sign() * torch.log1p(mu * x.abs()) / math.log1p(mu)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) ln(1 + |x|) (DreamerV3): squashes unbounded values to a usable range."""
    return x.sign() * torch.log1p(x.abs())


class DiscreteEncoder(nn.Module):
    """Discrete(n, start): a learned vector per action. a: (B, T) int -> (B, T, D)"""

    def __init__(self, space: spaces.Discrete, dim: int, key: str):
        super().__init__()
        self.key, self.n, self.start = key, int(space.n), int(space.start)
        self.table = nn.Embedding(self.n, dim)

    def forward(self, a: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        index = (a.long() - self.start).masked_fill(null, 0)  # null frames hold anything
        if bool(((index < 0) | (index >= self.n)).any()):
            raise ValueError(f"action {self.key!r}: values outside Discrete({self.n}, "
                             f"start={self.start})")
        return self.table(index)


class MultiDiscreteEncoder(nn.Module):
    """MultiDiscrete(nvec, start): one table per component (stored as one table with offsets),
    summed. a: (B, T, *nvec.shape) int -> (B, T, D)"""

    def __init__(self, space: spaces.MultiDiscrete, dim: int, key: str):
        super().__init__()
        self.key = key
        nvec = torch.as_tensor(np.asarray(space.nvec).reshape(-1), dtype=torch.long)
        # Derived from the space (saved in the config), so not part of the state dict.
        self.register_buffer("nvec", nvec, persistent=False)
        self.register_buffer("start", torch.as_tensor(
            np.asarray(space.start).reshape(-1), dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.cumsum(nvec, 0) - nvec, persistent=False)
        self.table = nn.Embedding(int(nvec.sum()), dim)

    def forward(self, a: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        index = (a.long().flatten(2) - self.start).masked_fill(null[..., None], 0)  # (B, T, K)
        if bool(((index < 0) | (index >= self.nvec)).any()):
            raise ValueError(f"action {self.key!r}: values outside MultiDiscrete"
                             f"({self.nvec.tolist()}, start={self.start.tolist()})")
        return self.table(index + self.offsets).sum(dim=2)


class MultiBinaryEncoder(nn.Module):
    """MultiBinary(n): a linear map of the bits, centred to -1 / +1.
    a: (B, T, *shape) in {0, 1} -> (B, T, D)"""

    def __init__(self, space: spaces.MultiBinary, dim: int, key: str):
        super().__init__()
        self.key = key
        self.proj = nn.Linear(int(np.prod(space.shape)), dim)

    def forward(self, a: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        bits = a.flatten(2).masked_fill(null[..., None], 0)
        if bool(((bits != 0) & (bits != 1)).any()):
            raise ValueError(f"action {self.key!r}: MultiBinary values must be 0 or 1")
        return self.proj(bits.float() * 2 - 1)


class BoxEncoder(nn.Module):
    """Box(low, high): values clipped to the bounds; each dim normalised to [-1, 1] where both
    bounds are finite (within BOX_BOUND_LIMIT), else symlog'd; an MLP over [z, mu_law(z)].
    a: (B, T, *shape) -> (B, T, D)"""

    def __init__(self, space: spaces.Box, dim: int, key: str):
        super().__init__()
        self.key = key
        low = torch.as_tensor(np.asarray(space.low, dtype=np.float64).reshape(-1))
        high = torch.as_tensor(np.asarray(space.high, dtype=np.float64).reshape(-1))
        bounded = (low.abs() <= BOX_BOUND_LIMIT) & (high.abs() <= BOX_BOUND_LIMIT)
        # Derived from the space (saved in the config), so not part of the state dict.
        self.register_buffer("low", low.float(), persistent=False)
        self.register_buffer("high", high.float(), persistent=False)
        self.register_buffer("bounded", bounded, persistent=False)
        self.register_buffer("center", torch.where(bounded, (low + high) / 2, 0).float(),
                             persistent=False)
        half = torch.where(bounded & (high > low), (high - low) / 2, 1)
        self.register_buffer("half_range", half.float(), persistent=False)
        k = low.numel()
        self.mlp = nn.Sequential(nn.Linear(2 * k, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, a: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        x = a.flatten(2).float().masked_fill(null[..., None], 0)  # (B, T, K)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"action {self.key!r}: Box values must be finite")
        x = torch.minimum(torch.maximum(x, self.low), self.high)
        z = torch.where(self.bounded, (x - self.center) / self.half_range, symlog(x))
        return self.mlp(torch.cat([z, mu_law(z.clamp(-1, 1))], dim=-1))


def _sub_encoder(space: spaces.Space, dim: int, key: str) -> nn.Module:
    if isinstance(space, spaces.Discrete):
        return DiscreteEncoder(space, dim, key)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteEncoder(space, dim, key)
    if isinstance(space, spaces.MultiBinary):
        return MultiBinaryEncoder(space, dim, key)
    if isinstance(space, spaces.Box):
        return BoxEncoder(space, dim, key)
    raise TypeError(f"action {key!r}: cannot encode a {type(space).__name__} space; supported: "
                    "Discrete, MultiDiscrete, MultiBinary, Box, and a Dict of those")


class ActionEncoder(nn.Module):
    """Embeds batched actions of `space`, one D-dim vector per frame.

    forward(actions {key: (B, T, *shape)}, null (B, T) bool or None) -> (B, T, D)
    Frames where `null` is True get the learned "no action" vector; their action values are
    ignored (any value of the right shape will do).
    """

    def __init__(self, space: spaces.Space, dim: int):
        super().__init__()
        self.space, self.dim = space, dim
        self.keys = action_keys(space)
        subspaces = space.spaces if isinstance(space, spaces.Dict) else {"action": space}
        # A list, not a ModuleDict: Dict keys may contain "." (MineRL's "hotbar.1").
        self.encoders = nn.ModuleList(_sub_encoder(subspaces[k], dim, k) for k in self.keys)
        self.shapes = {key: tuple(subspaces[key].shape) for key in self.keys}
        self.mixer = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Embedding tables and the null vector small normal (as DiT's label embedding), linear
        layers Xavier-uniform with zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.null, std=0.02)

    def placeholder(self, batch_size: int, frames: int) -> dict[str, torch.Tensor]:
        """Zero-valued actions {key: (B, T, *shape)} to stand in for frames marked null (their
        values are ignored, so zeros need not be valid actions)."""
        dtypes = {key: torch.float32 if isinstance(enc, BoxEncoder) else torch.long
                  for key, enc in zip(self.keys, self.encoders, strict=True)}
        return {key: torch.zeros(batch_size, frames, *self.shapes[key], dtype=dtypes[key],
                                 device=self.null.device) for key in self.keys}

    def forward(self, actions: dict[str, torch.Tensor],
                null: torch.Tensor | None = None) -> torch.Tensor:
        missing = [k for k in self.keys if k not in actions]
        if missing:
            raise KeyError(f"actions lack {missing}; the action space has keys {self.keys}")
        device = self.null.device
        values = {k: torch.as_tensor(actions[k], device=device) for k in self.keys}
        first = values[self.keys[0]]
        if first.ndim < 2:
            raise ValueError(f"action {self.keys[0]!r} has shape {tuple(first.shape)}; "
                             "expected (B, T, ...)")
        B, T = first.shape[:2]
        for key, value in values.items():
            if tuple(value.shape) != (B, T, *self.shapes[key]):
                raise ValueError(f"action {key!r} has shape {tuple(value.shape)}; expected "
                                 f"(B, T) + {self.shapes[key]} = {(B, T, *self.shapes[key])}")
        if null is None:
            null = torch.zeros(B, T, dtype=torch.bool, device=device)
        null = torch.as_tensor(null, dtype=torch.bool, device=device)
        if tuple(null.shape) != (B, T):
            raise ValueError(f"null mask has shape {tuple(null.shape)}; expected {(B, T)}")
        emb = sum(enc(values[k], null) for k, enc in zip(self.keys, self.encoders, strict=True))
        emb = self.mixer(emb)  # (B, T, D)
        return torch.where(null[..., None], self.null.to(emb.dtype), emb)


def build_action_encoder(space: spaces.Space, dim: int) -> ActionEncoder:
    """The action encoder for a Gymnasium action space (see the module docstring)."""
    return ActionEncoder(space, dim)
