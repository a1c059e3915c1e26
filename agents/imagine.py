"""`worldsim imagine`: train an actor-critic purely inside the learned simulator.

    worldsim imagine --checkpoint runs/crafter-wm --steps 5000 --out runs/imagine
    worldsim imagine --env worldsim/Crafter-v0 --num-envs 4 --steps 100 --out runs/real \
        --training.no-restart                         # the same loop on any vector env

Builds `gym.make_vec(ENV, num_envs=N)` (the env's own batched class when it registers one,
as worldsim/Dream-v0 does, else a SyncVectorEnv), then repeats: imagine `horizon` steps in
all N envs, update the agent (agents.imagination). `--steps` counts agent updates; each
imagines N * horizon steps.

Writes OUT/agent (config.json + model.safetensors, loadable by `worldsim score --agent` and
`worldsim play --agent`; plus trainer.safetensors with the optimizer state) every
`--save-every` updates, at the end and on Ctrl-C, and TensorBoard scalars to OUT/tensorboard
(losses, entropy, imagined rewards and λ-returns, episode returns, steps/s). Running the same
command again resumes from OUT/agent.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.imagination import ImaginationConfig

# The learned simulators (envs/__init__.py); they take `tensor_mode`.
DREAM_ENV_IDS = ("worldsim/Dream-v0", "worldsim/CrafterDream-v0")


@dataclass
class ImagineConfig:
    """Train an agent in imagination (or in any registered vector env)."""

    out: Path
    """Output directory: OUT/agent (the agent and its training state), OUT/tensorboard."""
    checkpoint: Path | None = None
    """World-model checkpoint the dream env loads (passed to the env as `checkpoint`)."""
    env: str = "worldsim/Dream-v0"
    """Gymnasium id of the env to train in."""
    obs_mode: Literal["rgb", "latent"] | None = None
    """Observation mode passed to the dream env (None: the env's default)."""
    reward_mode: Literal["mean", "mode", "achievements"] | None = None
    """What the dream env pays (None: its default, "mean"); "achievements": only the
    achievements, each once per episode, with a reward model that predicts their unlocks."""
    tensor_mode: bool = True
    """Dream envs exchange torch tensors with the agent (frames never leave the device)."""
    bf16: bool = False
    """Dream envs run the world model under bfloat16 autocast (on this project's CPU
    machine 1.5x faster imagination at 32 envs; see docs/DESIGN-NOTES.md)."""
    num_envs: int = 32
    """Envs stepped together (the batch of the dream's forward pass)."""
    steps: int = 1000
    """Agent updates in total (a resumed run continues up to this number)."""
    preset: Literal["tiny", "small", "base"] = "base"
    """Agent size (agents.actor_critic.PRESETS); a resumed run keeps its saved size."""
    training: ImaginationConfig = field(default_factory=ImaginationConfig)
    """Learning settings (horizon, gamma, lam, entropy_coef, lr, ...)."""
    seed: int = 0
    """Seeds the agent's initial weights, its action sampling and the envs' first reset."""
    max_episode_steps: int | None = None
    """Override the env's time limit (a real env's or the dream's; dream episodes end there
    too when rollouts carry on, `--training.no-restart`)."""
    save_every: int = 100
    """Save OUT/agent every this many updates."""
    log_every: int = 10
    """Write TensorBoard scalars (means over the last updates) every this many updates."""
    device: str | None = None
    """torch device (default: CUDA if available, else CPU)."""
    threads: int | None = None
    """torch intra-op threads (default: $WORLDSIM_THREADS or torch's choice)."""
    progress: bool = True
    """Show a progress bar."""


def make_env(cfg: ImagineConfig):
    """The vector env to train in."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers worldsim/*)

    spec = gym.spec(cfg.env)
    kwargs: dict[str, Any] = {}
    if cfg.checkpoint is not None:
        kwargs["checkpoint"] = str(cfg.checkpoint)
    if cfg.obs_mode is not None:
        kwargs["obs_mode"] = cfg.obs_mode
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if cfg.env in DREAM_ENV_IDS:
        kwargs.update(tensor_mode=cfg.tensor_mode, bf16=cfg.bf16)
        if cfg.reward_mode is not None:
            kwargs["reward_mode"] = cfg.reward_mode
    elif cfg.bf16 or cfg.reward_mode is not None:
        raise ValueError(f"--bf16 and --reward-mode apply to the dream envs {DREAM_ENV_IDS}, "
                         f"not {cfg.env}")
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    return gym.make_vec(cfg.env, num_envs=cfg.num_envs, vectorization_mode=mode, **kwargs)


def _config_json(cfg: ImagineConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(cfg).items()}


def save(trainer, cfg: ImagineConfig) -> Path:
    """OUT/agent: the model, the trainer's state, and the run's settings."""
    from agents.actor_critic import save_agent

    tensors, meta = trainer.state_dict()
    extra = {"training": {"command": "imagine", "env": cfg.env, "config": _config_json(cfg),
                          **meta}}
    return save_agent(cfg.out / "agent", trainer.model, extra_config=extra,
                      extra_tensors={"trainer": tensors})


def build(cfg: ImagineConfig, env):
    """A fresh trainer, or the one saved in OUT/agent (same env id required)."""
    import torch

    from agents.actor_critic import PRESETS, ActorCritic, load_actor_critic
    from agents.imagination import ImaginationTrainer
    from worldsim.runtime import choose_device
    from worldsim.training.checkpoint import CheckpointError

    device = choose_device(cfg.device)
    saved = cfg.out / "agent"
    if (saved / "config.json").exists():
        model, config, tensors = load_actor_critic(saved, device=device, groups=("trainer",))
        training = config.get("training", {})
        if training.get("env") != cfg.env:
            raise CheckpointError(f"{saved} was trained in {training.get('env')!r}, not "
                                  f"{cfg.env!r}; use another --out to start a new run")
        trainer = ImaginationTrainer(env, model, cfg.training, seed=cfg.seed)
        trainer.load_state_dict(tensors["trainer"], training)
        print(f"resuming {saved} at update {trainer.updates}")
        return trainer
    torch.manual_seed(cfg.seed)
    model = ActorCritic(PRESETS[cfg.preset](), env.single_observation_space,
                        env.single_action_space).to(device)
    return ImaginationTrainer(env, model, cfg.training, seed=cfg.seed)


def train(cfg: ImagineConfig) -> Path:
    """Run (or resume) training; returns OUT/agent."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if cfg.steps < 1 or cfg.num_envs < 1 or cfg.save_every < 1 or cfg.log_every < 1:
        raise ValueError("steps, num_envs, save_every and log_every must be >= 1")
    env = make_env(cfg)
    try:
        trainer = build(cfg, env)
        if trainer.updates >= cfg.steps:
            print(f"{cfg.out / 'agent'} has already done {trainer.updates} >= {cfg.steps} updates")
            return cfg.out / "agent"
        writer = SummaryWriter(str(cfg.out / "tensorboard"), purge_step=trainer.updates)
        window: dict[str, list[float]] = defaultdict(list)
        bar = tqdm(total=cfg.steps, initial=trainer.updates, desc="updates", unit="upd",
                   disable=not cfg.progress)
        trainer.finished_episodes.clear()
        try:
            while trainer.updates < cfg.steps:
                metrics = trainer.train_step()
                for k, v in metrics.items():
                    window[k].append(v)
                for ret, length in trainer.finished_episodes:
                    window["episode/return"].append(ret)
                    window["episode/length"].append(length)
                trainer.finished_episodes.clear()  # read once; a long run keeps no history
                bar.update()
                if trainer.updates % cfg.log_every == 0:
                    means = {k: sum(v) / len(v) for k, v in window.items() if v}
                    for k, v in means.items():
                        writer.add_scalar(k, v, trainer.updates)
                    writer.add_scalar("speed/env_steps", trainer.env_steps, trainer.updates)
                    bar.set_postfix(reward=f"{means['imagination/reward']:.3f}",
                                    entropy=f"{means['policy/entropy']:.2f}",
                                    sps=f"{means['speed/env_steps_per_s']:.0f}")
                    window.clear()
                if trainer.updates % cfg.save_every == 0:
                    save(trainer, cfg)
        except KeyboardInterrupt:
            print(f"\ninterrupted at update {trainer.updates}; saving")
        finally:
            bar.close()
            writer.close()
        return save(trainer, cfg)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.runtime import configure

    cfg = tyro.cli(ImagineConfig, args=argv)
    configure(cfg.threads)
    path = train(cfg)
    print(f"agent saved to {path}")
