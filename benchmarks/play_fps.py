"""Achieved frame rate of `worldsim play`: the whole loop (input, env step, drawing the scaled
frames and the HUD, flip), uncapped, with an agent acting so every frame is an env step.

    python benchmarks/play_fps.py                              # the real Crafter game
    python benchmarks/play_fps.py --checkpoint runs/crafter    # + the dream, alone and beside

Prints one JSON object. Cases, all at 64x64 frames scaled 8x (512x512 per panel):

- real:               worldsim/Crafter-v0 alone (what a person playing the game gets);
- real_recording:     the same while recording the screen to mp4;
- two_panels:         two real games side by side (the loop's cost of side by side);
- dream, dream_side_by_side (with --checkpoint): the learned simulator alone, and beside
                      the real game (the target: at least 30 fps for the dream alone), at
                      the bundle's default sampler steps;
- dream_bf16, dream_bf16_frames: the dream alone with all its networks under bf16 autocast,
                      and with only the frame networks (VAE, refiner, reward model);
- dream_steps_N (with --sampling-steps N ...): the dream alone at N sampler steps.

The dream cases are measured in turn, `rounds` times, and each reports its median round
(`fps_rounds` lists them all): this machine's speed drifts by 10-25% within minutes.

Beside them, `env_step_ms` times the same env's step with no loop at all, measured in the
same run. fps is measured after `warmup` frames, so the first world generation and the first
forward passes do not count; episode resets during the run do (they are part of playing).
The window is SDL's dummy driver unless --window: presenting to a real screen adds the
compositor's cost, which this machine cannot measure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchConfig:
    """Frames per second of the play loop."""

    env: str = "worldsim/Crafter-v0"
    """The real env."""
    checkpoint: Path | None = None
    """A world-model checkpoint: adds the dream cases."""
    frames: int = 400
    """Frames measured per case (after the warmup)."""
    warmup: int = 20
    """Frames run before measuring."""
    scale: int = 8
    """Screen pixels per frame pixel (8: a 64x64 frame fills 512x512)."""
    agent: str = "random"
    """The policy that plays (random / sticky)."""
    seed: int = 0
    """Seed of the envs and the agent."""
    window: bool = False
    """Open a real window instead of SDL's dummy video driver."""
    rounds: int = 3
    """With --checkpoint: times each dream case is measured, in turn (the median is reported)."""
    sampling_steps: tuple[int, ...] = ()
    """With --checkpoint: also measure the dream alone at these sampler steps per frame
    (cases dream_steps_N; "dream" uses the bundle's default)."""


def measure_loop(play_env, keymap, cfg: BenchConfig, record: bool = False) -> dict:
    from envs.play import Game, LoopSettings

    with tempfile.TemporaryDirectory(prefix="worldsim-play-bench-") as tmp:
        settings = LoopSettings(fps=0, scale=cfg.scale, record=record, record_dir=Path(tmp),
                                max_frames=cfg.warmup + cfg.frames)
        game = Game(play_env, keymap, settings)
        marks: dict[int, float] = {}
        stats = game.run(lambda frame: marks.__setitem__(frame, time.perf_counter()))
    frames = cfg.frames - 1
    seconds = marks[cfg.warmup + frames] - marks[cfg.warmup]
    per_frame = stats.as_dict()
    return {
        "fps": round(frames / seconds, 1),
        "ms_per_frame": round(1000 * seconds / frames, 2),
        "env_step_ms": round(per_frame["step_ms_per_frame"], 2),
        "draw_ms": round(per_frame["draw_ms_per_frame"], 2),
        "record_ms": round(per_frame["record_ms_per_frame"], 2),
        "episodes": stats.episodes,
        "window": list(game.screen.size),
    }


def env_step_ms(env, frames: int, seed: int) -> float:
    """Mean time of one `env.step` with no loop around it (resets not counted), stepped with
    random actions: the loop's `env_step_ms` should match it."""
    from worldsim.data.policies import sample_action

    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    total = 0.0
    for _ in range(frames):
        action = sample_action(env.action_space, rng)
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        total += time.perf_counter() - start
        if terminated or truncated:
            env.reset()
    return round(1000 * total / frames, 2)


def main(argv: list[str] | None = None) -> dict:
    import tyro

    cfg = tyro.cli(BenchConfig, args=argv, prog="play_fps.py")
    from worldsim.runtime import configure

    configure()  # as `worldsim play` does
    if not cfg.window:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    from envs.dream_video import make_dream
    from envs.keymaps import keymap_for
    from envs.play import PlayEnv, load_agent
    from worldsim.data.collect import make_env

    def agent_for(env):
        names = getattr(env.unwrapped, "action_names", None)
        return load_agent(cfg.agent, env.action_space, names, cfg.seed)

    def play_env(real=None, dream=None):
        primary = real if real is not None else dream
        pe = PlayEnv(real, dream, agent_for(primary), seed=cfg.seed)
        pe.agent_in_control = True
        return pe, keymap_for(primary)

    result: dict = {"config": {**cfg.__dict__, "checkpoint": str(cfg.checkpoint)
                               if cfg.checkpoint else None},
                    "video_driver": os.environ["SDL_VIDEODRIVER"] if not cfg.window else "window",
                    "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    real = make_env(cfg.env)
    result["env_step_ms"] = env_step_ms(real, cfg.frames, cfg.seed)
    result["real"] = measure_loop(*play_env(real=real), cfg)
    result["real_recording"] = measure_loop(*play_env(real=real), cfg, record=True)
    result["two_panels"] = measure_loop(*play_env(real=real, dream=make_env(cfg.env)), cfg)
    if cfg.checkpoint is not None:
        dream = make_dream(cfg.checkpoint)
        result["dream_env_step_ms"] = env_step_ms(dream, cfg.frames, cfg.seed)
        size = tuple(dream.observation_space.shape[:2])
        # The dream cases, measured in turn `rounds` times: this machine's speed drifts by
        # 10-25% over minutes, so cases measured one after the other compare badly. Each
        # case reports its median round and every round's fps.
        cases = {
            "dream": lambda: play_env(dream=dream),
            "dream_side_by_side": (lambda real=make_env(cfg.env, size=size):
                                   play_env(real=real, dream=dream)),
            # under bf16 autocast (`worldsim play --bf16`), and with only the frame networks
            # in bf16 (`worldsim play --bf16-frames`)
            "dream_bf16": (lambda env=make_dream(cfg.checkpoint, bf16=True): play_env(dream=env)),
            "dream_bf16_frames": (lambda env=make_dream(cfg.checkpoint, bf16="frames"):
                                  play_env(dream=env)),
        }
        for steps in cfg.sampling_steps:
            cases[f"dream_steps_{steps}"] = (
                lambda env=make_dream(cfg.checkpoint, num_sampling_steps=steps):
                play_env(dream=env))
        rounds: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(cfg.rounds):
            for name, case in cases.items():
                rounds[name].append(measure_loop(*case(), cfg))
        for name, runs in rounds.items():
            median = sorted(runs, key=lambda run: run["fps"])[len(runs) // 2]
            result[name] = {**median, "fps_rounds": [run["fps"] for run in runs]}
        result["dream_default_sampling_steps"] = dream.unwrapped.world_model.num_steps
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
