"""The random agent: uniform over the action space, every step, independently of what it
sees. Crafter's reference baseline (1.6% Crafter score in Hafner, 2021)."""

from __future__ import annotations

import copy
from typing import Any

from gymnasium import spaces


class RandomAgent:
    """Acts uniformly at random in `action_space`; seeded, so a run repeats exactly.
    Same interface as a loaded actor-critic agent: `reset()`, `act(observation)`."""

    def __init__(self, action_space: spaces.Space, seed: int | None = None):
        # our own copy: seeding must not change the env's action_space sampling
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(seed)

    def reset(self) -> None:
        """A new episode begins (nothing to forget)."""

    def act(self, observation: Any = None) -> Any:
        """A uniformly random action; the observation is ignored."""
        return self.action_space.sample()
