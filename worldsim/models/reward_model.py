"""A companion reward and termination model: what a transition z_t --a_t--> z_{t+1} earned,
read from the two latent frames themselves.

    model = RewardModel(config, action_space)
    reward_logits, termination_logit = model(previous, actions, latents)
    #   previous, latents: (B, C, h, w) normalised latents of frames t and t + 1
    #   actions: {key: (B, ...)} the action taken in frame t (read only with action_input)
    #   -> reward logits (B, R) over config.heads.reward_support, termination logit (B,)

Why a separate model beside the DiT's own heads (DESIGN decision 7 allows either): the heads
read the DiT's features of a frame at the context noise level, share the DiT's training batches
(where about 5% of Crafter transitions carry a reward and 0.6% a termination) and only a tenth
of their gradient shapes those features. Trained that way they never predicted a rare event
(recall 0.002 on held-out transitions). This model sees the change directly (the frames and
their difference: an inventory slot filling, a heart emptying), trains on batches in which
rare events are oversampled, and corrects its logits for that oversampling so that they stay
calibrated to the data (logit adjustment, Menon et al. 2021), which keeps the expected reward
an agent trains on unbiased.

Letters: B batch, C latent channels, h w latent size, D width, N = (h/2)(w/2) feature cells,
R reward support size.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from gymnasium import spaces
from torch import nn

from worldsim.models.actions import build_action_encoder
from worldsim.models.dynamics import REWARD_SUPPORT, HeadsConfig, RewardTerminationHead, two_hot


@dataclass
class RewardModelConfig:
    """Shape of the reward model and the event statistics its logits are corrected with."""

    latent_channels: int = 4
    latent_size: tuple[int, int] = (16, 16)
    width: int = 128
    """Channels of the convolutional trunk and of the feature cells the heads pool."""
    action_input: bool = False
    """Also read the action taken. Off by default: with it, a model trained on sampled next
    frames gave "do" an expected reward of 0.08 in every dream state, which an agent in
    imagination learnt to farm (see docs/DESIGN-NOTES.md); without it, a reward is read off
    the frames alone."""
    next_frame_input: bool = True
    """Read frame t + 1. Off (with `action_input`): the reward is predicted from frame t and
    the action alone, its expectation before the outcome is drawn (Dreamer's reward reads the
    state the action leads to; this reads the state and the action). In a dream whose DiT does
    not draw an event's outcome (an inventory slot filling) only this form still pays for the
    actions that earn rewards; the price is that the dream never shows the reward was taken,
    so the same action keeps paying where the game would pay once."""
    reward_support: tuple[float, ...] = REWARD_SUPPORT
    """Increasing reward values the model predicts a distribution over (two-hot)."""
    reward_prior: tuple[float, ...] | None = None
    """Share of each support value in the data (two-hot mass); None: no correction."""
    reward_prior_train: tuple[float, ...] | None = None
    """Share of each support value in the oversampled training batches."""
    termination_rate: float | None = None
    """Share of terminal transitions in the data; None: no correction."""
    termination_rate_train: float | None = None
    """Share of terminal transitions in the oversampled training batches."""
    achievements: tuple[str, ...] = ()
    """Names of the achievements an unlock head predicts (labels from `worldsim data
    label-achievements`); empty: no such head. With it the reward head learns the rest of
    the reward (Crafter: health changes), and a rollout pays each achievement's +1 once per
    episode: the expected unlock times the share of the achievement not yet unlocked
    (`WorldModel.step`), which is what the game pays."""
    achievement_rate: tuple[float, ...] | None = None
    """Share of transitions that unlock each achievement in the data; None: no correction."""
    achievement_rate_train: tuple[float, ...] | None = None
    """The same share in the oversampled training batches."""
    # Settings introduced after the format was first written, with the value that reproduces
    # the older behaviour (checkpoint.dataclass_from_dict fills them in).
    ADDED_LATER: typing.ClassVar[dict[str, Any]] = {"action_input": True,
                                                    "next_frame_input": True,
                                                    "achievements": (),
                                                    "achievement_rate": None,
                                                    "achievement_rate_train": None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _log_odds(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(torch.tensor(p / (1 - p)).log())


class RewardPrediction(NamedTuple):
    """What the reward model predicts for a batch of transitions (B rows)."""

    reward: torch.Tensor                    # (B,) reward decoded from the distribution
    reward_probs: torch.Tensor              # (B, R) distribution over the reward support
    termination_prob: torch.Tensor          # (B,)
    achievement_probs: torch.Tensor | None  # (B, A) probability that the transition unlocks
                                            # each achievement; None without the unlock head
    achievement_reward: torch.Tensor | None = None  # (B,) the part of `reward` paid for them
    unlocked: torch.Tensor | None = None    # (B, A) the episode's unlocked state after it


class RewardModel(nn.Module):
    """Frames t and t + 1 (and their difference), or frame t alone (`next_frame_input` off)
    -> a small strided conv trunk -> feature cells
    with learned positions (the HUD sits at a fixed place), plus the action's embedding if
    `action_input` ->
    `RewardTerminationHead` (mean- and max-pooled cells -> reward logits, termination logit).
    The logits it returns are calibrated to the data; `loss` adds back the oversampling."""

    def __init__(self, config: RewardModelConfig, action_space: spaces.Space):
        super().__init__()
        self.config, self.action_space = config, action_space
        C, D = config.latent_channels, config.width
        h, w = config.latent_size
        if h % 2 or w % 2:
            raise ValueError(f"the latent size must be even, got {config.latent_size}")
        if not (config.next_frame_input or config.action_input):
            raise ValueError("a reward model needs frame t + 1 or the action: set "
                             "next_frame_input or action_input")
        inputs = 3 * C if config.next_frame_input else C  # frames t, t + 1, change; or frame t
        self.trunk = nn.Sequential(
            nn.Conv2d(inputs, D // 2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(D // 2, D, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(D, D, 3, padding=1), nn.SiLU(),
            nn.Conv2d(D, D, 3, padding=1))
        self.positions = nn.Parameter(torch.zeros(1, (h // 2) * (w // 2), D))
        self.action_encoder = build_action_encoder(action_space, D) if config.action_input \
            else None
        self.heads = RewardTerminationHead(D, HeadsConfig(reward_support=config.reward_support))
        A = len(config.achievements)
        # Unlock head: pooled like the reward head (mean and max over the cells).
        self.achievement_head = nn.Sequential(
            nn.LayerNorm(D), _MeanMaxPool(), nn.Linear(2 * D, D), nn.SiLU(),
            nn.Linear(D, A)) if A else None
        rate, rate_train = config.achievement_rate, config.achievement_rate_train
        if A and ((rate is None) != (rate_train is None) or (
                rate is not None and not len(rate) == len(rate_train) == A)):
            raise ValueError(f"achievement_rate and achievement_rate_train need {A} values each")
        achievement_shift = (torch.zeros(A) if rate is None else torch.tensor(
            [_log_odds(q) - _log_odds(p) for p, q in zip(rate, rate_train, strict=True)]))
        support = len(config.reward_support)
        prior, prior_train = config.reward_prior, config.reward_prior_train
        if (prior is None) != (prior_train is None) or (
                prior is not None and not len(prior) == len(prior_train) == support):
            raise ValueError(f"reward_prior and reward_prior_train need {support} values each")
        reward_shift = (torch.zeros(support) if prior is None else
                        torch.tensor(prior_train).clamp_min(1e-6).log()
                        - torch.tensor(prior).clamp_min(1e-6).log())
        termination_shift = (0.0 if config.termination_rate is None else
                             _log_odds(config.termination_rate_train) - _log_odds(config.termination_rate))
        # Derived from the config, so not part of the state dict.
        self.register_buffer("reward_shift", reward_shift.float(), persistent=False)
        self.register_buffer("termination_shift", torch.tensor(termination_shift), persistent=False)
        self.register_buffer("achievement_shift", achievement_shift.float(), persistent=False)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.zeros_(self.heads.mlp[-1].weight)
        nn.init.zeros_(self.heads.mlp[-1].bias)
        if self.achievement_head is not None:
            # Start at the training batches' unlock rates rather than at p = 0.5.
            nn.init.zeros_(self.achievement_head[-1].weight)
            with torch.no_grad():
                start = config.achievement_rate_train or (0.01,) * A
                self.achievement_head[-1].bias.copy_(torch.tensor([_log_odds(q) for q in start]))

    @property
    def support(self) -> torch.Tensor:
        return self.heads.support

    def forward(self, previous: torch.Tensor, actions: dict[str, torch.Tensor],
                latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """previous, latents (B, C, h, w); actions {key: (B, ...)} -> calibrated reward logits
        (B, R) and termination logit (B,)."""
        reward_logits, termination_logits, _ = self.logits(previous, actions, latents)
        return reward_logits, termination_logits

    def logits(self, previous: torch.Tensor, actions: dict[str, torch.Tensor],
               latents: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As `forward`, plus the calibrated unlock logits (B, A) (None without the head)."""
        if previous.shape != latents.shape or previous.shape[1:] != (
                self.config.latent_channels, *self.config.latent_size):
            raise ValueError(f"the reward model takes two latents of shape (B, "
                             f"{self.config.latent_channels}, {self.config.latent_size[0]}, "
                             f"{self.config.latent_size[1]}), got {tuple(previous.shape)} and "
                             f"{tuple(latents.shape)}")
        x = (torch.cat([previous, latents, latents - previous], dim=1)
             if self.config.next_frame_input else previous).float()
        cells = rearrange(self.trunk(x), "b d h w -> b (h w) d") + self.positions  # (B, N, D)
        if self.action_encoder is not None:
            null = torch.zeros(len(x), 1, dtype=torch.bool, device=x.device)
            cells = cells + self.action_encoder({k: torch.as_tensor(v, device=x.device)[:, None]
                                                 for k, v in actions.items()}, null)  # (B, 1, D)
        reward_logits, termination_logits = self.heads(cells[:, None])
        achievement_logits = None if self.achievement_head is None else \
            self.achievement_head(cells).float() - self.achievement_shift
        return (reward_logits[:, 0] - self.reward_shift,
                termination_logits[:, 0] - self.termination_shift, achievement_logits)

    def loss(self, previous: torch.Tensor, actions: dict[str, torch.Tensor],
             latents: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
             achievements: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy against two-hot rewards plus binary cross-entropy of termination (and,
        with the unlock head, of each achievement's unlock), on the logits of the training
        distribution (calibrated logits + the oversampling shift). rewards, terminated: (B,);
        achievements: (B, A) the unlock labels, required with the unlock head (`rewards` are
        then the rest of the reward, without the achievements' +1)."""
        reward_logits, termination_logits, achievement_logits = self.logits(previous, actions,
                                                                            latents)
        reward_loss, termination_loss = self.heads.loss(
            (reward_logits + self.reward_shift)[:, None],
            (termination_logits + self.termination_shift)[:, None],
            rewards[:, None], terminated[:, None])
        metrics = {"reward_loss": reward_loss.item(), "termination_loss": termination_loss.item()}
        loss = reward_loss + termination_loss
        if achievement_logits is not None:
            if achievements is None:
                raise ValueError("a reward model with an unlock head needs achievement labels")
            achievement_loss = F.binary_cross_entropy_with_logits(
                achievement_logits + self.achievement_shift, achievements.float(),
                reduction="none").sum(-1).mean()
            metrics["achievement_loss"] = achievement_loss.item()
            loss = loss + achievement_loss
        return loss, metrics

    def predict(self, previous: torch.Tensor, actions: dict[str, torch.Tensor],
                latents: torch.Tensor, reward_mode: str = "mean",
                unlocked: torch.Tensor | None = None,
                pay_rule: str = "expected") -> RewardPrediction:
        """Reward (B,) decoded by `reward_mode`, the distribution (B, R) of its part other than
        achievements, the termination probability (B,) and, with the unlock head, the unlock
        probabilities (B, A), the achievements' part of the reward (each paid once per
        episode given `unlocked` (B, A), what the episode unlocked before; None: nothing; see
        `pay_once` and its `pay_rule`; rounded in "mode") and the unlocked state after the
        transition."""
        reward_logits, termination_logits, achievement_logits = self.logits(previous, actions,
                                                                            latents)
        reward = self.heads.decode(reward_logits, reward_mode)
        probs, once, after = None, None, None
        if achievement_logits is not None:
            probs = achievement_logits.sigmoid()
            once, after = pay_once(probs, unlocked, pay_rule)
            reward = reward + (once if reward_mode == "mean" else once.round())
        return RewardPrediction(reward, reward_logits.softmax(-1), termination_logits.sigmoid(),
                                probs, once, after)


# How a dream pays an achievement once per episode from unlock probabilities (`pay_once`).
PAY_ONCE_RULES = ("expected", "best")


def pay_once(achievement_probs: torch.Tensor, unlocked: torch.Tensor | None,
             rule: str = "expected") -> tuple[torch.Tensor, torch.Tensor]:
    """The achievements' share of a transition's reward when each pays +1 once per episode,
    and the episode's unlocked state after it. achievement_probs (B, A): the unlock
    probabilities; unlocked (B, A): the state before (None: nothing unlocked; a start context's
    labels give 1 for what its episode took). Returns (reward (B,), unlocked (B, A)).

    "expected": unlocked is the probability that each was unlocked before, and a transition
    pays p times the rest, leaving 1 - p to pay later. In expectation this pays what the game
    pays if the presses were independent tries, but a press the model is unsure about (will
    it land?) then pays again each time it is repeated: ten presses at p = 0.12 collect 72%.
    "best": unlocked is the highest unlock probability the episode has reached, and a
    transition pays only the rise above it. Repeating a press in the same situation pays
    nothing more; an episode collects at most the best chance it set up, 1 for a sure one.
    """
    if rule not in PAY_ONCE_RULES:
        raise ValueError(f"pay-once rule must be one of {PAY_ONCE_RULES}, got {rule!r}")
    unlocked = torch.zeros_like(achievement_probs) if unlocked is None else unlocked
    if rule == "best":
        after = torch.maximum(unlocked, achievement_probs)
        return (after - unlocked).sum(-1), after
    fresh = achievement_probs * (1 - unlocked)
    return fresh.sum(-1), unlocked + fresh


class _MeanMaxPool(nn.Module):
    """(B, N, D) cells -> (B, 2D): their mean and their max."""

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return torch.cat([cells.mean(dim=1), cells.amax(dim=1)], dim=-1)


def event_shares(rewards: torch.Tensor, terminated: torch.Tensor, support: tuple[float, ...],
                 event_share: float, event: torch.Tensor | None = None,
                 achievements: torch.Tensor | None = None) -> dict[str, Any]:
    """The prior fields of `RewardModelConfig` for data with these rewards and terminations
    (flat), when a share `event_share` of each training batch is drawn from the event
    transitions (default: a nonzero reward or a termination; or the given `event` mask) and
    the rest from all the others. With `achievements` (T, A) unlock labels, also the
    achievement rate fields."""
    rewards, terminated = torch.as_tensor(rewards).flatten(), torch.as_tensor(terminated).flatten()
    mass = two_hot(rewards, torch.tensor(support, dtype=torch.float32))  # (T, R)
    event = (rewards != 0) | terminated.bool() if event is None else torch.as_tensor(event).bool()
    if not bool(event.any()) or bool(event.all()):
        raise ValueError("oversampling needs both event and plain transitions in the data")
    prior = mass.mean(0)
    prior_train = event_share * mass[event].mean(0) + (1 - event_share) * mass[~event].mean(0)
    rate = terminated.float().mean().item()
    rate_train = (event_share * terminated[event].float().mean().item()
                  + (1 - event_share) * terminated[~event].float().mean().item())
    out = {"reward_prior": tuple(prior.tolist()), "reward_prior_train": tuple(prior_train.tolist()),
           "termination_rate": rate, "termination_rate_train": rate_train}
    if achievements is not None:
        labels = torch.as_tensor(achievements).float()
        out["achievement_rate"] = tuple(labels.mean(0).tolist())
        out["achievement_rate_train"] = tuple((event_share * labels[event].mean(0) + (
            1 - event_share) * labels[~event].mean(0)).tolist())
    return out


def load_reward_model(directory, device: str | torch.device = "cpu",
                      action_space: dict[str, Any] | None = None,
                      vae_fingerprint: str | None = None) -> tuple[RewardModel, dict]:
    """A `RewardModel` from a checkpoint directory: a bundle's `reward/`, a training checkpoint
    (EMA weights) or a run directory (its newest checkpoint). Strict, like `load_dynamics`;
    with `action_space` (its JSON form) or `vae_fingerprint`, it must have been trained for
    that action space and on that VAE's latents."""
    from worldsim.spaces import space_from_json
    from worldsim.training.checkpoint import (
        CheckpointError,
        dataclass_from_dict,
        load_state_dict_strict,
    )
    from worldsim.training.loop import read_model_checkpoint

    directory, meta, group, tensors = read_model_checkpoint(
        directory, "reward", keys=("reward_model", "action_space"),
        vae_fingerprint=vae_fingerprint)
    if action_space is not None and meta["action_space"] != action_space:
        raise CheckpointError(f"{directory} was trained for another action space "
                              f"({meta['action_space']}) than {action_space}")
    config = dataclass_from_dict(RewardModelConfig, meta["reward_model"], "reward model config")
    model = RewardModel(config, space_from_json(meta["action_space"]))
    load_state_dict_strict(model, tensors, f"{directory}/{group}.safetensors")
    return model.to(device).eval(), meta
