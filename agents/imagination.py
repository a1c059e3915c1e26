"""Training an actor-critic in any batched environment: the learned simulator
(WorldModelVectorEnv, "imagination") or a real vector env. On-policy actor-critic with
λ-returns, as DIAMOND (Alonso et al., 2024, §3.4) and Dreamer (Hafner et al.) train their
agents inside their world models:

    1. roll the policy out for `horizon` steps in N envs (each rollout starting from fresh
       resets, i.e. real contexts in the dream, or continuing where the last one stopped);
    2. λ-returns G_t bootstrapped with the critic's value at the horizon;
    3. loss = policy gradient with normalised advantages (G_t - V(s_t))
              - entropy_coef * entropy
              + value_coef * (symlog V(s_t) - symlog G_t)² / 2   (DreamerV3's symlog critic).

The env is driven only through the gymnasium VectorEnv API (reset(seed), step(actions) ->
obs, reward, terminated, truncated, info) and either autoreset mode it states in
`metadata["autoreset_mode"]` (NEXT_STEP, gymnasium's default, or SAME_STEP, the dream's).
Observations may be numpy arrays or torch tensors; an env whose reset returns tensors (the
dream env with tensor_mode=True) gets tensor actions, so imagination stays on the device.

    trainer = ImaginationTrainer(env, model, ImaginationConfig(), seed=0)
    for _ in range(updates):
        metrics = trainer.train_step()

Shapes: T horizon, B envs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from agents.actor_critic import ActorCritic, State, check_spaces


@dataclass
class ImaginationConfig:
    """How the actor-critic learns (defaults: DIAMOND's agent settings where it has one)."""

    horizon: int = 15
    """Steps per rollout (imagination horizon H; DIAMOND: 15)."""
    gamma: float = 0.985
    """Discount (DIAMOND: 0.985)."""
    lam: float = 0.95
    """λ of the λ-returns (DIAMOND, Dreamer: 0.95)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus. With advantages normalised to unit scale the usual
    A2C/PPO value 0.01 applies (DIAMOND's 0.001 is for unnormalised advantages)."""
    value_coef: float = 0.5
    """Weight of the value loss (V - G)² / 2, measured in the model's value space."""
    normalize_advantages: bool = True
    """Standardise advantages over each rollout's valid steps (mean 0, std 1)."""
    lr: float = 1e-4
    """Adam learning rate (DIAMOND: 1e-4)."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this."""
    restart: bool = True
    """Start every rollout with env.reset() (imagination from fresh real contexts, as DIAMOND
    does); False carries envs and memory across rollouts (what a real env needs)."""

    def __post_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")


def lambda_returns(rewards: torch.Tensor, continues: torch.Tensor, ends: torch.Tensor,
                   next_values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns, computed backwards from the horizon (Sutton & Barto eq. 12.3 in recursive
    form; Dreamer's eq. 4):

        G_t = r_t + γ c_t [ (1 - λ_t) V(s_{t+1}) + λ_t G_{t+1} ],   G_T := V(s_T)
        λ_t = λ if the episode goes on after step t, else 0

    c_t = 1 - terminated_t stops bootstrapping at a death; λ_t = 0 at any episode end
    (terminated or truncated) keeps a new episode's rewards out, and a truncated episode is
    bootstrapped from the value of its last state, V(s_{t+1}) = next_values[t].

    rewards, continues (float 0/1), ends (bool), next_values: (T, B) -> (T, B)."""
    T = rewards.shape[0]
    lam_t = lam * (~ends.bool()).float()
    returns = torch.empty_like(rewards)
    following = next_values[-1]
    for t in reversed(range(T)):
        following = rewards[t] + gamma * continues[t] * (
            (1 - lam_t[t]) * next_values[t] + lam_t[t] * following)
        returns[t] = following
    return returns


@dataclass
class Rollout:
    """One rollout of B envs for T steps, everything the loss needs.

    obs (T, B, ...) observations the policy acted on; first (T, B) bool: memory cleared
    before obs[t]; actions (T, B[, K]) model indices; rewards, continues (T, B) float;
    ends (T, B) bool: the episode ended at step t; valid (T, B) bool: a real transition
    (False for NEXT_STEP autoreset steps, whose action the env ignores); values (T, B) and
    next_values (T, B): the critic's V(s_t), V(s_{t+1}) while acting; state: the memory
    before obs[0]."""

    obs: torch.Tensor
    first: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    continues: torch.Tensor
    ends: torch.Tensor
    valid: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    state: State

    def to(self, device: torch.device | str) -> Rollout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: (tuple(s.to(device) for s in v) if k == "state" else v.to(device))
                 for k, v in moved.items()}
        return Rollout(**moved)


def autoreset_mode(env: VectorEnv) -> AutoresetMode:
    """The env's autoreset mode (gymnasium's default NEXT_STEP if it does not say);
    DISABLED is refused because a rollout cannot continue an ended episode."""
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    mode = AutoresetMode(mode) if not isinstance(mode, AutoresetMode) else mode
    if mode == AutoresetMode.DISABLED:
        raise ValueError(f"{type(env).__name__} has autoreset disabled; the trainer needs "
                         "autoreset_mode NEXT_STEP or SAME_STEP")
    return mode


def as_tensor(obs: Any, device: torch.device) -> torch.Tensor:
    """A batch of observations (numpy or torch) on `device`. Numpy arrays are copied: a
    vector env may hand out its own buffer and overwrite it on the next step, while a rollout
    keeps every step's observations. Tensors are taken as they are (the dream env returns
    fresh ones)."""
    if isinstance(obs, torch.Tensor):
        return obs.to(device)
    return torch.from_numpy(np.array(obs)).to(device)


class ImaginationTrainer:
    """Rolls `model` out in `env` and updates it; keeps the optimizer and the envs' state.

    `collect()` -> Rollout, `update(rollout)` -> metrics, `train_step()` does both.
    `finished_episodes` accumulates (return, length) of episodes that ended, for logging
    (the reader clears it).
    `state_dict()` / `load_state_dict()` cover everything needed to resume."""

    def __init__(self, env: VectorEnv, model: ActorCritic, config: ImaginationConfig,
                 seed: int | None = None):
        check_spaces(model, env.single_observation_space, env.single_action_space,
                     f"env {getattr(env.spec, 'id', type(env).__name__)}")
        self.env, self.model, self.config = env, model, config
        self.mode = autoreset_mode(env)
        self.num_envs = env.num_envs
        self.device = model.device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.seed = seed
        self.updates = 0
        self.env_steps = 0
        self.finished_episodes: list[tuple[float, int]] = []
        self._obs: torch.Tensor | None = None  # carried between rollouts when not restarting
        self._seeded = False

    # ------------------------------------------------------------------ rollouts
    def _reset(self) -> None:
        # the first reset is seeded (offset by the updates done, so a resumed run is
        # reproducible too); later ones continue the envs' own random streams
        seed = None
        if not self._seeded and self.seed is not None:
            seed = self.seed + self.updates
        self._seeded = True
        obs, _ = self.env.reset(seed=seed)
        # an env that hands out tensors (the dream env's tensor mode) takes tensor actions:
        # rollouts then never leave the device
        self._tensor_env = isinstance(obs, torch.Tensor)
        B = self.num_envs
        self._obs = as_tensor(obs, self.device)
        self._state = self.model.initial_state(B)
        self._first = torch.ones(B, dtype=torch.bool, device=self.device)
        # NEXT_STEP: True where the previous step ended an episode, so the next step() only
        # resets that env (its action is ignored)
        self._pending_reset = torch.zeros(B, dtype=torch.bool, device=self.device)
        self._ep_return = np.zeros(B)
        self._ep_length = np.zeros(B, dtype=np.int64)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Act for `horizon` steps in every env (no gradients)."""
        if self.config.restart or self._obs is None:
            self._reset()
        T, B, dev = self.config.horizon, self.num_envs, self.device
        state0 = self._state
        obs_l, first_l, act_l, rew_l, cont_l, end_l, valid_l, val_l = ([] for _ in range(8))
        next_values = torch.zeros(T, B, device=dev)
        overrides: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for t in range(T):
            dist, value, self._state = self.model.step(self._obs, self._state, self._first)
            actions = dist.sample(self.generator)
            valid = ~self._pending_reset
            obs, reward, terminated, truncated, info = self.env.step(
                self.model.policy.to_env(actions, as_tensor=self._tensor_env))
            reward = as_tensor(reward, dev).float()
            terminated = as_tensor(terminated, dev).bool()
            truncated = as_tensor(truncated, dev).bool()
            ended = (terminated | truncated) & valid
            obs_l.append(self._obs), first_l.append(self._first), act_l.append(actions)
            rew_l.append(reward * valid), cont_l.append((~terminated).float())
            end_l.append(ended), valid_l.append(valid), val_l.append(value)
            if self.mode == AutoresetMode.NEXT_STEP:
                # the obs after an ending step is the episode's last; the step after it is
                # the reset step, whose obs opens the next episode
                self._first = self._pending_reset.clone()
                self._pending_reset = ended
            else:
                # SAME_STEP: obs already opens the next episode; a truncated episode is
                # bootstrapped from the value of its real last obs, in info["final_obs"]
                self._first = ended
                cut = truncated & ~terminated
                if bool(cut.any()):
                    idx = torch.nonzero(cut).squeeze(-1)
                    final_obs = info["final_obs"]
                    if isinstance(final_obs, torch.Tensor):  # one (B, ...) tensor
                        final = final_obs.to(dev)[idx]
                    else:  # gymnasium's object array, one entry per sub-env
                        final = torch.stack([as_tensor(final_obs[i], dev)
                                             for i in idx.cpu().numpy()])
                    sub = tuple(s[idx] for s in self._state)
                    _, v_final, _ = self.model.step(final, sub)
                    overrides.append((t, idx, v_final))
            self._obs = as_tensor(obs, dev)
            self._track_episodes(reward, ended, valid)
        # V(s_T) for the bootstrap at the horizon; the memory is not advanced past s_T
        _, value_T, _ = self.model.step(self._obs, self._state, self._first)
        values = torch.stack(val_l)  # (T, B)
        next_values[:-1] = values[1:]
        next_values[-1] = value_T
        for t, idx, v in overrides:
            next_values[t, idx] = v
        self.env_steps += T * B
        return Rollout(obs=torch.stack(obs_l), first=torch.stack(first_l),
                       actions=torch.stack(act_l), rewards=torch.stack(rew_l),
                       continues=torch.stack(cont_l), ends=torch.stack(end_l),
                       valid=torch.stack(valid_l), values=values, next_values=next_values,
                       state=state0)

    def _track_episodes(self, reward: torch.Tensor, ended: torch.Tensor,
                        valid: torch.Tensor) -> None:
        valid_np = valid.cpu().numpy()
        self._ep_return += reward.cpu().numpy() * valid_np
        self._ep_length += valid_np
        for i in np.flatnonzero(ended.cpu().numpy()):
            self.finished_episodes.append((float(self._ep_return[i]), int(self._ep_length[i])))
            self._ep_return[i], self._ep_length[i] = 0.0, 0

    # ------------------------------------------------------------------ learning
    def loss(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        """The actor-critic loss of one rollout (recomputed with gradients) and its parts."""
        cfg = self.config
        dist, values, _ = self.model.unroll(rollout.obs, rollout.first, rollout.state)
        returns = lambda_returns(rollout.rewards, rollout.continues, rollout.ends,
                                 rollout.next_values, cfg.gamma, cfg.lam)  # (T, B)
        mask = rollout.valid.float()
        count = mask.sum().clamp(min=1.0)
        advantages = returns - rollout.values
        if cfg.normalize_advantages:
            mean = (advantages * mask).sum() / count
            std = (((advantages - mean) ** 2 * mask).sum() / count).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        log_prob = dist.log_prob(rollout.actions)
        entropy = dist.entropy()
        policy_loss = -(log_prob * advantages.detach() * mask).sum() / count
        entropy_mean = (entropy * mask).sum() / count
        # regression in the model's value space (symlog by default), so its scale does not
        # depend on the rewards' scale
        target = self.model.value_space(returns.detach())
        value_loss = 0.5 * (((self.model.value_space(values) - target) ** 2) * mask).sum() / count
        loss = policy_loss - cfg.entropy_coef * entropy_mean + cfg.value_coef * value_loss
        metrics = {"loss/policy": policy_loss.item(), "loss/value": value_loss.item(),
                   "policy/entropy": entropy_mean.item(),
                   "imagination/reward": ((rollout.rewards * mask).sum() / count).item(),
                   "imagination/lambda_return": ((returns * mask).sum() / count).item(),
                   "imagination/value": ((rollout.values * mask).sum() / count).item()}
        return loss, metrics

    def update(self, rollout: Rollout) -> dict[str, float]:
        """One gradient step on the rollout's loss."""
        self.model.train()
        loss, metrics = self.loss(rollout)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   self.config.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        metrics["loss/grad_norm"] = float(grad_norm)
        return metrics

    def train_step(self) -> dict[str, float]:
        """Collect one rollout and learn from it; metrics include imagined steps per second."""
        start = time.perf_counter()
        rollout = self.collect()
        collected = time.perf_counter()
        metrics = self.update(rollout)
        done = time.perf_counter()
        steps = self.config.horizon * self.num_envs
        metrics["speed/env_steps_per_s"] = steps / max(collected - start, 1e-9)
        metrics["speed/updates_per_s"] = 1.0 / max(done - start, 1e-9)
        return metrics

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON) to resume training: optimizer, sampling generator, counters."""
        from worldsim.training.checkpoint import flatten_optimizer_state

        tensors, remainder = flatten_optimizer_state(self.optimizer.state_dict())
        tensors = {f"optimizer.{k}": v for k, v in tensors.items()}
        tensors["generator"] = self.generator.get_state()
        meta = {"optimizer": remainder, "updates": self.updates, "env_steps": self.env_steps}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from worldsim.training.checkpoint import unflatten_optimizer_state

        opt = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        self.optimizer.load_state_dict(unflatten_optimizer_state(opt, meta["optimizer"]))
        self.generator.set_state(tensors["generator"])
        self.updates, self.env_steps = int(meta["updates"]), int(meta["env_steps"])
