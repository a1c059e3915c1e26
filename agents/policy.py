"""A saved actor-critic as a `worldsim collect` policy, so that `worldsim loop` (and anyone)
can record real play of a trained agent into an episode store:

    worldsim collect --policy agents.policy:AgentPolicy=runs/imagine/agent --steps 20000 ...

The part after "=" is the agent's path (`worldsim.data.policies.make_policy` passes it as
`argument`). Actions are sampled from the policy with the collector's numpy generator, so a
collection is as reproducible as with the built-in policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces


class AgentPolicy:
    """The agent saved at `argument` acting on a batch of `num_envs` envs, each with its own
    LSTM memory (cleared when `reset` marks a new episode)."""

    def __init__(self, action_space: spaces.Space, num_envs: int,
                 action_names: Sequence[str] | None = None, argument: str | None = None):
        from agents.actor_critic import load_agent

        if not argument:
            raise ValueError("the agent policy needs the agent's path: "
                             "'agents.policy:AgentPolicy=PATH'")
        # load_agent checks the action space; only its model is used (acting is batched here)
        self.model = load_agent(argument, action_space, device="cpu").model
        self.num_envs = num_envs
        self.state = self.model.initial_state(num_envs)
        self.first = torch.ones(num_envs, dtype=torch.bool)
        self.generator = torch.Generator()

    def reset(self, mask: np.ndarray) -> None:
        self.first |= torch.as_tensor(np.asarray(mask, dtype=bool))

    @torch.no_grad()
    def act(self, observations: np.ndarray, rng: np.random.Generator) -> list[Any]:
        self.generator.manual_seed(int(rng.integers(2**63 - 1)))
        obs = torch.as_tensor(np.asarray(observations))
        actions, self.state = self.model.act(obs, self.state, self.first,
                                             generator=self.generator)
        self.first[:] = False
        env_actions = self.model.policy.to_env(actions)
        if isinstance(self.model.action_space, spaces.Discrete):
            return [int(a) for a in env_actions]
        return list(env_actions)
