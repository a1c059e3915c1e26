"""PPO in the learned simulator, written the CleanRL way (one file, one loop you can read top
to bottom; after CleanRL's ppo.py), on the natively batched dream env in tensor mode: the
observations, rewards and episode flags stay torch tensors on the device, so the agent never
copies a frame to the host.

    python examples/cleanrl_style_dream.py --checkpoint runs/crafter/bundle
    python examples/cleanrl_style_dream.py --checkpoint BUNDLE --obs-mode rgb --num-envs 32

The dream env resets ended sub-envs in the same step (AutoresetMode.SAME_STEP), which is
what this loop assumes: `next_done` marks the first observation of a new episode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch import nn
from torch.distributions import Categorical


@dataclass
class Args:
    checkpoint: Path
    """The world-model checkpoint bundle to train in."""
    obs_mode: Literal["latent", "rgb"] = "latent"
    """What the agent sees: latent frames (no decoder in the loop) or RGB frames."""
    num_envs: int = 16
    """Dream sub-envs stepped in one batched forward pass."""
    num_steps: int = 32
    """Steps per sub-env per rollout."""
    total_timesteps: int = 100_000
    """Env steps to train for."""
    max_episode_steps: int = 1000
    """Truncate dream episodes after this many steps."""
    num_sampling_steps: int | None = None
    """Sampler steps per frame (None: the bundle's default)."""
    bf16: bool = False
    """Run the world model under bfloat16 autocast."""
    learning_rate: float = 2.5e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """λ of generalised advantage estimation."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    update_epochs: int = 4
    """Epochs per rollout."""
    clip_coef: float = 0.2
    """PPO's surrogate clipping."""
    ent_coef: float = 0.01
    """Entropy bonus."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    seed: int = 1
    """Seed of the envs and the agent."""
    device: str | None = None
    """Device of the world model and the agent (default: CUDA if available)."""
    threads: int = 0
    """torch threads (0: torch's default)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Actor-critic over one observation: a small CNN on latents (C, h, w) or, for RGB frames
    (H, W, 3) uint8, the Nature-DQN CNN (CleanRL's Atari agent)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, rgb: bool):
        super().__init__()
        self.rgb = rgb
        if rgb:
            body = [layer_init(nn.Conv2d(3, 32, 8, stride=4)), nn.ReLU(),
                    layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
                    layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(), nn.Flatten()]
        else:
            body = [layer_init(nn.Conv2d(obs_shape[0], 32, 3, padding=1)), nn.ReLU(),
                    layer_init(nn.Conv2d(32, 64, 3, stride=2, padding=1)), nn.ReLU(),
                    nn.Flatten()]
        self.body = nn.Sequential(*body)
        with torch.no_grad():
            width = self.body(self.prepare(torch.zeros(1, *obs_shape))).shape[1]
        self.network = nn.Sequential(self.body, layer_init(nn.Linear(width, 256)), nn.ReLU())
        self.actor = layer_init(nn.Linear(256, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(256, 1), std=1.0)

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.permute(0, 3, 1, 2).float() / 255.0 if self.rgb else obs.float()

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.network(self.prepare(obs)))

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        hidden = self.network(self.prepare(obs))
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def main(args: Args) -> dict:
    import envs  # noqa: F401  (registers worldsim/*)
    from worldsim.runtime import choose_device, configure

    configure(args.threads or None)
    torch.manual_seed(args.seed)
    device = choose_device(args.device)
    env = gym.make_vec("worldsim/Dream-v0", num_envs=args.num_envs,
                       vectorization_mode="vector_entry_point", checkpoint=str(args.checkpoint),
                       obs_mode=args.obs_mode, tensor_mode=True, device=str(device),
                       max_episode_steps=args.max_episode_steps,
                       num_sampling_steps=args.num_sampling_steps, bf16=args.bf16)
    if not isinstance(env.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"this example handles Discrete action spaces; the bundle has "
                         f"{env.single_action_space}")
    obs_shape = env.single_observation_space.shape
    agent = Agent(obs_shape, int(env.single_action_space.n), args.obs_mode == "rgb").to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    T, N = args.num_steps, args.num_envs
    obs_dtype = torch.uint8 if args.obs_mode == "rgb" else torch.float32
    obs = torch.zeros((T, N, *obs_shape), dtype=obs_dtype, device=device)
    actions = torch.zeros((T, N), dtype=torch.long, device=device)
    logprobs, rewards, dones, values = (torch.zeros((T, N), device=device) for _ in range(4))

    next_obs, _ = env.reset(seed=args.seed)
    next_done = torch.zeros(N, device=device)
    episode_return = torch.zeros(N, device=device)
    returns_seen: list[float] = []
    start, global_step = time.time(), 0
    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (
                1.0 - (iteration - 1.0) / args.num_iterations)
        for step in range(T):
            global_step += N
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value.flatten(), action, logprob
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rewards[step] = reward
            # CleanRL's simplification: a truncated episode is not bootstrapped
            next_done = (terminated | truncated).float()
            episode_return += reward
            returns_seen += episode_return[next_done.bool()].tolist()
            episode_return *= 1.0 - next_done

        with torch.no_grad():  # GAE (Schulman et al. 2016, Eq. 11-12), backwards in time
            next_value = agent.get_value(next_obs).flatten()
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(N, device=device)
            for t in reversed(range(T)):
                next_nonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                following = next_value if t == T - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * following * next_nonterminal - values[t]
                last = delta + args.gamma * args.gae_lambda * next_nonterminal * last
                advantages[t] = last
            returns = advantages + values

        b_obs, b_actions = obs.flatten(0, 1), actions.flatten()
        b_logprobs, b_advantages = logprobs.flatten(), advantages.flatten()
        b_returns = returns.flatten()
        order = np.arange(args.batch_size)
        for _ in range(args.update_epochs):
            np.random.default_rng(args.seed + iteration).shuffle(order)
            for lo in range(0, args.batch_size, args.minibatch_size):
                mb = torch.as_tensor(order[lo:lo + args.minibatch_size], device=device)
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb], b_actions[mb])
                ratio = (newlogprob - b_logprobs[mb]).exp()
                adv = b_advantages[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef,
                                                                      1 + args.clip_coef)).mean()
                v_loss = 0.5 * ((newvalue.flatten() - b_returns[mb]) ** 2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        recent = returns_seen[-100:]
        print(f"updates {iteration} env_steps {global_step} "
              f"sps {global_step / (time.time() - start):.0f} "
              f"episodes {len(returns_seen)} mean_return "
              f"{np.mean(recent) if recent else float('nan'):.3f} loss {loss.item():.4f}",
              flush=True)
    env.close()
    return {"env_steps": global_step, "episodes": len(returns_seen)}


if __name__ == "__main__":
    main(tyro.cli(Args))
