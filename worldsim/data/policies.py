"""Policies that play while `worldsim collect` records: chosen by name, acting on a batch.

A world model can only learn what its data shows. Uniform random play mostly dithers in
place (left, right, left...), so the default "sticky" policy holds each action for a random
number of steps: the player travels, and holding "do" at a tree or a cow actually collects
it. Every policy acts on a batch of `num_envs` environments and draws from a numpy
`Generator` it is given, so collection is reproducible.

    policy = make_policy("sticky", action_space, num_envs=4, action_names=env.action_names)
    policy.reset(np.ones(4, bool))          # episodes start (a mask of envs)
    actions = policy.act(observations, rng)  # list of num_envs actions

More policies: `register_policy(name, factory)`, or pass "package.module:factory" as the
name; a factory is called as `factory(action_space, num_envs=..., action_names=...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

# Mean number of steps an action is held by the sticky policy. Crafter's view is 9 tiles
# wide: ~6 steps carries the player half a screen, far enough to show new terrain while
# still turning often enough to stay near interesting things.
STICKY_MEAN_STEPS = 6.0

# Relative frequency of Crafter's actions under the sticky policy (names absent from an env
# get no weight). Movement and "do" make up ~80%: they explore and interact (wood, stone,
# water, cows, zombies). Crafting and placing are tried now and then so that their effects
# appear in the data; "sleep" is rare because once asleep the player sleeps until rested,
# which yields long runs of dark frames.
CRAFTER_ACTION_WEIGHTS: dict[str, float] = {
    "noop": 0.03,
    "move_left": 0.15, "move_right": 0.15, "move_up": 0.15, "move_down": 0.15,
    "do": 0.20,
    "sleep": 0.01,
    "place_stone": 0.03, "place_table": 0.03, "place_furnace": 0.02, "place_plant": 0.02,
    "make_wood_pickaxe": 0.01, "make_stone_pickaxe": 0.01, "make_iron_pickaxe": 0.01,
    "make_wood_sword": 0.01, "make_stone_sword": 0.01, "make_iron_sword": 0.01,
}


class Policy(Protocol):
    """What collect needs from a policy."""

    def reset(self, mask: np.ndarray) -> None:
        """New episodes begin in the envs where `mask` (bool, (num_envs,)) is True."""

    def act(self, observations: np.ndarray, rng: np.random.Generator) -> list[Any]:
        """One action per env for a batch of observations (num_envs, H, W, 3)."""


class RandomPolicy:
    """Uniform random actions, drawn independently every step."""

    def __init__(self, action_space: spaces.Space, num_envs: int,
                 action_names: Sequence[str] | None = None):
        self.action_space, self.num_envs = action_space, num_envs

    def reset(self, mask: np.ndarray) -> None:
        pass

    def act(self, observations: np.ndarray, rng: np.random.Generator) -> list[Any]:
        return [sample_action(self.action_space, rng) for _ in range(self.num_envs)]


class StickyPolicy:
    """Each env holds a random action for a geometric number of steps (mean `mean_steps`),
    then draws a new one. For a Discrete space with known action names the draw is weighted
    by `weights` (Crafter's by default); otherwise it is uniform over the space."""

    def __init__(self, action_space: spaces.Space, num_envs: int,
                 action_names: Sequence[str] | None = None,
                 mean_steps: float = STICKY_MEAN_STEPS,
                 weights: dict[str, float] | None = None):
        if mean_steps < 1:
            raise ValueError(f"mean_steps must be at least 1, got {mean_steps}")
        self.action_space, self.num_envs, self.mean_steps = action_space, num_envs, mean_steps
        self.probs = None
        if isinstance(action_space, spaces.Discrete) and action_names is not None:
            weights = CRAFTER_ACTION_WEIGHTS if weights is None else weights
            w = np.array([weights.get(name, 0.0) for name in action_names], dtype=np.float64)
            if len(action_names) != action_space.n:
                raise ValueError(f"{len(action_names)} action names for {action_space}")
            if w.sum() > 0:
                self.probs = w / w.sum()
        self._actions: list[Any] = [None] * num_envs
        self._left = np.zeros(num_envs, dtype=np.int64)

    def reset(self, mask: np.ndarray) -> None:
        self._left[np.asarray(mask, dtype=bool)] = 0

    def act(self, observations: np.ndarray, rng: np.random.Generator) -> list[Any]:
        for i in range(self.num_envs):
            if self._left[i] <= 0:
                if self.probs is not None:
                    self._actions[i] = self.action_space.start + int(
                        rng.choice(len(self.probs), p=self.probs))
                else:
                    self._actions[i] = sample_action(self.action_space, rng)
                self._left[i] = rng.geometric(1.0 / self.mean_steps)
            self._left[i] -= 1
        return list(self._actions)


def sample_action(space: spaces.Space, rng: np.random.Generator) -> Any:
    """A uniform sample of `space` drawn from `rng` (gymnasium's `space.sample()` uses the
    space's own generator, which would make collection depend on hidden state)."""
    if isinstance(space, spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        return (space.start + rng.integers(0, space.nvec)).astype(space.dtype)
    if isinstance(space, spaces.MultiBinary):
        return rng.integers(0, 2, size=space.shape).astype(space.dtype)
    if isinstance(space, spaces.Box):
        low = np.where(space.bounded_below, space.low, -1.0)
        high = np.where(space.bounded_above, space.high, 1.0)
        if np.issubdtype(space.dtype, np.integer):
            return rng.integers(low, high, endpoint=True).astype(space.dtype)
        return rng.uniform(low, high).astype(space.dtype)
    if isinstance(space, spaces.Dict):
        return {k: sample_action(s, rng) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(sample_action(s, rng) for s in space.spaces)
    raise TypeError(f"cannot sample actions from {space}")


PolicyFactory = Callable[..., Policy]
POLICIES: dict[str, PolicyFactory] = {"random": RandomPolicy, "sticky": StickyPolicy}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make `factory(action_space, num_envs=..., action_names=...)` available by `name`."""
    POLICIES[name] = factory


def make_policy(name: str, action_space: spaces.Space, num_envs: int,
                action_names: Sequence[str] | None = None) -> Policy:
    """The policy called `name` (see `POLICIES`), or "package.module:factory" to load one.
    "NAME=ARGUMENT" passes ARGUMENT to the factory as `argument` (e.g. the path of a saved
    agent: "agents.policy:AgentPolicy=runs/imagine/agent")."""
    name, has_argument, argument = name.partition("=")
    if name in POLICIES:
        factory = POLICIES[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load policy {name!r}: {e}") from e
    else:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))} "
                         "(or 'package.module:factory')")
    extra = {"argument": argument} if has_argument else {}
    return factory(action_space, num_envs=num_envs, action_names=action_names, **extra)
