"""The attention memory of an incremental rollout: keys and values of the frames inside the
attention window, per layer, in a ring buffer of W frame slots.

Why a ring buffer: the cost of a step must not grow with the episode's length (DESIGN
decision 6). Frame p always lives in slot p mod W, so appending a frame overwrites exactly the
frame that just left the window (p - W) and nothing is ever copied or re-ordered. Attention is
a sum over keys, so the slots' order does not matter.

Why keys are stored already rotated: rotary embeddings make the attention logit depend only on
the difference of two positions, so keys rotated once at their absolute frame index stay
valid however far the episode runs, and no cached key is touched again. The rotation angles
are reduced modulo 2 pi in float64 (transformer.SpacetimeRotary), so index 10^6 is as exact
as index 10.

Equivalence: a cached rollout equals running the whole sequence at once with the band mask of
`transformer.block_causal_mask` (frame i sees frames i-W+1 .. i): when frame p is processed it
sees its own slot plus the W-1 slots of frames p-W+1 .. p-1, each computed, in turn, with its
own window. tests/test_kv_cache.py holds the two equal.

Tensor letters: B batch, H heads, W window slots (frames), N tokens per frame, E head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


@dataclass
class StepPlan:
    """Bookkeeping of a one-frame pass (`KVCache.step_plan`).

    slot:         (B, 1) ring-buffer slot of the new frame in every row
    uniform_slot: that slot if all rows share it (rows stepped together), else None
    visible:      (B, W) slots the new frame's queries see, or None when all are
    """

    slot: torch.Tensor
    uniform_slot: int | None
    visible: torch.Tensor | None


@dataclass
class KVCache:
    """Per-layer key/value ring buffers plus, per batch row, which slots hold a frame and the
    absolute index of the next frame.

    keys, values: per layer (B, H, W, N, E), allocated at the first write (dtype and device
                  of the first keys), None before
    valid:        (B, W) bool, the slot holds a committed frame
    next_position: (B,) int64, absolute index of the next frame to process in each row
    """

    window: int
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    valid: torch.Tensor
    next_position: torch.Tensor

    @classmethod
    def empty(cls, batch_size: int, window: int, depth: int,
              device: torch.device | str = "cpu") -> KVCache:
        """A cache for `depth` layers and a window of `window` frames, holding nothing."""
        if window < 1:
            raise ValueError(f"the attention window must hold at least 1 frame, got {window}")
        return cls(window=window, keys=[None] * depth, values=[None] * depth,
                   valid=torch.zeros(batch_size, window, dtype=torch.bool, device=device),
                   next_position=torch.zeros(batch_size, dtype=torch.long, device=device))

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def is_empty(self) -> bool:
        return not bool(self.valid.any())

    def positions(self, frames: int) -> torch.Tensor:
        """Absolute indices of the next `frames` frames of every row: (B, frames) int64."""
        return self.next_position[:, None] + torch.arange(frames, device=self.valid.device)

    def _slots(self, frames: int) -> torch.Tensor:
        """Ring-buffer slots of the next `frames` frames: (B, frames)."""
        return self.positions(frames) % self.window

    def _buffers(self, layer: int, k: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            B, H, _, E = k.shape
            shape = (B, H, self.window, N, E)
            self.keys[layer] = k.new_zeros(shape)
            self.values[layer] = k.new_zeros(shape)
        return self.keys[layer], self.values[layer]

    def step_plan(self) -> StepPlan:
        """Where the next frame of every row goes and which slots its queries see; the same for
        every layer of a pass, so computed once per pass."""
        slot = self._slots(1)  # (B, 1)
        uniform = int(slot[0, 0]) if bool((slot == slot[0]).all()) else None
        visible = self.valid.clone()
        visible[torch.arange(self.batch_size, device=slot.device)[:, None], slot] = True
        return StepPlan(slot, uniform, None if bool(visible.all()) else visible)

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, frames: int,
               mask: torch.Tensor | None, plan: StepPlan | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the keys/values of the next `frames` frames for `layer` and return what their
        queries attend to, as (keys, values, attention mask) for scaled_dot_product_attention.

        k, v: (B, H, frames * N, E), rotary already applied.
        - frames == 1 (a rollout step): the frame's K/V go to its slot (overwriting the frame
          that left the window); the queries attend to every filled slot plus their own.
          Returns (B, H, W * N, E) views of the buffers and a (B, 1, 1, W * N) key mask, or None
          once every slot is filled (the fast path).
        - frames > 1 (prefilling an empty cache with a context): the queries attend among
          themselves under `mask` (the block-causal band mask); the last min(frames, W) frames
          are stored. Returns k, v and mask unchanged.
        Nothing counts as stored until `commit`. `plan` (from `step_plan`) saves recomputing
        the slots for every layer of a one-frame pass.
        """
        B, H, L, E = k.shape
        if L % frames:
            raise ValueError(f"{L} tokens do not split into {frames} frames")
        N = L // frames
        keys, values = self._buffers(layer, k, N)
        if keys.shape[3] != N:
            raise ValueError(f"the cache holds frames of {keys.shape[3]} tokens, got {N}")
        k, v = k.to(keys.dtype), v.to(values.dtype)
        rows = torch.arange(B, device=k.device)[:, None]
        if frames == 1:
            plan = plan or self.step_plan()
            if plan.uniform_slot is not None:  # rows in step (the usual case): a plain copy
                keys[:, :, plan.uniform_slot] = k
                values[:, :, plan.uniform_slot] = v
            else:
                keys[rows, :, plan.slot] = rearrange(k, "b h n e -> b 1 h n e")
                values[rows, :, plan.slot] = rearrange(v, "b h n e -> b 1 h n e")
            key_mask = (None if plan.visible is None
                        else repeat(plan.visible, "b w -> b 1 1 (w n)", n=N))
            return (rearrange(keys, "b h w n e -> b h (w n) e"),
                    rearrange(values, "b h w n e -> b h (w n) e"), key_mask)
        if not self.is_empty:
            raise ValueError("several frames at once can only prefill an empty cache; "
                             "step one frame at a time after `start`")
        kept = min(frames, self.window)
        slot = self._slots(frames)[:, frames - kept:]  # (B, kept)
        keep = lambda t: rearrange(t, "b h (f n) e -> b f h n e", n=N)[:, frames - kept:]  # noqa: E731
        keys[rows, :, slot] = keep(k)
        values[rows, :, slot] = keep(v)
        return k, v, mask

    def commit(self, frames: int) -> None:
        """Mark the last `frames` frames given to `extend` as stored and advance every row."""
        kept = min(frames, self.window)
        rows = torch.arange(self.batch_size, device=self.valid.device)[:, None]
        self.valid[rows, self._slots(frames)[:, frames - kept:]] = True
        self.next_position += frames

    # -- branching and batching ------------------------------------------------------------

    def clone(self) -> KVCache:
        """An independent copy (for branching a rollout)."""
        return KVCache(window=self.window,
                       keys=[None if t is None else t.clone() for t in self.keys],
                       values=[None if t is None else t.clone() for t in self.values],
                       valid=self.valid.clone(), next_position=self.next_position.clone())

    def select(self, rows: torch.Tensor | list[int]) -> KVCache:
        """The cache of some batch rows (a copy), in the order given."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.valid.device)
        # index_select, not t[rows]: the same copy, ~3x faster on a CPU at batch 1 (guidance
        # copies the cache every step)
        return KVCache(window=self.window,
                       keys=[None if t is None else t.index_select(0, rows) for t in self.keys],
                       values=[None if t is None else t.index_select(0, rows)
                               for t in self.values],
                       valid=self.valid[rows], next_position=self.next_position[rows])

    def assign(self, rows: torch.Tensor | list[int], other: KVCache) -> None:
        """Overwrite batch rows `rows` with the rows of `other` (same window, depth and frame
        size; e.g. after resetting some environments of a batch)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.valid.device)
        if other.window != self.window or len(other.keys) != len(self.keys):
            raise ValueError("caches differ in window or depth")
        if len(rows) != other.batch_size:
            raise ValueError(f"{len(rows)} rows to assign from a cache of {other.batch_size}")
        for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
            for i, t in enumerate(theirs):
                if t is None:
                    raise ValueError("cannot assign from a cache that holds nothing yet")
                if mine[i] is None:
                    mine[i] = t.new_zeros((self.batch_size, *t.shape[1:]))
                if mine[i].shape[1:] != t.shape[1:]:
                    raise ValueError(f"cache layer {i}: buffers of shape {tuple(t.shape[1:])} "
                                     f"do not fit {tuple(mine[i].shape[1:])}")
                mine[i][rows] = t.to(mine[i].dtype)
        self.valid[rows] = other.valid
        self.next_position[rows] = other.next_position

    def nbytes(self) -> int:
        """Memory held by the buffers, in bytes (constant once allocated: the window rolls)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values)
                   if t is not None)


@dataclass
class CachedAttention:
    """Attention of `frames` frames continuing the rollouts of `cache` (see `KVCache.extend`);
    `mask` is the block-causal band among them, for a prefill. Nothing is stored for good
    until `cache.commit(frames)`."""

    cache: KVCache
    frames: int
    mask: torch.Tensor | None = None

    def __post_init__(self):
        self.plan = self.cache.step_plan() if self.frames == 1 else None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 layer: int) -> torch.Tensor:
        k, v, mask = self.cache.extend(layer, k, v, self.frames, self.mask, self.plan)
        return F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask)
