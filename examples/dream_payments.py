"""What a long dream pays an agent, step by step, beside what the real game paid the recorded play.

    python examples/dream_payments.py --checkpoint runs/bundle-once-shipped \
        --agent runs/agents-shipped/carried300-s0/agent --steps 300 --data data/crafter

N dream envs (worldsim/Dream-v0, the bundle's own sampling) carry one episode each for --steps
steps while the agent (or "random") acts. Printed as one JSON object:
- dream.reward_per_step: the mean reward per step of each --bucket steps, split into the part
  paid for achievements (each once per episode, in expectation) and the rest (Crafter: health
  changes, +-0.1 per point);
- dream.terminations: how many of the N episodes the dream ended;
- dream.new_unlocks: per achievement, the expected number of unlocks the dream credited during
  the episodes (those their start contexts had already unlocked pay nothing);
- dream.actions: the agent's action shares (above 2%);
- real (with --data): the same health part per step of the recorded validation episodes by step
  in episode, and how many episodes ended in each bucket (a real Crafter episode ends at death).
Needs a bundle whose reward model pays achievements once (worldsim train reward --achievements).
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers worldsim/*)


def dream_payments(checkpoint: str, agent: str, steps: int, num_envs: int, bucket: int,
                   seed: int, bf16: bool) -> dict:
    env = gym.make_vec("worldsim/Dream-v0", num_envs=num_envs, checkpoint=checkpoint,
                       obs_mode="rgb", tensor_mode=True, bf16=bf16, max_episode_steps=steps,
                       vectorization_mode="vector_entry_point")
    dream = env.unwrapped
    wm = dream.world_model
    if not wm.achievements:
        raise SystemExit(f"{checkpoint}: its reward model does not pay achievements once")
    generator = torch.Generator().manual_seed(seed)
    model = state = None
    if agent != "random":
        from agents.actor_critic import load_actor_critic

        model, _, _ = load_actor_critic(agent)
        state = model.initial_state(num_envs)
    obs, _ = env.reset(seed=seed)
    unlocked_at_start = dream.unlocked.clone()  # (N, A)
    first = torch.ones(num_envs, dtype=torch.bool)
    n_actions = env.single_action_space.n
    counts = np.zeros(n_actions, np.int64)
    paid = {"achievements": [], "rest": []}
    terminations = 0
    for _ in range(steps - 1):  # the last step would truncate and reset every row
        if model is None:
            actions = torch.randint(0, n_actions, (num_envs,), generator=generator)
            env_actions = actions
        else:
            actions, state = model.act(obs, state, first, generator=generator)
            env_actions = model.policy.to_env(actions, as_tensor=True)
        first[:] = False
        counts += np.bincount(actions.numpy(), minlength=n_actions)
        before = dream.unlocked.clone()
        obs, reward, terminated, _, _ = env.step(env_actions)
        if bool(terminated.any()):  # a dream death: the row restarts, the ledger with it
            terminations += int(terminated.sum())
            first |= terminated
        # the achievement part is the rise of the ledger (expected rule); the rest is health
        gained = (dream.unlocked - before).clamp(min=0).sum(-1)
        gained[terminated] = 0.0
        paid["achievements"].append(gained.mean().item())
        paid["rest"].append((reward.float() - gained).mean().item())
    new = (dream.unlocked - unlocked_at_start).clamp(min=0).mean(0)
    env.close()
    names = list(wm.achievements)
    action_names = wm.action_names or [str(a) for a in range(n_actions)]
    share = counts / counts.sum()

    def by_bucket(values: list[float]) -> list[float]:
        return [round(float(np.mean(values[i:i + bucket])), 4)
                for i in range(0, len(values), bucket)]

    return {"reward_per_step": {k: by_bucket(v) for k, v in paid.items()},
            "return": round(float(sum(np.sum(v) for v in paid.values())), 3),
            "terminations": terminations, "episodes": num_envs,
            "new_unlocks": {n: round(float(g), 3)
                            for n, g in zip(names, new, strict=True) if g > 0.005},
            "actions": {a: round(float(s), 3)
                        for a, s in zip(action_names, share, strict=True) if s > 0.02}}


def real_payments(data: str, steps: int, bucket: int) -> dict:
    """The health part of the recorded validation episodes' rewards per step, by step in the
    episode, and where the episodes ended."""
    from worldsim.data.achievements import load_labels
    from worldsim.data.store import EpisodeStore

    store = EpisodeStore(data)
    n_buckets = -(-steps // bucket)
    total, count, ends = np.zeros(n_buckets), np.zeros(n_buckets), np.zeros(n_buckets, np.int64)
    names = store.split("val")
    for name in names:
        rewards = store.load(name).rewards.astype(np.float64)
        health = rewards - load_labels(store, name).sum(1)  # (T,) minus the +1 per unlock
        for b in range(n_buckets):
            part = health[b * bucket:(b + 1) * bucket]
            total[b] += part.sum()
            count[b] += len(part)
        if len(rewards) <= steps:
            ends[(len(rewards) - 1) // bucket] += 1
    return {"health_reward_per_step": np.round(total / np.maximum(count, 1), 4).tolist(),
            "steps_recorded": count.astype(int).tolist(), "episodes": len(names),
            "episode_ends": ends.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--agent", default="random", help='a saved agent or "random"')
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--bucket", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast")
    parser.add_argument("--data", help="a recorded dataset (with achievement labels) to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"checkpoint": args.checkpoint, "agent": args.agent, "steps": args.steps,
              "dream": dream_payments(args.checkpoint, args.agent, args.steps, args.num_envs,
                                      args.bucket, args.seed, not args.fp32)}
    if args.data:
        result["real"] = real_payments(args.data, args.steps, args.bucket)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
