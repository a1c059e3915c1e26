"""What the dream pays for each action: the mean reward per step of N dream envs that repeat one
action for H steps from the bundle's real start contexts, beside uniformly random actions.
A reward an agent can farm shows up as one action paid far above random actions everywhere.

    python examples/dream_reward_by_action.py --checkpoint worldsim/assets/crafter-default

Prints one JSON object: {action name: mean reward per step}, plus "random".
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers worldsim/*)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    env = gym.make_vec("worldsim/Dream-v0", num_envs=args.num_envs, checkpoint=args.checkpoint,
                       obs_mode="latent", tensor_mode=True, bf16=args.bf16,
                       vectorization_mode="vector_entry_point")
    n = env.single_action_space.n
    names = env.unwrapped.world_model.action_names or [str(a) for a in range(n)]
    g = torch.Generator().manual_seed(args.seed)
    policies = {names[a]: (lambda a=a: torch.full((args.num_envs,), a)) for a in range(n)}
    policies["random"] = lambda: torch.randint(0, n, (args.num_envs,), generator=g)
    result = {}
    for name, act in policies.items():
        env.reset(seed=args.seed)
        rewards = [env.step(act())[1].float().mean().item() for _ in range(args.horizon)]
        result[name] = float(np.mean(rewards))
    env.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
