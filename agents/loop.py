"""`worldsim loop`: learn a world model and an agent together within a budget of real steps.

    worldsim loop --out runs/loop --budget 200000 --collect-steps 50000

Each iteration k (0, 1, ...), until `budget` real transitions have been collected:
  1. collect  `collect_steps` real transitions into OUT/data, with the sticky exploration
              policy in iteration 0 and the current agent afterwards (agents.policy)
  2. vae      iteration 0 only, unless `--vae` names one: train the frame VAE (OUT/vae)
  3. dynamics iteration 0 trains the dynamics model from scratch (OUT/dynamics-000); later
              iterations fine-tune the previous one on the grown data (`init_from`)
  3b. reward  with `--reward achievements` only: label which achievement each collected
              transition unlocked (replayed in the real game) and train the companion reward
              model that pays each achievement once per episode (OUT/reward-00k)
  4. bundle   OUT/dynamics-00k/bundle: the simulator the agent trains in
  5. agent    train the actor-critic in imagination for `agent_updates` more updates
              (OUT/agent, which carries over from iteration to iteration)
  6. score    `score_episodes` real episodes with the agent (OUT/score-00k/score.json); they
              are not added to the data and do not count against the budget

Resumable at every point: OUT/loop.json records the finished phases (written atomically), and
each phase resumes by itself (collection tops the dataset up to its target; training runs
continue from their checkpoints; the agent from OUT/agent). Running the same command again
continues; a larger `--budget` adds iterations. OUT/loop.json's "history" holds each
iteration's real steps, world-model metrics and real-game score.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.imagination import ImaginationConfig
from worldsim.models.dit import DiTConfig, dit_tiny
from worldsim.models.vae import VAEConfig
from worldsim.training.loop import TrainConfig

PHASES = ("collect", "vae", "dynamics", "reward", "bundle", "agent", "score")


def _dynamics_train() -> TrainConfig:
    return TrainConfig(steps=2000, batch_size=32, lr=6e-4, lr_schedule="constant",
                       warmup_steps=100, ema_decay=0.995, eval_every=0)


def _vae_train() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=8, lr=1e-3, eval_every=0)


def _reward_train() -> TrainConfig:  # examples/agents_in_shipped_dream.sh's (3 min here)
    return TrainConfig(steps=4000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=0,
                       ema_decay=0.99, weight_decay=0.01)


@dataclass
class LoopConfig:
    """Collect -> update the world model -> train the agent in imagination, repeated."""

    out: Path
    """Loop directory: data/, vae/, dynamics-00k/, agent/, score-00k/, loop.json."""
    env: str = "worldsim/Crafter-v0"
    """Gymnasium id of the real env."""
    budget: int = 200_000
    """Real transitions to collect in all (the loop stops when they are spent)."""
    collect_steps: int = 50_000
    """Real transitions collected per iteration (the last may be smaller)."""
    collect_envs: int = 4
    """Real envs collecting in parallel (one worker process each, up to the cores)."""
    collect_max_steps: int | None = None
    """Time limit of collected episodes (None: the env's own)."""
    first_policy: str = "sticky"
    """Policy of iteration 0's collection (worldsim.data.policies)."""
    vae: Path | None = None
    """An existing VAE checkpoint or run to use instead of training one."""
    vae_config: VAEConfig = field(default_factory=VAEConfig)
    """Shape of the VAE trained in iteration 0."""
    vae_train: TrainConfig = field(default_factory=_vae_train)
    """VAE optimisation (iteration 0)."""
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(width=192, depth=4, heads=3,
                                                             window=4))
    """Shape of the dynamics DiT (the default model's)."""
    dynamics_train: TrainConfig = field(default_factory=_dynamics_train)
    """Dynamics optimisation: `steps` per iteration (from scratch in iteration 0,
    fine-tuning after)."""
    reward: Literal["dynamics", "achievements"] = "dynamics"
    """What the agent is paid in the dream. "dynamics": the dynamics model's reward heads
    (achievements and health changes, as the game pays). "achievements": each achievement
    once per episode and nothing else, from a companion reward model that reads frame t and
    the action, trained each iteration on the data's achievement labels (recovered by
    replaying the episodes in the real game, so Crafter only). Long dreams lose the player
    and pay health penalties no action changes; paid for achievements only, dream agents
    scored 2.58% in the real game against 1.85% (README, agents in imagination)."""
    reward_train: TrainConfig = field(default_factory=_reward_train)
    """Optimisation of the achievements reward model (`reward="achievements"`), from
    scratch each iteration."""
    agent_preset: Literal["tiny", "small", "base"] = "small"
    """Actor-critic size (agents.actor_critic.PRESETS)."""
    agent_updates: int = 300
    """Agent updates in imagination per iteration."""
    agent_envs: int = 32
    """Dream envs stepped together during agent training."""
    agent_training: ImaginationConfig = field(default_factory=ImaginationConfig)
    """Horizon, discount, λ, entropy, learning rate of the agent; `--agent-training.no-restart`
    carries dream episodes across rollouts."""
    agent_max_episode_steps: int | None = None
    """Time limit of dream episodes (None: the dream env's own)."""
    score_episodes: int = 10
    """Real episodes scoring the agent after each iteration."""
    score_max_steps: int | None = None
    """Time limit of scoring episodes (None: the env's own)."""
    seed: int = 0
    """Seeds collection, training and scoring."""
    threads: int | None = None
    """torch intra-op threads (default: $WORLDSIM_THREADS or torch's choice)."""
    progress: bool = True
    """Progress bars."""

    @property
    def iterations(self) -> int:
        return math.ceil(self.budget / self.collect_steps)

    def collected_after(self, iteration: int) -> int:
        """Real transitions the data holds once iteration `iteration` has collected."""
        return min(self.budget, (iteration + 1) * self.collect_steps)


def tiny_loop_config(out: Path, **overrides: Any) -> LoopConfig:
    """Seconds-scale settings (tests, smoke runs): tiny VAE, DiT and agent, short episodes."""
    quick = dict(batch_size=4, lr=2e-3, warmup_steps=2, eval_every=0, checkpoint_every_min=0,
                 progress=False, bf16=False, threads=1, log_every=5)
    return dataclasses.replace(LoopConfig(
        out=out, budget=240, collect_steps=120, collect_envs=1, collect_max_steps=30,
        vae_config=VAEConfig(factor=4, latent_channels=4, channels=(16, 32), stem_factor=2,
                             groups=4),
        vae_train=TrainConfig(steps=20, **quick), dit=dit_tiny(),
        dynamics_train=TrainConfig(steps=10, **quick), agent_preset="tiny", agent_updates=2,
        agent_envs=2, agent_training=ImaginationConfig(horizon=4), score_episodes=1,
        score_max_steps=20, threads=1, progress=False), **overrides)


# ---------------------------------------------------------------------- the loop's state
class LoopState:
    """OUT/loop.json: finished phases per iteration and each iteration's results."""

    def __init__(self, path: Path):
        import json

        self.path = path
        self.data: dict[str, Any] = {"done": [], "history": []}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as e:
                raise ValueError(f"{path} is not valid JSON ({e}); it records the loop's "
                                 "progress: repair or remove it") from e

    def is_done(self, iteration: int, phase: str) -> bool:
        return f"{iteration}:{phase}" in self.data["done"]

    def finish(self, iteration: int, phase: str, **results: Any) -> None:
        from worldsim.data.store import write_json_atomic

        history = self.data["history"]
        while len(history) <= iteration:
            history.append({"iteration": len(history)})
        history[iteration].update(results)
        self.data["done"].append(f"{iteration}:{phase}")
        write_json_atomic(self.path, self.data)


# ---------------------------------------------------------------------- phases
def _collect(cfg: LoopConfig, iteration: int) -> dict[str, Any]:
    """Top OUT/data up to its target for this iteration (after a crash only what is missing
    is collected, with a seed that has not been used)."""
    from worldsim.data.collect import collect
    from worldsim.data.store import EpisodeStore

    data = cfg.out / "data"
    have = 0
    if (data / "dataset.json").exists():
        store = EpisodeStore(data)
        have = sum(store.length(name) for name in store.names)
    missing = cfg.collected_after(iteration) - have
    policy = (cfg.first_policy if iteration == 0 else
              f"agents.policy:AgentPolicy={cfg.out / 'agent' / 'agent'}")
    if missing > 0:
        stats = collect(cfg.env, steps=missing, out=data, policy=policy,
                        num_envs=cfg.collect_envs, seed=cfg.seed + 1000 * iteration + have,
                        max_episode_steps=cfg.collect_max_steps, progress=cfg.progress)
        have += stats.steps
    return {"real_steps": have, "policy": "agent" if iteration else cfg.first_policy}


def _vae_path(cfg: LoopConfig) -> Path:
    return cfg.vae if cfg.vae is not None else cfg.out / "vae"


def _train_vae(cfg: LoopConfig) -> dict[str, Any]:
    from worldsim.training.loop import setup, train
    from worldsim.training.train_vae import TrainVAEConfig, VAETask

    vcfg = TrainVAEConfig(data=cfg.out / "data", out=cfg.out / "vae", vae=cfg.vae_config,
                          train=cfg.vae_train)
    ctx = setup(vcfg.train)
    result = train(VAETask(vcfg, ctx.device), vcfg.train, vcfg.out, ctx)
    return {"vae": result.metrics}


def _dynamics_dir(cfg: LoopConfig, iteration: int) -> Path:
    return cfg.out / f"dynamics-{iteration:03d}"


def _train_dynamics(cfg: LoopConfig, iteration: int) -> dict[str, Any]:
    from worldsim.training.loop import setup, train
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig

    dcfg = TrainDynamicsConfig(
        data=cfg.out / "data", vae=_vae_path(cfg), out=_dynamics_dir(cfg, iteration),
        dit=cfg.dit, train=cfg.dynamics_train, bundle=False,
        init_from=_dynamics_dir(cfg, iteration - 1) if iteration else None)
    ctx = setup(dcfg.train)
    result = train(DynamicsTask(dcfg, ctx.device), dcfg.train, dcfg.out, ctx)
    return {"dynamics": result.metrics}


def _reward_dir(cfg: LoopConfig, iteration: int) -> Path:
    return cfg.out / f"reward-{iteration:03d}"


def _train_reward(cfg: LoopConfig, iteration: int) -> dict[str, Any]:
    """Label the achievements of the collected episodes (those labelled before keep their
    labels) and train the pay-once reward model on them."""
    from worldsim.data.achievements import label_achievements
    from worldsim.training.loop import setup, train
    from worldsim.training.train_reward import RewardTask, TrainRewardConfig

    labels = label_achievements(cfg.out / "data", progress=cfg.progress)
    if labels.get("failed"):
        raise RuntimeError(f"labelling the achievements of {cfg.out / 'data'} failed for "
                           f"{labels['failed']} episodes: {labels}")
    rcfg = TrainRewardConfig(data=cfg.out / "data", vae=_vae_path(cfg),
                             out=_reward_dir(cfg, iteration), action_input=True,
                             next_frame_input=False, achievements=True, train=cfg.reward_train)
    ctx = setup(rcfg.train)
    result = train(RewardTask(rcfg, ctx.device), rcfg.train, rcfg.out, ctx)
    return {"reward": result.metrics, "labels": labels}


def _bundle(cfg: LoopConfig, iteration: int) -> Path:
    from worldsim.training.loop import resolve_checkpoint
    from worldsim.world_model import build_bundle

    run = _dynamics_dir(cfg, iteration)
    reward = (resolve_checkpoint(_reward_dir(cfg, iteration))
              if cfg.reward == "achievements" else None)
    return build_bundle(run / "bundle", vae_checkpoint=resolve_checkpoint(_vae_path(cfg)),
                        dynamics_checkpoint=resolve_checkpoint(run), data=cfg.out / "data",
                        reward_checkpoint=reward, seed=cfg.seed + iteration)


def _train_agent(cfg: LoopConfig, iteration: int) -> dict[str, Any]:
    from agents.imagine import ImagineConfig, train

    icfg = ImagineConfig(out=cfg.out / "agent", checkpoint=_dynamics_dir(cfg, iteration) / "bundle",
                         num_envs=cfg.agent_envs, steps=(iteration + 1) * cfg.agent_updates,
                         preset=cfg.agent_preset, training=cfg.agent_training, seed=cfg.seed,
                         max_episode_steps=cfg.agent_max_episode_steps,
                         reward_mode="achievements" if cfg.reward == "achievements" else None,
                         save_every=max(1, cfg.agent_updates // 4), threads=cfg.threads,
                         progress=cfg.progress)
    train(icfg)
    return {"agent_updates": icfg.steps}


def _score(cfg: LoopConfig, iteration: int) -> dict[str, Any]:
    from agents.score import ScoreConfig, score_agent, write_outputs

    out = cfg.out / f"score-{iteration:03d}"
    scfg = ScoreConfig(agent=str(cfg.out / "agent" / "agent"), env=cfg.env,
                       episodes=cfg.score_episodes, seed=10_000 * (iteration + 1) + cfg.seed,
                       out=out, max_episode_steps=cfg.score_max_steps, progress=cfg.progress)
    result = score_agent(scfg)
    write_outputs(result, out)
    summary = result.summary()
    return {"score": summary["score"], "return_mean": summary["return_mean"],
            "return_std": summary["return_std"]}


def run_loop(cfg: LoopConfig) -> list[dict[str, Any]]:
    """Run (or resume) the loop; returns the per-iteration history."""
    from worldsim.runtime import configure

    if cfg.budget < 1 or cfg.collect_steps < 1:
        raise ValueError("budget and collect_steps must be at least 1")
    configure(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    state = LoopState(cfg.out / "loop.json")
    for k in range(cfg.iterations):
        for phase in PHASES:
            if (state.is_done(k, phase) or (phase == "vae" and (k > 0 or cfg.vae is not None))
                    or (phase == "reward" and cfg.reward != "achievements")):
                continue
            print(f"[loop] iteration {k + 1}/{cfg.iterations}: {phase}", flush=True)
            if phase == "collect":
                results = _collect(cfg, k)
            elif phase == "vae":
                results = _train_vae(cfg)
            elif phase == "dynamics":
                results = _train_dynamics(cfg, k)
            elif phase == "reward":
                results = _train_reward(cfg, k)
            elif phase == "bundle":
                results = {"bundle": str(_bundle(cfg, k))}
            elif phase == "agent":
                results = _train_agent(cfg, k)
            else:
                results = _score(cfg, k)
            state.finish(k, phase, **results)
        row = state.data["history"][k]
        print(f"[loop] iteration {k + 1}: {row.get('real_steps')} real steps, score "
              f"{row.get('score')}, return {row.get('return_mean')}", flush=True)
    return state.data["history"]


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(LoopConfig, args=argv)
    history = run_loop(cfg)
    print(f"done: {len(history)} iterations; history in {cfg.out / 'loop.json'}")
