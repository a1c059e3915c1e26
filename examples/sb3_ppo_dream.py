"""Train stable-baselines3's PPO entirely inside the learned simulator, all sub-envs stepped in
one batched forward pass (WorldModelVectorEnv through the `envs.sb3.SB3VecEnv` adapter).

    python examples/sb3_ppo_dream.py --checkpoint runs/crafter/bundle
    python examples/sb3_ppo_dream.py --checkpoint BUNDLE --obs-mode rgb --num-envs 32 \
        --save ppo_dream_policy.safetensors

With latent observations the policy is an MLP over the latent frame (no decoder in the loop);
with RGB frames SB3's Nature CNN. The trained policy's weights are saved with safetensors
(no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro


@dataclass
class Args:
    checkpoint: Path
    """The world-model checkpoint bundle to train in."""
    obs_mode: Literal["latent", "rgb"] = "latent"
    """What the agent sees: latent frames or RGB frames."""
    num_envs: int = 16
    """Dream sub-envs stepped together."""
    total_timesteps: int = 100_000
    """Env steps to train for."""
    n_steps: int = 64
    """PPO rollout length per sub-env."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 4
    """PPO epochs per rollout."""
    max_episode_steps: int = 1000
    """Truncate dream episodes after this many steps."""
    num_sampling_steps: int | None = None
    """Sampler steps per frame (None: the bundle's default)."""
    bf16: bool = False
    """Run the world model under bfloat16 autocast."""
    seed: int = 0
    """Seed of the envs and the agent."""
    device: str | None = None
    """Device of the world model and the agent (default: CUDA if available)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    save: Path | None = None
    """Write the policy's weights here (.safetensors)."""


def main(args: Args) -> dict:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    import envs  # noqa: F401  (registers worldsim/*)
    from envs.sb3 import SB3VecEnv
    from worldsim.runtime import choose_device, configure

    configure(args.threads or None)
    device = choose_device(args.device)
    dream = gym.make_vec("worldsim/Dream-v0", num_envs=args.num_envs,
                         vectorization_mode="vector_entry_point",
                         checkpoint=str(args.checkpoint), obs_mode=args.obs_mode,
                         device=str(device), max_episode_steps=args.max_episode_steps,
                         num_sampling_steps=args.num_sampling_steps, bf16=args.bf16)
    venv = VecMonitor(SB3VecEnv(dream))
    policy = "CnnPolicy" if args.obs_mode == "rgb" else "MlpPolicy"
    model = PPO(policy, venv, n_steps=args.n_steps,
                batch_size=min(args.batch_size, args.n_steps * args.num_envs),
                n_epochs=args.n_epochs, seed=args.seed, device=str(device), verbose=0)
    model.learn(total_timesteps=args.total_timesteps)
    returns = [ep["r"] for ep in model.ep_info_buffer]
    summary = {"env_steps": int(model.num_timesteps), "episodes_in_buffer": len(returns),
               "mean_return": float(sum(returns) / len(returns)) if returns else None}
    if args.save is not None:
        import os

        from safetensors.torch import save_file

        args.save.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.save.with_name(args.save.name + ".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
        save_file(state, str(tmp), metadata={"policy": policy, "checkpoint": str(args.checkpoint)})
        os.replace(tmp, args.save)
        summary["saved"] = str(args.save)
    venv.close()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
