"""The dynamics model: the spacetime DiT, the action encoder and the reward/termination heads,
with the training loss and the KV-cached incremental rollout that the world model and the
environments use.

    model = DynamicsModel(DynamicsConfig(), action_space)
    loss, metrics = model.loss(latents, actions, rewards, terminated, generator)
    state = model.start(context_latents, context_actions, generator)
    latents, reward, termination_prob, state = model.step(state, actions, generator)

Alignment (as the episode store keeps episodes): latents[:, t] is frame t; actions[:, t] is
the action taken in frame t, which leads to frame t + 1; rewards[:, t] and terminated[:, t]
belong to the transition into frame t + 1. Inside the model, frame t + 1 is conditioned on
actions[:, t] and frame 0 of a window on the learned "no action" vector.

Tensor letters: B batch, T frames, K context frames, C latent channels, h w latent size,
N tokens per frame, D width, R reward support size.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from worldsim.diffusion.edm import (
    Denoiser,
    DiffusionConfig,
    GuidedDenoiser,
    OffsetDenoiser,
    add_noise,
    append_dims,
    edm_loss,
    get_scalings,
)
from worldsim.diffusion.sampling import get_sampler
from worldsim.diffusion.schedules import karras_sigmas, sample_training_sigmas
from worldsim.models.actions import build_action_encoder
from worldsim.models.dit import Conditioning, DiT, DiTConfig
from worldsim.models.kv_cache import KVCache
from worldsim.models.transformer import TeacherForcingAttention, teacher_forcing_positions

# Crafter's rewards: +1 per newly unlocked achievement, +-0.1 per health point gained or lost
# (danijar/crafter env.py); sums such as 0.9 fall between support points and are represented
# exactly by two-hot targets. Replace with `reward_support_from_data` for another game.
REWARD_SUPPORT = (-1.0, -0.1, 0.0, 0.1, 1.0)

# The share of training windows in the teacher-forcing layout
# (transformer.teacher_forcing_frame_mask): every frame is trained as the sampler uses it,
# noisy, with nearly clean earlier frames as its context. Under Diffusion Forcing alone
# (independent levels per frame) that situation is rare: a frame's context is usually noisier
# than what inference gives it. Measured on a toy scrolling world (tiny DiT, 600 steps; loss at
# sigma 8 with the true vs shuffled actions, lower and wider apart is better), first with the
# inference layout on the last frame of a window only: share 0.25 -> 0.85 vs 0.88 (actions
# barely used), 0.5 -> 0.86 vs 0.87, 0.75 -> 0.83 vs 0.85 and 0.67 vs 0.98 (two seeds),
# 1.0 -> 0.54 vs 1.05 and 0.59 vs 1.07; then this layout at 0.9 -> 0.80 vs 0.90 and 0.53 vs
# 1.10. The rest stays Diffusion Forcing: robustness to noisy context and any mix of noise
# levels (DESIGN decision 5).
TEACHER_FORCING_PROB = 0.9

# The share of the heads' gradients that reaches the DiT. Measured on a toy task: with all of
# it, the heads' large early gradients (all-zero rewards are learnt within a few steps) inflate
# Adam's second-moment estimates of the shared weights and slowed the diffusion loss (copying
# the last frame stalled for hundreds of steps); with none, the reward head learnt far slower.
HEAD_GRADIENT_SCALE = 0.1


@dataclass
class HeadsConfig:
    """Reward and termination heads."""

    reward_support: tuple[float, ...] = REWARD_SUPPORT
    """Increasing reward values the reward head predicts a distribution over (two-hot)."""
    reward_class_weights: tuple[float, ...] | None = None
    """Loss weight per support value against sparsity (see `reward_class_weights`);
    None weighs all equally."""
    termination_pos_weight: float = 1.0
    """Loss weight of terminal transitions relative to the others (see
    `termination_pos_weight`)."""
    loss_weight: float = 1.0
    """Weight of the heads' losses beside the diffusion loss."""
    trunk_gradient_scale: float = HEAD_GRADIENT_SCALE
    """Share of the heads' gradients that reaches the DiT (0: the heads read detached
    features; 1: they train the DiT as much as the diffusion loss does)."""


@dataclass
class DynamicsConfig:
    """Everything that defines a dynamics model apart from the action space."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    teacher_forcing_prob: float = TEACHER_FORCING_PROB
    """Share of training windows in the teacher-forcing layout (every frame noisy, attending to
    nearly clean copies of the earlier frames); the rest use Diffusion Forcing."""
    ADDED_LATER: typing.ClassVar[dict[str, Any]] = {"residual": False, "action_dropout": 0.0,
                                                    "residual_from_seen": False}

    residual: bool = True
    """Diffuse each frame's change from the frame before it rather than the frame itself
    (`edm.OffsetDenoiser`): an untrained model copies the last frame, and training spends
    itself on what changes. `diffusion.sigma_data` is then the changes' standard deviation
    (`edm.residual_diffusion_config`)."""

    action_dropout: float = 0.0
    """Share of training frames whose action is replaced by the learned "no action" vector,
    so that the same network also predicts a frame without knowing the action that led to it:
    the unconditional prediction of classifier-free guidance (`step`'s `guidance`)."""

    residual_from_seen: bool = False
    """With `residual`: the change is taken from the previous frame as the network saw it
    (with its context noise), not from the clean frame, so the prediction also takes that
    noise away. Context-noise augmentation (`diffusion.train_context_sigma_max`) then teaches
    the model to repair a corrupted last frame instead of carrying the corruption on."""

    def __post_init__(self):
        if self.residual_from_seen and not self.residual:
            raise ValueError("residual_from_seen takes each frame's change from the seen frame: "
                             "it needs residual (diffusing the change)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsConfig:
        """Rebuild from `to_dict` output. Strict: a missing or unknown setting is an error."""
        return _dataclass_from_dict(cls, data, "dynamics config")


def _dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # Settings introduced after a format was first written, with the value that reproduces
    # the older behaviour, so that older checkpoints load as they were trained.
    data = {**getattr(cls, "ADDED_LATER", {}), **data}
    unknown, missing = set(data) - names, names - set(data)
    if unknown or missing:
        raise ValueError(f"{where}: unknown settings {sorted(unknown)}, missing {sorted(missing)}")
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            value = _dataclass_from_dict(hints[name], value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


# -- reward and termination -------------------------------------------------------------------

def two_hot(values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Each value as weights on its two neighbouring support points (MuZero / DreamerV3), so the
    weights' mean over the support is the value itself (clipped to the support's range).
    values: (...), support: (R,) increasing -> (..., R)"""
    v = values.float().clamp(support[0], support[-1])
    upper = torch.searchsorted(support, v.contiguous(), right=True).clamp(1, len(support) - 1)
    lo, hi = support[upper - 1], support[upper]
    w_hi = ((v - lo) / (hi - lo)).clamp(0, 1)
    out = torch.zeros(*v.shape, len(support), device=v.device)
    out.scatter_(-1, (upper - 1)[..., None], (1 - w_hi)[..., None])
    out.scatter_add_(-1, upper[..., None], w_hi[..., None])
    return out


def reward_support_from_data(rewards: torch.Tensor, max_values: int = 9) -> tuple[float, ...]:
    """A support for `HeadsConfig.reward_support`: the distinct reward values (rounded to 1e-4)
    if there are at most `max_values`, else the `max_values - 2` most frequent ones plus the
    smallest and the largest (rare sums such as Crafter's -0.7 are then two-hot between their
    neighbours). Always holds 0."""
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    distinct, counts = torch.unique(torch.round(r * 1e4) / 1e4, return_counts=True)
    if len(distinct) > max_values:
        frequent = distinct[counts.argsort(descending=True, stable=True)[:max(max_values - 2, 1)]]
        distinct = torch.cat([frequent, distinct[:1], distinct[-1:]])
    values = sorted({*distinct.tolist(), 0.0})
    if len(values) == 1:
        values = [0.0, 1.0]
    return tuple(float(v) for v in values)


def reward_class_weights(rewards: torch.Tensor, support: tuple[float, ...],
                         power: float = 0.5) -> tuple[float, ...]:
    """Loss weights per support value from data: inverse frequency to the power `power`
    (0.5: the square root, which lifts rare rewards without letting a handful of samples
    dominate), normalised so that the data's mean weight is 1."""
    freq = two_hot(torch.as_tensor(rewards).flatten(), torch.tensor(support)).mean(0)
    weights = (freq + 1e-6) ** -power
    weights = weights / (freq * weights).sum()
    return tuple(float(w) for w in weights)


def termination_pos_weight(terminated: torch.Tensor, power: float = 0.5) -> float:
    """Weight of terminal transitions from data: (negatives / positives) ** power."""
    t = torch.as_tensor(terminated, dtype=torch.float64).flatten()
    pos = float(t.sum())
    return float(((len(t) - pos) / max(pos, 1.0)) ** power)


class RewardTerminationHead(nn.Module):
    """Reward (a categorical over a support) and termination (a logit) of the transition into
    a frame, from that frame's output tokens, pooled by mean and by max (a reward is often a
    small local event, e.g. an inventory slot changing, which a mean alone dilutes).

    tokens: (B, T, N, D) -> reward logits (B, T, R), termination logits (B, T)
    """

    def __init__(self, dim: int, config: HeadsConfig):
        super().__init__()
        support = torch.tensor(config.reward_support, dtype=torch.float32)
        if len(support) < 2 or not bool((support[1:] > support[:-1]).all()):
            raise ValueError(f"reward support must be at least 2 increasing values, got "
                             f"{config.reward_support}")
        weights = config.reward_class_weights or (1.0,) * len(support)
        if len(weights) != len(support):
            raise ValueError(f"{len(weights)} reward class weights for {len(support)} values")
        # Derived from the config, so not part of the state dict.
        self.register_buffer("support", support, persistent=False)
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("pos_weight", torch.tensor(config.termination_pos_weight),
                             persistent=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(),
                                 nn.Linear(dim, len(support) + 1))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(tokens)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=-1)  # (B, T, 2D)
        out = self.mlp(pooled).float()  # (B, T, R + 1)
        return out[..., :-1], out[..., -1]

    def loss(self, reward_logits: torch.Tensor, termination_logits: torch.Tensor,
             rewards: torch.Tensor, terminated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-weighted cross-entropy against two-hot reward targets, and weighted binary
        cross-entropy of termination; each a mean over transitions."""
        target = two_hot(rewards, self.support)  # (B, T, R)
        ce = -(target * reward_logits.log_softmax(-1)).sum(-1)
        reward_loss = (ce * (target * self.class_weights).sum(-1)).mean()
        termination_loss = F.binary_cross_entropy_with_logits(
            termination_logits, terminated.float(), pos_weight=self.pos_weight)
        return reward_loss, termination_loss

    def decode(self, reward_logits: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        """Reward values from logits (..., R): "mean" (expected value) or "mode" (the most
        likely support value, so sparse rewards stay exactly 0 or exactly +1)."""
        if mode == "mean":
            return reward_logits.softmax(-1) @ self.support
        if mode == "mode":
            return self.support[reward_logits.argmax(-1)]
        raise ValueError(f"reward mode must be 'mean' or 'mode', got {mode!r}")


# -- the frame before each frame --------------------------------------------------------------

def previous_frames(clean: torch.Tensor, seen: torch.Tensor,
                    before: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame before each frame of a sequence, as clean latents (the residual's reference)
    and as the network saw it in context (with context noise, the DiT's `previous` input).

    clean, seen: (B, T, C, h, w); before: the (clean, seen) frames (B, C, h, w) that precede
    the sequence (a rollout's newest frame), or None at the start of a sequence, where the
    first frame is its own predecessor (a change of zero: nothing to predict).
    Returns (previous clean, previous seen), both (B, T, C, h, w).
    """
    if before is None:
        first_clean, first_seen = clean[:, :1], seen[:, :1]
    else:
        first_clean, first_seen = before[0][:, None].to(clean), before[1][:, None].to(seen)
    return (torch.cat([first_clean, clean[:, :-1]], dim=1),
            torch.cat([first_seen, seen[:, :-1]], dim=1))


# -- incremental rollout ----------------------------------------------------------------------

@dataclass
class RolloutState:
    """The state of a batch of incremental rollouts: the KV cache of the frames in the window
    and the last frame. `DynamicsModel.step` updates it in place (and returns it); `clone()` it
    to branch.

    cache:        KV cache (positions per row: cache.next_position)
    last_latents: (B, C, h, w) the newest frame (the last context frame after `start`)
    last_seen:    (B, C, h, w) the newest frame as the network saw it (with its context noise),
                  the next frame's `previous` input
    reward_probs: (B, R) the reward distribution predicted by the last step (None after start)
    unlocked:     (B, A) probability that each achievement was unlocked earlier in each row's
                  episode, kept for a reward model that pays achievements once
                  (`worldsim.models.reward_model.pay_once`); None without one
    """

    cache: KVCache
    last_latents: torch.Tensor
    last_seen: torch.Tensor
    reward_probs: torch.Tensor | None = None
    unlocked: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.last_latents.shape[0]

    @property
    def position(self) -> torch.Tensor:
        """(B,) int64: index of the next frame of each row (context frames count from 0)."""
        return self.cache.next_position

    def clone(self) -> RolloutState:
        return RolloutState(self.cache.clone(), self.last_latents.clone(), self.last_seen.clone(),
                            None if self.reward_probs is None else self.reward_probs.clone(),
                            None if self.unlocked is None else self.unlocked.clone())

    def select(self, rows: torch.Tensor | list[int]) -> RolloutState:
        """The state of some rows (a copy)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.last_latents.device)
        return RolloutState(self.cache.select(rows), self.last_latents[rows], self.last_seen[rows],
                            None if self.reward_probs is None else self.reward_probs[rows],
                            None if self.unlocked is None else self.unlocked[rows])

    def assign(self, rows: torch.Tensor | list[int], other: RolloutState) -> None:
        """Overwrite rows with `other`'s (e.g. after resetting some sub-environments)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.last_latents.device)
        self.cache.assign(rows, other.cache)
        self.last_latents[rows] = other.last_latents
        self.last_seen[rows] = other.last_seen
        if self.reward_probs is not None:
            self.reward_probs[rows] = (other.reward_probs if other.reward_probs is not None
                                       else 0.0)
        if self.unlocked is not None:
            self.unlocked[rows] = other.unlocked if other.unlocked is not None else 0.0


class StepResult(NamedTuple):
    latents: torch.Tensor           # (B, C, h, w) the sampled next latent frame
    reward: torch.Tensor            # (B,) reward of the transition (expected value or mode)
    termination_prob: torch.Tensor  # (B,) probability that the new frame is terminal
    state: RolloutState             # the same object, updated


class DynamicsModel(nn.Module):
    """DiT + action encoder + reward/termination heads (DESIGN decisions 4-8).

    loss(latents (B, T, C, h, w), actions {key: (B, T-1, ...)}, rewards (B, T-1),
         terminated (B, T-1)) -> (loss, metrics)
    start(context_latents (B, K, C, h, w), context_actions {key: (B, K-1, ...)}) -> state
    step(state, actions {key: (B, ...)}) -> (latents (B, C, h, w), reward (B,),
                                             termination_prob (B,), state)
    Latents are normalised (divided by the VAE's latent scale factor). All randomness comes
    from the `generator` passed in (on the model's device), so rollouts are reproducible.
    """

    def __init__(self, config: DynamicsConfig, action_space: spaces.Space):
        super().__init__()
        self.config = config
        self.action_space = action_space
        self.dit = DiT(config.dit)
        self.action_encoder = build_action_encoder(action_space, config.dit.width)
        self.heads = RewardTerminationHead(config.dit.width, config.heads)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The DiT's and the action encoder's own schemes, and a zero last layer for the heads
        (uniform reward distribution, termination probability 1/2 at the start)."""
        self.dit.initialize_weights()
        self.action_encoder.initialize_weights()
        for module in self.heads.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.heads.mlp[-1].weight)

    @property
    def device(self) -> torch.device:
        return self.heads.support.device

    @property
    def denoiser(self) -> Denoiser:
        """D(x; sigma, cond) around the DiT (the samplers' contract)."""
        return Denoiser(self.dit, self.config.diffusion.sigma_data)

    def embed_actions(self, actions: dict[str, torch.Tensor] | None, frames: int,
                      batch_size: int | None = None) -> torch.Tensor:
        """Conditioning of `frames` frames from the actions between them, {key: (B, frames-1,
        ...)}: frame 0 gets the "no action" vector, frame t the embedding of actions[:, t-1].
        `actions` may be None for a single frame (then `batch_size` is needed).
        Returns (B, frames, D)."""
        if actions is None:
            if frames != 1 or batch_size is None:
                raise ValueError(f"{frames} frames need the {frames - 1} actions between them")
            actions = self.action_encoder.placeholder(batch_size, 0)
        padded = {}
        for key, value in actions.items():
            value = torch.as_tensor(value, device=self.device)
            if value.ndim < 2 or value.shape[1] != frames - 1:
                raise ValueError(f"action {key!r} has shape {tuple(value.shape)}; {frames} frames "
                                 f"need (B, {frames - 1}, ...) actions between them")
            padded[key] = torch.cat([value.new_zeros((value.shape[0], 1, *value.shape[2:])),
                                     value], dim=1)
        B = next(iter(padded.values())).shape[0]
        null = torch.zeros(B, frames, dtype=torch.bool, device=self.device)
        null[:, 0] = True
        return self.action_encoder(padded, null)

    # -- training --------------------------------------------------------------------------

    def training_noise_levels(self, batch_size: int, frames: int,
                              generator: torch.Generator | None = None,
                              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels of a training batch, (B, T): an independent level for every frame of
        every window (Diffusion Forcing), and which windows use the teacher-forcing layout,
        (B,) bool (a share `teacher_forcing_prob`)."""
        dcfg = self.config.diffusion
        sigma = sample_training_sigmas((batch_size, frames), p_mean=dcfg.train_p_mean,
                                       p_std=dcfg.train_p_std, sigma_min=dcfg.train_sigma_min,
                                       sigma_max=dcfg.train_sigma_max,
                                       second_share=dcfg.train_second_share,
                                       second_p_mean=dcfg.train_second_p_mean, generator=generator,
                                       device=device)
        teacher_forcing = (torch.rand(batch_size, generator=generator, device=device)
                           < self.config.teacher_forcing_prob)
        return sigma, teacher_forcing

    def training_context_levels(self, batch_size: int, frames: int,
                                generator: torch.Generator | None = None,
                                device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Noise levels of the context frames of a training batch, (B, T), log-uniform between
        `context_sigma` and `train_context_sigma_max` (context-noise augmentation); None when
        the augmentation is off (all at `context_sigma`; nothing is drawn, so runs without it
        keep their random stream)."""
        dcfg = self.config.diffusion
        if dcfg.train_context_sigma_max <= dcfg.context_sigma:
            return None
        low, high = math.log(dcfg.context_sigma), math.log(dcfg.train_context_sigma_max)
        u = torch.rand(batch_size, frames, generator=generator, device=device)
        return (low + (high - low) * u).exp()

    @property
    def _predicts_from_previous(self) -> bool:
        """Whether a window's first frame is given by itself (its own predecessor), so that
        only frames 1.. carry a loss."""
        return self.config.residual or self.config.dit.previous_frame

    def _offset(self, previous_clean: torch.Tensor, previous_seen: torch.Tensor
                ) -> torch.Tensor | float:
        """What a frame's change is taken from (`residual`, `residual_from_seen`): the frame
        before it, clean or as the network saw it; 0.0 when whole frames are diffused."""
        if not self.config.residual:
            return 0.0
        return previous_seen if self.config.residual_from_seen else previous_clean

    def _denoising_pass(self, x0: torch.Tensor, action_emb: torch.Tensor, sigma: torch.Tensor,
                        noise: torch.Tensor, context_noise: torch.Tensor, teacher_forcing: bool,
                        position_weight: torch.Tensor | None = None,
                        context_sigma: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pass over windows x0 (b, T, C, h, w) noised to sigma (b, T). Diffusion
        Forcing: one stream. Teacher forcing: the teacher-forcing layout
        (transformer.teacher_forcing_frame_mask), the windows at the context level (with
        `context_noise`) followed by the noised ones. Either way each frame's `previous` input
        is the frame before it at the context level, as at inference. context_sigma: (b, T)
        the context frames' levels (None: all at `diffusion.context_sigma`).
        Returns the per-frame EDM loss (b, T, or T - 1 without the first frame when it is its
        own predecessor) and the tokens the heads read for frames 1..T-1, (b, T-1, N, D): those
        of the frames at the context level where there are some, as the append pass at
        inference."""
        b, T = x0.shape[:2]
        dcfg = self.config.diffusion
        if context_sigma is None:
            context_sigma = torch.full_like(sigma, dcfg.context_sigma)
        x_context = add_noise(x0, context_sigma, context_noise)
        previous_clean, previous_seen = previous_frames(x0, x_context)
        offset = self._offset(previous_clean, previous_seen)
        target = x0 - offset  # what is diffused: the frame, or its change
        y_noisy = add_noise(target, sigma, noise)
        if not teacher_forcing:
            x, levels = y_noisy, sigma
            cond = Conditioning(action_emb, previous=previous_seen)
        else:
            x = torch.cat([x_context - offset, y_noisy], dim=1)
            levels = torch.cat([context_sigma, sigma], dim=1)  # (b, 2T)
            tokens_per_frame = (x0.shape[-2] // self.config.dit.patch_size
                                * x0.shape[-1] // self.config.dit.patch_size)
            cond = Conditioning(torch.cat([action_emb, action_emb], dim=1),
                                positions=teacher_forcing_positions(T, x0.device),
                                attention=TeacherForcingAttention(T, tokens_per_frame,
                                                                  self.config.dit.window,
                                                                  x0.device),
                                previous=torch.cat([previous_seen, previous_seen], dim=1))
        s = get_scalings(levels, dcfg.sigma_data)
        tokens, c = self.dit.features(append_dims(s.c_in, x.ndim) * x, s.c_noise, cond)
        net_out = self.dit.output(tokens[:, -T:], c[:, -T:], *x0.shape[-2:])  # noisy frames
        frame_loss = edm_loss(net_out, target, y_noisy, get_scalings(sigma, dcfg.sigma_data),
                              position_weight)
        if self._predicts_from_previous:
            frame_loss = frame_loss[:, 1:]
        return frame_loss, tokens[:, 1:T]

    def forward(self, latents: torch.Tensor, actions: dict[str, torch.Tensor],
                rewards: torch.Tensor, terminated: torch.Tensor,
                generator: torch.Generator | None = None,
                position_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (see `loss`). Training calls the module, not `loss`, so that a
        DistributedDataParallel wrapper sees the forward pass and synchronises gradients."""
        return self.loss(latents, actions, rewards, terminated, generator, position_weight)

    def loss(self, latents: torch.Tensor, actions: dict[str, torch.Tensor],
             rewards: torch.Tensor, terminated: torch.Tensor,
             generator: torch.Generator | None = None,
             position_weight: torch.Tensor | None = None,
             action_dropout: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss on every frame of the windows, plus the heads' losses.

        latents: (B, T, C, h, w) normalised clean latents (T >= 2; T may exceed the attention
        window, which then slides as it does at inference); actions {key: (B, T-1, ...)};
        rewards, terminated: (B, T-1). Each window is in the teacher-forcing layout (a share
        `teacher_forcing_prob`) or in the Diffusion Forcing one; both train every frame.
        position_weight: optional (h, w) weights of the latent positions in the denoising loss
        (mean-normalised; see `edm_loss`). action_dropout=False: every frame sees its action
        even when the config has `action_dropout`. Returns the scalar loss and float metrics.
        """
        B, T = latents.shape[:2]
        cfg = self.config
        if T < 2:
            raise ValueError(f"training windows need at least 2 frames, got {T}")
        if tuple(rewards.shape) != (B, T - 1) or tuple(terminated.shape) != (B, T - 1):
            raise ValueError(f"latents {tuple(latents.shape)} need rewards and terminated of "
                             f"shape {(B, T - 1)}, got {tuple(rewards.shape)} and "
                             f"{tuple(terminated.shape)}")
        device = latents.device
        latents = latents.float()
        rewards = torch.as_tensor(rewards, device=device)
        terminated = torch.as_tensor(terminated, device=device)
        action_emb = self.embed_actions(actions, T)
        if cfg.action_dropout > 0 and action_dropout:
            # Frame 0 already carries "no action"; drawn only when on, so runs without it keep
            # their random stream.
            dropped = torch.rand(B, T, generator=generator, device=device) < cfg.action_dropout
            action_emb = torch.where(dropped[..., None],
                                     self.action_encoder.null.to(action_emb.dtype), action_emb)
        sigma, teacher_forcing = self.training_noise_levels(B, T, generator, device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        context_noise = torch.randn(latents.shape, generator=generator, device=device)
        context_sigma = self.training_context_levels(B, T, generator, device)
        frame_losses, head_tokens, order = [], [], []
        for rows, layout in ((~teacher_forcing, False), (teacher_forcing, True)):
            if bool(rows.any()):
                frame_loss, tokens = self._denoising_pass(
                    latents[rows], action_emb[rows], sigma[rows], noise[rows],
                    context_noise[rows], teacher_forcing=layout,
                    position_weight=position_weight,
                    context_sigma=None if context_sigma is None else context_sigma[rows])
                frame_losses.append(frame_loss)
                head_tokens.append(tokens)
                order.append(rows.nonzero()[:, 0])
        diffusion_loss = torch.cat(frame_losses).mean()
        order = torch.cat(order)
        # Heads: the transition into frame t+1 is read from frame t+1's tokens, with only a
        # share of their gradients reaching the DiT (HEAD_GRADIENT_SCALE).
        tokens = torch.cat(head_tokens)
        scale = cfg.heads.trunk_gradient_scale
        tokens = scale * tokens + (1 - scale) * tokens.detach()
        reward_logits, termination_logits = self.heads(tokens)
        reward_loss, termination_loss = self.heads.loss(reward_logits, termination_logits,
                                                        rewards[order], terminated[order])
        loss = diffusion_loss + cfg.heads.loss_weight * (reward_loss + termination_loss)
        with torch.no_grad():
            predicted = self.heads.decode(reward_logits, "mode")
            metrics = {
                "loss": loss.item(),
                "diffusion_loss": diffusion_loss.item(),
                "reward_loss": reward_loss.item(),
                "termination_loss": termination_loss.item(),
                "reward_mae": (predicted - rewards[order].to(predicted)).abs().mean().item(),
            }
        return loss, metrics

    @torch.no_grad()
    def action_gain(self, latents: torch.Tensor, actions: dict[str, torch.Tensor],
                    rewards: torch.Tensor, terminated: torch.Tensor, seed: int = 0) -> float:
        """How much the model reads the action: the relative rise of the denoising loss on
        windows (B >= 2, as `loss` takes them) when each window takes the actions of the one
        before it in the batch, under the same noise. 0 when the prediction ignores the action.
        A model can predict most moves of held actions from the motion already in its
        context, so a low loss alone does not show that it follows the action."""
        def diffusion_loss(acts: dict[str, torch.Tensor]) -> float:
            generator = torch.Generator(latents.device).manual_seed(seed)
            return self.loss(latents, acts, rewards, terminated, generator,
                             action_dropout=False)[1]["diffusion_loss"]

        shuffled = {k: v.roll(1, dims=0) for k, v in actions.items()}
        return diffusion_loss(shuffled) / max(diffusion_loss(actions), 1e-12) - 1

    # -- incremental rollout ---------------------------------------------------------------

    def _append(self, latents: torch.Tensor, action_emb: torch.Tensor, cache: KVCache,
                generator: torch.Generator | None,
                before: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run frames (B, T, C, h, w) through the network at the context noise level, so their
        keys/values enter the cache. `before`: the (clean, seen) frame preceding them
        (`previous_frames`). Returns their output tokens (B, T, N, D) and the last frame as
        the network saw it (B, C, h, w)."""
        B, T = latents.shape[:2]
        dcfg = self.config.diffusion
        sigma = torch.full((B, T), dcfg.context_sigma, device=latents.device)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        latents = latents.float()
        x = add_noise(latents, sigma, noise)
        previous_clean, previous_seen = previous_frames(latents, x, before)
        offset = self._offset(previous_clean, previous_seen)
        s = get_scalings(sigma, dcfg.sigma_data)
        tokens, _ = self.dit.features(append_dims(s.c_in, x.ndim) * (x - offset), s.c_noise,
                                      Conditioning(action_emb, cache, previous=previous_seen))
        cache.commit(T)
        return tokens, x[:, -1]

    @torch.no_grad()
    def start(self, context_latents: torch.Tensor,
              context_actions: dict[str, torch.Tensor] | None,
              generator: torch.Generator | None = None) -> RolloutState:
        """Begin rollouts from K real frames (B, K, C, h, w) and the K-1 actions between them
        ({key: (B, K-1, ...)}, or None when K = 1): their keys and values are computed once, at
        the context noise level (the noise drawn from `generator`), and kept. Only the last
        W-1 frames matter for the next step."""
        B, K = context_latents.shape[:2]
        if K < 1:
            raise ValueError("a rollout needs at least one context frame")
        cache = KVCache.empty(B, self.config.dit.window, self.config.dit.depth, self.device)
        action_emb = self.embed_actions(context_actions, K, batch_size=B)
        _, seen = self._append(context_latents, action_emb, cache, generator)
        return RolloutState(cache, context_latents[:, -1].float().clone(), seen)

    @torch.no_grad()
    def step(self, state: RolloutState, actions: dict[str, torch.Tensor],
             generator: torch.Generator | None = None, num_steps: int | None = None,
             sampler: str | None = None, reward_mode: str = "mean",
             project: Callable[[torch.Tensor], torch.Tensor] | None = None,
             guidance: float = 1.0) -> StepResult:
        """Sample the next frame of every row given the action taken in the current one.

        actions: {key: (B, *sub_shape)}. Random numbers are drawn from `generator` in this
        order: the starting noise (B, 1, C, h, w), then the context noise of the new frame.
        The sampler runs only the new frame's tokens, attending to the cache; the sampled
        frame is then run once more at the context noise level to append its keys/values
        (evicting the oldest frame once the window is full) and to read reward and termination.
        Network evaluations: those of the sampler (`num_steps` Euler steps = num_steps) + 1.
        `project`: maps the sampled latents (B, 1, C, h, w) to the ones that enter the context
        and are returned; `WorldModel` passes a VAE round trip (re-encoding, see there).
        `guidance`: classifier-free guidance scale on the action (`edm.GuidedDenoiser`; the
        unconditional prediction sees the learned "no action", which only a model trained
        with `action_dropout` knows as such). 1: none; otherwise each sampler evaluation
        runs the network on twice the rows (with and without the action, in one call).
        """
        dcfg = self.config.diffusion
        B, C, h, w = state.last_latents.shape
        action_emb = self.action_encoder({k: torch.as_tensor(v, device=self.device)[:, None]
                                          for k, v in actions.items()})  # (B, 1, D)
        if action_emb.shape[0] != B:
            raise ValueError(f"{action_emb.shape[0]} actions for a rollout of {B} rows")
        sigmas = karras_sigmas(num_steps or dcfg.num_steps, dcfg.sample_sigma_min,
                               dcfg.sample_sigma_max, dcfg.rho, device=self.device)
        cond = Conditioning(action_emb, state.cache, previous=state.last_seen[:, None])
        denoiser, start = self.denoiser, 0.0
        if guidance != 1.0:
            # The guided pair runs as one batch of 2B rows over a copy of the cache (the
            # sampling passes write the new frame's keys/values to its slot of that copy; the
            # append pass below writes them to the rollout's own cache).
            no_action = self.action_encoder.null.to(action_emb.dtype).expand_as(action_emb)
            cond = Conditioning(torch.cat([action_emb, no_action]),
                                state.cache.select(torch.arange(B, device=self.device).repeat(2)),
                                previous=cond.previous.repeat(2, 1, 1, 1, 1))
            denoiser = GuidedDenoiser(denoiser, float(guidance))
        if self.config.residual:  # the change is added to the frame `_offset` names
            previous = self._offset(state.last_latents[:, None], state.last_seen[:, None])
            denoiser, start = OffsetDenoiser(denoiser, previous), previous
        x = start + torch.randn((B, 1, C, h, w), generator=generator,
                                device=self.device) * sigmas[0]
        sample = get_sampler(sampler or dcfg.sampler)
        latents = sample(denoiser, x, sigmas, cond)
        if project is not None:
            latents = project(latents).float()
        tokens, seen = self._append(latents, action_emb, state.cache, generator,
                                    before=(state.last_latents, state.last_seen))
        reward_logits, termination_logits = self.heads(tokens)  # (B, 1, R), (B, 1)
        state.last_latents, state.last_seen = latents[:, 0], seen
        state.reward_probs = reward_logits[:, 0].softmax(-1)
        return StepResult(latents[:, 0], self.heads.decode(reward_logits[:, 0], reward_mode),
                          termination_logits[:, 0].sigmoid(), state)
