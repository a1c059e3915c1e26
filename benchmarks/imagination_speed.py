"""Imagined steps per second while an agent trains in the learned simulator, beside the
dream env stepped with random actions (the ceiling: no agent at all), in one run.

    python benchmarks/imagination_speed.py --checkpoint runs/crafter/bundle
    python benchmarks/imagination_speed.py --checkpoint BUNDLE --batches 8 32 --obs-modes latent
    python benchmarks/imagination_speed.py --checkpoint BUNDLE --batches 32 --obs-modes rgb \
        --preset small --precisions fp32 bf16     # the setting of examples/agents_in_imagination.sh
    python benchmarks/imagination_speed.py --checkpoint BUNDLE --guidances 1 2   # guidance's cost
    python benchmarks/imagination_speed.py --checkpoint BUNDLE --sampling-steps 1 2  # the sampler's

For each (obs mode, batch size N, world-model precision fp32 / bf16, guidance scale, sampler
steps): the dream vector env in tensor mode;
- env_only:   steps/s of env.step with random actions;
- collect:    steps/s of the trainer's rollout (the agent acts on every frame);
- train:      imagined steps/s of whole updates (rollout of `horizon` steps + the gradient
              step), i.e. what `worldsim imagine` achieves.
Medians over `repeats` updates after one warm-up. Prints one JSON object.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import torch
import tyro

from agents.actor_critic import PRESETS, ActorCritic
from agents.imagination import ImaginationConfig, ImaginationTrainer
from worldsim.runtime import configure


@dataclass
class Config:
    checkpoint: Path
    """World-model checkpoint bundle."""
    batches: tuple[int, ...] = (1, 8, 32)
    """Numbers of sub-envs N to measure."""
    obs_modes: tuple[Literal["rgb", "latent"], ...] = ("rgb", "latent")
    """Observation modes to measure."""
    preset: Literal["tiny", "small", "base"] = "base"
    """Agent size."""
    horizon: int = 15
    """Imagination horizon (steps per update)."""
    repeats: int = 3
    """Timed updates per case (median reported)."""
    precisions: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")
    """World model precisions to measure (bf16: under bfloat16 autocast, as `worldsim imagine
    --bf16`)."""
    guidances: tuple[float, ...] = ()
    """Classifier-free guidance scales to measure (empty: the bundle's own). Scale 1 is one
    network call per sampler step, any other scale one call on twice the rows."""
    sampling_steps: tuple[int, ...] = ()
    """Sampler steps per imagined frame to measure (empty: the bundle's own)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    out: Path | None = None
    """Also write the JSON here (atomically)."""


def measure(cfg: Config, obs_mode: str, num_envs: int, bf16: bool,
            guidance: float | None = None, sampling_steps: int | None = None) -> dict[str, float]:
    """guidance, sampling_steps None: the bundle's own."""
    import envs  # noqa: F401  (registers worldsim/*)

    env = gym.make_vec("worldsim/Dream-v0", num_envs=num_envs,
                       vectorization_mode="vector_entry_point", checkpoint=str(cfg.checkpoint),
                       obs_mode=obs_mode, tensor_mode=True, bf16=bf16, guidance=guidance,
                       num_sampling_steps=sampling_steps)
    try:
        env.reset(seed=0)
        n = env.single_action_space.n
        env_times = []
        for i in range(cfg.horizon + 1):
            actions = torch.randint(0, n, (num_envs,), device=env.unwrapped.device)
            t = time.perf_counter()
            env.step(actions)
            if i:  # the first step is a warm-up
                env_times.append(time.perf_counter() - t)
        torch.manual_seed(0)
        model = ActorCritic(PRESETS[cfg.preset](), env.single_observation_space,
                            env.single_action_space)
        trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=cfg.horizon), seed=0)
        trainer.train_step()  # warm-up
        collect, update = [], []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            rollout = trainer.collect()
            t1 = time.perf_counter()
            trainer.update(rollout)
            collect.append(t1 - t0)
            update.append(time.perf_counter() - t1)
    finally:
        env.close()
    steps = cfg.horizon * num_envs
    c, u = statistics.median(collect), statistics.median(update)
    return {"env_only_steps_per_s": num_envs / statistics.median(env_times),
            "collect_steps_per_s": steps / c, "train_steps_per_s": steps / (c + u),
            "update_ms": 1000 * u}


def main(cfg: Config) -> dict:
    configure(cfg.threads or None)
    results = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(cfg).items()},
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "processor": platform.processor(), "torch": torch.__version__},
               "cases": []}
    for obs_mode in cfg.obs_modes:
        for n in cfg.batches:
            for precision in cfg.precisions:
                for guidance, steps in itertools.product(cfg.guidances or (None,),
                                                         cfg.sampling_steps or (None,)):
                    case = {"obs_mode": obs_mode, "num_envs": n, "precision": precision,
                            "guidance": guidance, "sampling_steps": steps,
                            **measure(cfg, obs_mode, n, precision == "bf16", guidance, steps)}
                    results["cases"].append(case)
                    print(json.dumps(case), flush=True)
    if cfg.out is not None:
        tmp = cfg.out.with_name(f".tmp-{os.getpid()}-{cfg.out.name}")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, cfg.out)
    return results


if __name__ == "__main__":
    print(json.dumps(main(tyro.cli(Config)), indent=2))
