"""Speed of the dream envs, beside the real game measured in the same run. Prints one JSON
object (and writes it to --out).

    python benchmarks/env_speed.py                          # random weights, default sizes
    python benchmarks/env_speed.py --checkpoint runs/crafter/bundle
    python benchmarks/env_speed.py --batches 1 8 --budget-s 2 --long-steps 200   # quick

Cases:
- real_crafter:  worldsim/Crafter-v0 steps/s with random actions, resets included (the
                 reference: imagination should outrun the game it imitates);
- single:        WorldModelEnv steps/s, obs_mode rgb and latent, fp32 and bf16 autocast;
- vector:        WorldModelVectorEnv env-steps/s (num_envs x steps / s) for each batch size,
                 latent and rgb, fp32 and bf16;
- long_rollout:  the single latent env's step time near step 10 and near step `long_steps`
                 of one episode (the KV cache's window keeps it flat).

Without --checkpoint a randomly initialised world model of the default sizes (VAEConfig(),
the DiT "S" preset) is built, so speed can be measured before a trained model exists; speed
does not depend on the weights. Its start context is real Crafter frames. Each case runs a
warm-up step, then steps until `budget_s` seconds and at least `min_steps` steps have passed.
Timings on a shared machine vary 10-25% run to run: compare within one run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Config:
    checkpoint: Path | None = None
    """A world-model bundle; without it, random weights of the default sizes."""
    preset: str = "S"
    """DiT size preset of the random model (keys of worldsim.models.dit.DIT_PRESETS)."""
    window: int = 8
    """Attention window of the random model's DiT (frames)."""
    batches: tuple[int, ...] = (1, 8, 32, 128)
    """Vector env sizes (num_envs) to measure."""
    obs_modes: tuple[str, ...] = ("latent", "rgb")
    """Observation modes to measure."""
    precisions: tuple[str, ...] = ("fp32", "bf16")
    """fp32 and/or bf16 (torch.autocast bfloat16)."""
    num_sampling_steps: int | None = None
    """Sampler steps per frame (None: the model's default)."""
    budget_s: float = 4.0
    """Seconds of timed steps per case (after one warm-up step)."""
    min_steps: int = 3
    """At least this many timed steps per case."""
    max_steps: int = 200
    """At most this many timed steps per case."""
    long_steps: int = 1000
    """Length of the rollout whose step cost at step 10 and at its end is compared (0: skip)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    seed: int = 0
    """Seed of the envs and the random actions."""
    out: Path | None = None
    """Also write the JSON here (atomically)."""


def real_crafter_frames(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` + 1 frames of real Crafter play with random actions: frames (1, K, 64, 64, 3),
    actions (1, K-1)."""
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("worldsim/Crafter-v0")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames, actions = [obs], []
    for _ in range(steps):
        a = env.action_space.sample()
        obs, *_ = env.step(a)
        frames.append(obs)
        actions.append(a)
    env.close()
    return np.stack(frames)[None], np.asarray(actions, dtype=np.int64)[None]


def random_world_model(cfg: Config):
    """A world model with random weights: VAEConfig() + the DiT preset, Crafter's spaces."""
    from gymnasium import spaces

    from worldsim.models.dit import DIT_PRESETS
    from worldsim.models.dynamics import DynamicsConfig
    from worldsim.world_model import DEFAULT_CONTEXT_FRAMES, WorldModel

    frames, actions = real_crafter_frames(DEFAULT_CONTEXT_FRAMES - 1, cfg.seed)
    return WorldModel.untrained(
        spaces.Box(0, 255, (64, 64, 3), np.uint8), spaces.Discrete(17),
        dynamics_config=DynamicsConfig(dit=DIT_PRESETS[cfg.preset](window=cfg.window)),
        start_frames=frames, start_actions={"action": actions}, env_id="worldsim/Crafter-v0",
        seed=cfg.seed, device="cpu")


def timed(step, rows: int, cfg: Config, min_steps: int | None = None,
          max_steps: int | None = None) -> dict:
    """Warm up once, then time `step()` for budget_s seconds (min_steps..max_steps calls)."""
    min_steps, max_steps = min_steps or cfg.min_steps, max_steps or cfg.max_steps
    step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps and (len(times) < min_steps
                                       or time.perf_counter() - start < cfg.budget_s):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"steps": len(times), "ms_per_step": round(1000 * statistics.median(times), 2),
            "env_steps_per_s": round(rows * len(times) / sum(times), 1)}


def bench_real_crafter(cfg: Config) -> dict:
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("worldsim/Crafter-v0")
    env.action_space.seed(cfg.seed)
    env.reset(seed=cfg.seed)

    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    result = timed(step, 1, cfg, min_steps=100, max_steps=10**7)
    env.close()
    return result


def bench_single(wm, obs_mode: str, bf16: bool, cfg: Config) -> dict:
    from envs.world_model_env import WorldModelEnv

    env = WorldModelEnv(wm, obs_mode=obs_mode, bf16=bf16, max_episode_steps=None,
                        num_sampling_steps=cfg.num_sampling_steps)
    env.reset(seed=cfg.seed)
    env.action_space.seed(cfg.seed)
    return timed(lambda: env.step(env.action_space.sample()), 1, cfg)


def bench_vector(wm, num_envs: int, obs_mode: str, bf16: bool, cfg: Config) -> dict:
    from envs.world_model_env import WorldModelVectorEnv

    env = WorldModelVectorEnv(wm, num_envs=num_envs, obs_mode=obs_mode, bf16=bf16,
                              max_episode_steps=None,
                              num_sampling_steps=cfg.num_sampling_steps)
    env.reset(seed=cfg.seed)
    env.action_space.seed(cfg.seed)
    result = timed(lambda: env.step(env.action_space.sample()), num_envs, cfg)
    env.close()
    return result


def bench_long_rollout(wm, bf16: bool, cfg: Config) -> dict:
    """Median step time over steps 5-15 and over the last 10 of one long latent episode."""
    from envs.world_model_env import WorldModelEnv

    env = WorldModelEnv(wm, obs_mode="latent", bf16=bf16, max_episode_steps=None,
                        num_sampling_steps=cfg.num_sampling_steps)
    env.reset(seed=cfg.seed)
    env.action_space.seed(cfg.seed)
    times = []
    for _ in range(cfg.long_steps):
        t = time.perf_counter()
        env.step(env.action_space.sample())
        times.append(time.perf_counter() - t)
    early = 1000 * statistics.median(times[5:15])
    late = 1000 * statistics.median(times[-10:])
    return {"steps": cfg.long_steps, "ms_at_step_10": round(early, 2),
            f"ms_at_step_{cfg.long_steps}": round(late, 2), "ratio": round(late / early, 3)}


def main(cfg: Config) -> dict:
    import worldsim
    from worldsim.runtime import configure, tune_malloc

    configure(cfg.threads or None, malloc=False)
    malloc_tuned = tune_malloc()
    wm = worldsim.load(cfg.checkpoint, device="cpu") if cfg.checkpoint else \
        random_world_model(cfg)
    params = sum(p.numel() for p in wm.dynamics.parameters())
    result: dict = {
        "config": {**asdict(cfg), "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
                   "out": str(cfg.out) if cfg.out else None},
        "machine": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "malloc_tuned": malloc_tuned},
        "model": {"source": wm.source, "dynamics_params": params,
                  "vae_params": sum(p.numel() for p in wm.vae.parameters()),
                  "latent_shape": list(wm.latent_shape), "window": wm.window,
                  "frame_shape": list(wm.observation_space.shape),
                  "sampler_steps": cfg.num_sampling_steps
                  or wm.num_steps},
    }
    result["real_crafter"] = bench_real_crafter(cfg)
    print(f"real Crafter: {result['real_crafter']}", file=sys.stderr)
    result["single"] = {}
    for obs_mode in cfg.obs_modes:
        for precision in cfg.precisions:
            key = f"{obs_mode}_{precision}"
            result["single"][key] = bench_single(wm, obs_mode, precision == "bf16", cfg)
            print(f"single {key}: {result['single'][key]}", file=sys.stderr)
    result["vector"] = {}
    for num_envs in cfg.batches:
        for obs_mode in cfg.obs_modes:
            for precision in cfg.precisions:
                key = f"n{num_envs}_{obs_mode}_{precision}"
                result["vector"][key] = bench_vector(wm, num_envs, obs_mode,
                                                     precision == "bf16", cfg)
                print(f"vector {key}: {result['vector'][key]}", file=sys.stderr)
    if cfg.long_steps:
        result["long_rollout"] = {p: bench_long_rollout(wm, p == "bf16", cfg)
                                  for p in cfg.precisions}
        print(f"long rollout: {result['long_rollout']}", file=sys.stderr)
    latent = {k: v["env_steps_per_s"] for k, v in result["vector"].items() if "_latent_" in k}
    if latent:
        best = max(latent, key=latent.get)
        result["summary"] = {
            "best_latent_vector_case": best, "best_latent_env_steps_per_s": latent[best],
            "real_crafter_steps_per_s": result["real_crafter"]["env_steps_per_s"],
            "imagination_over_real": round(latent[best]
                                           / result["real_crafter"]["env_steps_per_s"], 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfg.out.with_name(cfg.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, cfg.out)
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
