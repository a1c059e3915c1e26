"""An actor-critic with memory that acts on frames, latents or vectors, as DIAMOND's and
Dreamer's agents do when they train in imagination.

    observation ─► ObservationEncoder ─► LSTMCell ─► ActionHead  (a distribution over actions)
                                                  └► value head  (expected λ-return)

The observation space decides the encoder: uint8 frames (H, W, 3) and float latents
(C, h, w) go through a small convolutional stack, flat float vectors (D,) through an MLP.
The action space decides the head: Discrete and MultiDiscrete now; a Dict of those would be
one more head class (`make_action_head` is the only place that chooses).

Saved as a checkpoint directory (worldsim.training.checkpoint): `config.json` (the typed
config, both spaces, versions, and whatever the trainer adds) + `model.safetensors`; a
trainer may add more tensor groups (optimizer state). Loading is strict.

    model = ActorCritic(PRESETS["base"](), env.single_observation_space, env.single_action_space)
    actions, state = model.act(obs, state)          # batched, no grad
    save_agent("runs/agent", model)
    agent = load_agent("runs/agent")                # what `worldsim play/score --agent` use
    agent.reset(); action = agent.act(observation)  # one env, memory kept inside

Shapes: B batch (envs), T time, letters h w c for images.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from gymnasium import spaces
from torch import nn

FORMAT_KIND = "worldsim-agent"

# LSTM memory: (h, c), each (B, lstm_hidden).
State = tuple[torch.Tensor, torch.Tensor]

ObservationKind = Literal["frames", "latents", "vector"]


@dataclass
class ActorCriticConfig:
    """Sizes of the actor-critic. The observation and action spaces are not part of it: they
    come from the env and are saved beside it."""

    channels: tuple[int, ...] = (32, 32, 64, 64)
    """Output channels of each 3x3 conv stage of the image encoder (DIAMOND's agent uses
    32, 32, 64, 64 over 64x64 frames)."""
    min_feature_size: int = 4
    """A stage halves the feature map (2x2 max-pool) only while the result stays at least
    this many pixels on its shorter side: 64x64 frames end at 4x4, 16x16 latents too."""
    mlp_hidden: int = 256
    """Width of the two-layer MLP that encodes vector observations."""
    lstm_hidden: int = 512
    """Size of the LSTM memory (DIAMOND: 512); the policy and value heads read it."""
    symlog_value: bool = True
    """The value head predicts symlog(return) (DreamerV3, Hafner et al. 2023, eq. 1), so the
    critic's loss has the same scale whatever the rewards' scale; without it, returns of
    ~100 (CartPole) swamped the policy's gradient in the shared encoder and nothing was
    learnt."""

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive and non-empty, got {self.channels}")
        if self.min_feature_size < 1 or self.mlp_hidden < 1 or self.lstm_hidden < 1:
            raise ValueError("min_feature_size, mlp_hidden and lstm_hidden must be positive")


def tiny() -> ActorCriticConfig:
    """For tests: a few thousand parameters."""
    return ActorCriticConfig(channels=(8, 8, 16, 16), mlp_hidden=32, lstm_hidden=32)


def small() -> ActorCriticConfig:
    """About 0.6M parameters: quick experiments on CPU."""
    return ActorCriticConfig(channels=(16, 32, 32, 64), mlp_hidden=128, lstm_hidden=128)


def base() -> ActorCriticConfig:
    """DIAMOND's agent sizes, about 3.2M parameters."""
    return ActorCriticConfig()


PRESETS: dict[str, Callable[[], ActorCriticConfig]] = {"tiny": tiny, "small": small, "base": base}


# ---------------------------------------------------------------------- observations
def observation_kind(space: spaces.Space) -> ObservationKind:
    """Which encoder a space needs: uint8 (H, W, 1|3|4) "frames", float (C, h, w)
    "latents", float (D,) "vector". Anything else raises, naming the space."""
    if isinstance(space, spaces.Box):
        shape, dtype = space.shape, np.dtype(space.dtype)
        if dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4):
            return "frames"
        if np.issubdtype(dtype, np.floating) and len(shape) == 3:
            return "latents"
        if np.issubdtype(dtype, np.floating) and len(shape) == 1:
            return "vector"
    raise ValueError(f"the actor-critic reads uint8 frames (H, W, 3), float latents (C, h, w) "
                     f"or float vectors (D,); observation space {space} is none of these")


class ConvEncoder(nn.Module):
    """3x3 conv stages, each followed by ReLU and (while the map stays large enough) a 2x2
    max-pool; the final map is flattened."""

    def __init__(self, in_channels: int, size: tuple[int, int], channels: tuple[int, ...],
                 min_feature_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        h, w = size
        for out in channels:
            layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU()]
            if min(h, w) // 2 >= min_feature_size:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            in_channels = out
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = in_channels * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) float -> (B, out_dim)."""
        return self.net(x)


class ObservationEncoder(nn.Module):
    """Raw observations of one space -> feature vectors. Frames are scaled to [-1, 1] and
    moved to channel-first here, so callers pass the env's observations untouched."""

    def __init__(self, space: spaces.Box, config: ActorCriticConfig):
        super().__init__()
        self.kind = observation_kind(space)
        self.shape = tuple(space.shape)
        if self.kind == "frames":
            h, w, c = space.shape
            self.net = ConvEncoder(c, (h, w), config.channels, config.min_feature_size)
        elif self.kind == "latents":
            c, h, w = space.shape
            self.net = ConvEncoder(c, (h, w), config.channels, config.min_feature_size)
        else:
            self.net = nn.Sequential(nn.Linear(space.shape[0], config.mlp_hidden), nn.ReLU(),
                                     nn.Linear(config.mlp_hidden, config.mlp_hidden), nn.ReLU())
        self.out_dim = self.net.out_dim if self.kind != "vector" else config.mlp_hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, *observation shape), any dtype the env gives -> (B, out_dim)."""
        if tuple(obs.shape[1:]) != self.shape:
            raise ValueError(f"observations of shape {tuple(obs.shape[1:])} do not match the "
                             f"agent's observation space shape {self.shape}")
        if self.kind == "frames":
            # uint8 [0, 255] -> [-1, 1], channels first
            x = rearrange(obs.float(), "b h w c -> b c h w") / 127.5 - 1.0
        else:
            x = obs.float()
        return self.net(x)


# ---------------------------------------------------------------------- action heads
class Categorical:
    """A batch of categorical distributions over the last axis of `logits` (..., n).
    Sampling takes a torch.Generator, so rollouts are reproducible without global seeding."""

    def __init__(self, logits: torch.Tensor):
        self.log_probs = logits.float().log_softmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """actions: (...) int -> (...)"""
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.log_probs.exp()
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    def mode(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)


class FactoredCategorical:
    """Independent categoricals, one per component of a MultiDiscrete action: log-probs and
    entropies add up. logits (..., sum(nvec)); actions (..., K)."""

    def __init__(self, logits: torch.Tensor, nvec: tuple[int, ...]):
        self.parts = [Categorical(chunk) for chunk in logits.split(list(nvec), dim=-1)]

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(p.log_prob(actions[..., k]) for k, p in enumerate(self.parts))

    def entropy(self) -> torch.Tensor:
        return sum(p.entropy() for p in self.parts)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([p.sample(generator) for p in self.parts], -1)

    def mode(self) -> torch.Tensor:
        return torch.stack([p.mode() for p in self.parts], -1)


class DiscreteHead(nn.Module):
    """Discrete(n, start): logits over n actions; actions are indices 0..n-1 inside the model
    and `start`-shifted at the env boundary."""

    def __init__(self, hidden: int, space: spaces.Discrete):
        super().__init__()
        self.n, self.start = int(space.n), int(space.start)
        self.linear = nn.Linear(hidden, self.n)

    def forward(self, features: torch.Tensor) -> Categorical:
        """features (B, hidden) -> distribution with batch shape (B,)."""
        return Categorical(self.linear(features))

    def to_env(self, actions: torch.Tensor, as_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """(B,) model actions -> (B,) int64 env actions (a tensor on the same device when
        `as_tensor`, for envs that take tensors)."""
        if as_tensor:
            return actions.long() + self.start
        return actions.cpu().numpy().astype(np.int64) + self.start


class MultiDiscreteHead(nn.Module):
    """MultiDiscrete(nvec, start) with a 1-D nvec: one set of logits per component."""

    def __init__(self, hidden: int, space: spaces.MultiDiscrete):
        super().__init__()
        if space.nvec.ndim != 1:
            raise ValueError(f"only 1-D MultiDiscrete spaces are supported, got {space}")
        self.nvec = tuple(int(n) for n in space.nvec)
        self.start = np.asarray(space.start, dtype=np.int64)
        self.linear = nn.Linear(hidden, sum(self.nvec))

    def forward(self, features: torch.Tensor) -> FactoredCategorical:
        return FactoredCategorical(self.linear(features), self.nvec)

    def to_env(self, actions: torch.Tensor, as_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """(B, K) model actions -> (B, K) int64 env actions (see DiscreteHead.to_env)."""
        if as_tensor:
            return actions.long() + torch.as_tensor(self.start, device=actions.device)
        return actions.cpu().numpy().astype(np.int64) + self.start


def make_action_head(hidden: int, space: spaces.Space) -> nn.Module:
    """The policy head for an action space (the one place that decides)."""
    if isinstance(space, spaces.Discrete):
        return DiscreteHead(hidden, space)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteHead(hidden, space)
    raise ValueError(f"the actor-critic supports Discrete and MultiDiscrete action spaces, "
                     f"not {space}")


# ---------------------------------------------------------------------- the agent
def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) ln(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of symlog."""
    return torch.sign(x) * torch.expm1(x.abs())


class ActorCritic(nn.Module):
    """Encoder + LSTM memory + policy and value heads for one (observation, action) space."""

    def __init__(self, config: ActorCriticConfig, observation_space: spaces.Space,
                 action_space: spaces.Space):
        super().__init__()
        self.config = config
        self.observation_space, self.action_space = observation_space, action_space
        self.encoder = ObservationEncoder(observation_space, config)
        self.lstm = nn.LSTMCell(self.encoder.out_dim, config.lstm_hidden)
        self.policy = make_action_head(config.lstm_hidden, action_space)
        self.value = nn.Linear(config.lstm_hidden, 1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Conv and linear weights orthogonal (gain sqrt 2 before ReLUs), all biases zero,
        the LSTM's weights PyTorch's uniform default; the policy head starts near-uniform
        (gain 0.01) so early rollouts try every action (the usual A2C/PPO initialisation)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.policy.linear.weight, gain=0.01)
        nn.init.orthogonal_(self.value.weight, gain=1.0)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(param)

    @property
    def device(self) -> torch.device:
        return self.value.weight.device

    def initial_state(self, batch_size: int) -> State:
        """Empty memory for `batch_size` envs."""
        zeros = torch.zeros(batch_size, self.config.lstm_hidden, device=self.device)
        return zeros, zeros.clone()

    def step(self, obs: torch.Tensor, state: State, first: torch.Tensor | None = None
             ) -> tuple[Categorical | FactoredCategorical, torch.Tensor, State]:
        """One time step. obs (B, *obs shape); state ((B, H), (B, H)); first (B,) bool: the
        memory of those envs is cleared before reading obs (a new episode).
        Returns (action distribution, value (B,), new state)."""
        features = self.encoder(obs.to(self.device))  # (B, D)
        return self._step_features(features, state, first)

    def _step_features(self, features: torch.Tensor, state: State,
                       first: torch.Tensor | None):
        h, c = state
        if first is not None:
            keep = (~first.to(self.device).bool()).float().unsqueeze(-1)  # (B, 1)
            h, c = h * keep, c * keep
        h, c = self.lstm(features, (h, c))
        return self.policy(h), self._value(h), (h, c)

    def _value(self, h: torch.Tensor) -> torch.Tensor:
        """Value in return units from the memory h (..., H) -> (...)."""
        raw = self.value(h).squeeze(-1)
        return symexp(raw) if self.config.symlog_value else raw

    def value_space(self, x: torch.Tensor) -> torch.Tensor:
        """Where the critic's regression happens: symlog(x), or x itself."""
        return symlog(x) if self.config.symlog_value else x

    def unroll(self, obs: torch.Tensor, first: torch.Tensor, state: State
               ) -> tuple[Categorical | FactoredCategorical, torch.Tensor, State]:
        """T steps at once: the encoder sees all T*B observations in one batch, the LSTM
        steps through time. obs (T, B, *obs shape); first (T, B) bool; state as in `step`.
        Returns (distribution with batch shape (T, B), values (T, B), final state)."""
        T, B = first.shape
        features = self.encoder(obs.to(self.device).flatten(0, 1))  # (T*B, D)
        features = rearrange(features, "(t b) d -> t b d", t=T, b=B)
        hiddens = []
        for t in range(T):
            _, _, state = self._step_features(features[t], state, first[t])
            hiddens.append(state[0])
        h = torch.stack(hiddens)  # (T, B, H)
        return self.policy(h), self._value(h), state

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: State, first: torch.Tensor | None = None,
            deterministic: bool = False, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, State]:
        """Batched acting without gradients: (actions (B,) or (B, K) in model indices, new
        state). `self.policy.to_env(actions)` converts them for the env."""
        dist, _, state = self.step(obs, state, first)
        return (dist.mode() if deterministic else dist.sample(generator)), state


# ---------------------------------------------------------------------- saving / loading
def agent_config(model: ActorCritic) -> dict[str, Any]:
    """What config.json holds about the model (the trainer adds its own entries)."""
    from worldsim.spaces import space_to_json
    from worldsim.training.checkpoint import versions

    return {"kind": FORMAT_KIND, "agent": dataclasses.asdict(model.config),
            "observation_space": space_to_json(model.observation_space),
            "action_space": space_to_json(model.action_space), "versions": versions()}


def save_agent(directory: str | os.PathLike, model: ActorCritic,
               extra_config: dict[str, Any] | None = None,
               extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write DIR/config.json + DIR/model.safetensors atomically (plus any `extra_tensors`
    groups, e.g. {"optimizer": ...}, and `extra_config` entries, e.g. {"training": ...})."""
    from worldsim.training.checkpoint import save_checkpoint

    config = {**agent_config(model), **(extra_config or {})}
    tensors = {"model": model.state_dict(), **(extra_tensors or {})}
    return save_checkpoint(directory, config, tensors)


def load_actor_critic(directory: str | os.PathLike, device: str | torch.device = "cpu",
                      groups: tuple[str, ...] = ()
                      ) -> tuple[ActorCritic, dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Rebuild the model from DIR/config.json and load DIR/model.safetensors strictly.
    Returns (model, config dict, the other tensor `groups` asked for)."""
    from worldsim.spaces import space_from_json
    from worldsim.training.checkpoint import (
        CheckpointError,
        dataclass_from_dict,
        load_checkpoint,
        load_state_dict_strict,
        read_config,
    )

    directory = Path(directory)
    config = read_config(directory)
    if config.get("kind") != FORMAT_KIND:
        raise CheckpointError(f"{directory} is not a saved agent (config.json kind is "
                              f"{config.get('kind')!r}, expected {FORMAT_KIND!r})")
    for key in ("agent", "observation_space", "action_space"):
        if key not in config:
            raise CheckpointError(f"{directory}/config.json has no {key!r} entry")
    cfg = dataclass_from_dict(ActorCriticConfig, config["agent"], f"agent config in {directory}")
    model = ActorCritic(cfg, space_from_json(config["observation_space"]),
                        space_from_json(config["action_space"]))
    config, tensors = load_checkpoint(directory, device="cpu", groups=["model", *groups])
    load_state_dict_strict(model, tensors.pop("model"), f"{directory}/model.safetensors")
    return model.to(device), config, tensors


class ActorCriticAgent:
    """A saved actor-critic playing one env: keeps its own memory between calls (what
    `worldsim play` and `worldsim score` need). `sample=False` plays the most likely action."""

    def __init__(self, model: ActorCritic, sample: bool = True, seed: int | None = None):
        self.model = model.eval()
        self.sample = sample
        self.generator = torch.Generator(device=model.device)
        if seed is None:
            self.generator.seed()  # fresh, non-deterministic
        else:
            self.generator.manual_seed(seed)
        self.reset()

    @property
    def action_space(self) -> spaces.Space:
        return self.model.action_space

    def reset(self) -> None:
        """A new episode begins: clear the memory."""
        self.state = self.model.initial_state(1)

    def act(self, observation: Any) -> Any:
        """The action (in the env's action space) for one observation."""
        obs = torch.as_tensor(np.asarray(observation)).unsqueeze(0)
        actions, self.state = self.model.act(obs, self.state, deterministic=not self.sample,
                                             generator=self.generator)
        action = self.model.policy.to_env(actions)[0]
        return int(action) if isinstance(self.action_space, spaces.Discrete) else action


def load_agent(path: str | os.PathLike, action_space: spaces.Space | None = None,
               device: str | torch.device | None = None, sample: bool = True,
               seed: int | None = None) -> ActorCriticAgent:
    """Load a saved agent for playing one env. If `action_space` is given it must equal the
    saved one (else a CheckpointError names both)."""
    from worldsim.runtime import choose_device
    from worldsim.training.checkpoint import CheckpointError

    model, _, _ = load_actor_critic(path, device=choose_device(device))
    if action_space is not None and action_space != model.action_space:
        raise CheckpointError(f"the agent in {path} acts in {model.action_space}, but the env's "
                              f"action space is {action_space}")
    return ActorCriticAgent(model, sample=sample, seed=seed)


def check_spaces(model: ActorCritic, observation_space: spaces.Space,
                 action_space: spaces.Space, where: str) -> None:
    """Raise a ValueError naming `where` if an env's spaces are not the model's."""
    if observation_space != model.observation_space:
        raise ValueError(f"{where}: observation space {observation_space} differs from the "
                         f"agent's {model.observation_space}")
    if action_space != model.action_space:
        raise ValueError(f"{where}: action space {action_space} differs from the agent's "
                         f"{model.action_space}")


__all__ = ["ActorCritic", "ActorCriticAgent", "ActorCriticConfig", "Categorical",
           "FactoredCategorical", "PRESETS", "State", "check_spaces", "load_actor_critic",
           "load_agent", "observation_kind", "save_agent", "symexp", "symlog"]
