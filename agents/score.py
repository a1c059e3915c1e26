"""`worldsim score`: play an agent in a real env and report the Crafter score.

    worldsim score --agent random --env worldsim/Crafter-v0 --episodes 50 --out runs/random
    worldsim score --agent runs/imagine/agent --episodes 20 --out runs/imagine/score

The Crafter score (Hafner, 2021, §3) summarises the success rates s_i (in %, the share of
episodes in which achievement i was unlocked at least once) of all N achievements by a
geometric mean, so rare achievements weigh as much as common ones:

    S = exp( (1/N) Σ_i ln(1 + s_i) ) - 1

Writes OUT/score.json (the score, each achievement's success rate, return mean ± std,
episode length, and every episode) and OUT/achievements.png (a bar plot). Envs without
achievements in their info get returns and lengths only.

Episode i is reset with seed `seed + i`, so any episode can be replayed on its own and a
run is reproducible given --seed (the agent draws from its own generator, seeded too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.store import write_json_atomic


@dataclass
class ScoreConfig:
    """Score an agent in a real env."""

    agent: str
    """"random", or the directory of a saved agent (config.json + model.safetensors)."""
    env: str = "worldsim/Crafter-v0"
    """Gymnasium id of the env to play."""
    episodes: int = 20
    """Number of episodes."""
    seed: int = 0
    """Episode i is reset with seed + i; the agent is seeded with it too."""
    out: Path | None = None
    """Directory for score.json and achievements.png (nothing written if omitted)."""
    max_episode_steps: int | None = None
    """Override the env's time limit (Crafter: 10000), e.g. for quick checks."""
    greedy: bool = False
    """A saved agent plays its most likely action instead of sampling."""
    device: str | None = None
    """torch device for a saved agent (default: CUDA if available, else CPU)."""
    progress: bool = True
    """Show a progress bar."""


# ---------------------------------------------------------------------- the formulas
def crafter_score(success_rates: Sequence[float]) -> float:
    """exp(mean_i ln(1 + s_i)) - 1 over success rates s_i in percent (0..100) -> percent."""
    rates = np.asarray(list(success_rates), dtype=np.float64)
    if rates.size == 0:
        raise ValueError("the Crafter score needs at least one achievement")
    if (rates < 0).any() or (rates > 100).any():
        raise ValueError(f"success rates must be percentages in [0, 100], got {rates.tolist()}")
    return float(np.exp(np.mean(np.log1p(rates))) - 1.0)


def success_rates(unlocked: Sequence[dict[str, int]], names: Sequence[str]) -> dict[str, float]:
    """Per achievement, the percentage of episodes in which it was unlocked at least once.
    `unlocked`: each episode's final achievement counts (info["achievements"])."""
    if not unlocked:
        raise ValueError("no episodes to compute success rates from")
    return {name: 100.0 * float(np.mean([counts.get(name, 0) > 0 for counts in unlocked]))
            for name in names}


@dataclass
class EpisodeResult:
    """One played episode."""

    seed: int
    episode_return: float
    length: int
    terminated: bool
    achievements: dict[str, int] = field(default_factory=dict)
    action_counts: list[int] = field(default_factory=list)
    """How often each action was taken (Discrete action spaces; empty otherwise)."""


@dataclass
class ScoreResult:
    """What `worldsim score` reports."""

    agent: str
    env: str
    episodes: list[EpisodeResult]
    achievement_names: list[str]
    action_names: list[str] = field(default_factory=list)

    @property
    def returns(self) -> np.ndarray:
        return np.array([e.episode_return for e in self.episodes])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([e.length for e in self.episodes])

    @property
    def success_rates(self) -> dict[str, float]:
        if not self.achievement_names:
            return {}
        return success_rates([e.achievements for e in self.episodes], self.achievement_names)

    @property
    def score(self) -> float | None:
        """The Crafter score in percent (None for envs without achievements)."""
        rates = self.success_rates
        return crafter_score(list(rates.values())) if rates else None

    @property
    def action_shares(self) -> dict[str, float]:
        """Percent of all steps spent on each action (Discrete action spaces): what the
        policy does, e.g. whether it presses one action in place."""
        counts = [e.action_counts for e in self.episodes if e.action_counts]
        if not counts:
            return {}
        total = np.sum(counts, axis=0, dtype=np.float64)
        names = self.action_names or [str(a) for a in range(len(total))]
        return {name: float(100 * c / total.sum()) for name, c in zip(names, total, strict=True)}

    def summary(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "env": self.env, "episodes": len(self.episodes),
            "score": self.score, "success_rates": self.success_rates,
            "action_shares": self.action_shares,
            "return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
            "length_mean": float(self.lengths.mean()), "length_std": float(self.lengths.std()),
            "per_episode": [asdict(e) for e in self.episodes],
        }


# ---------------------------------------------------------------------- playing
def make_agent(spec: str, action_space, seed: int, greedy: bool = False,
               device: str | None = None):
    """"random" or a saved agent's directory -> an object with reset() and act(obs)."""
    if spec == "random":
        from agents.random_agent import RandomAgent

        return RandomAgent(action_space, seed=seed)
    if not Path(spec).is_dir():
        raise ValueError(f"--agent {spec!r} is neither 'random' nor a saved agent directory")
    from agents.actor_critic import load_agent

    return load_agent(spec, action_space, device=device, sample=not greedy, seed=seed)


def play_episode(env, agent, seed: int) -> EpisodeResult:
    """Play one episode to its end; achievements come from the last step's info."""
    from gymnasium import spaces

    obs, info = env.reset(seed=seed)
    agent.reset()
    total, steps = 0.0, 0
    discrete = isinstance(env.action_space, spaces.Discrete)
    counts = np.zeros(env.action_space.n if discrete else 0, np.int64)
    while True:
        action = agent.act(obs)
        if discrete:
            counts[int(action) - env.action_space.start] += 1
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if terminated or truncated:
            break
    achievements = {k: int(v) for k, v in info.get("achievements", {}).items()}
    return EpisodeResult(seed, total, steps, bool(terminated), achievements, counts.tolist())


def achievement_names(env, first_info: dict[str, Any]) -> list[str]:
    """The env's achievements: `achievement_names` of the env if it has them (Crafter's
    canonical order), else the keys of info["achievements"], else none."""
    names = getattr(env.unwrapped, "achievement_names", None)
    if names:
        return list(names)
    return list(first_info.get("achievements", {}))


def _env_at_frame_size(env, cfg: ScoreConfig, wanted):
    """`env` again, drawing frames of the size the agent sees, when the two differ only in
    frame size (an agent trained in a dream of Crafter drawn at 72x72 plays the real game
    drawn at 72x72); otherwise `env` unchanged."""
    from worldsim.data.collect import is_rgb_frame_space, make_env

    if not (is_rgb_frame_space(env.observation_space) and is_rgb_frame_space(wanted)):
        return env
    env.close()
    return make_env(cfg.env, size=tuple(wanted.shape[:2]), max_episode_steps=cfg.max_episode_steps)


def score_agent(cfg: ScoreConfig) -> ScoreResult:
    import gymnasium as gym

    import envs  # noqa: F401  (registers worldsim/*)

    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {cfg.episodes}")
    kwargs = {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
    env = gym.make(cfg.env, **kwargs)
    agent = make_agent(cfg.agent, env.action_space, cfg.seed, cfg.greedy, cfg.device)
    model = getattr(agent, "model", None)
    if model is not None and env.observation_space != model.observation_space:
        env = _env_at_frame_size(env, cfg, model.observation_space)
        if env.observation_space != model.observation_space:
            raise ValueError(f"the agent in {cfg.agent} sees {model.observation_space}, but "
                             f"{cfg.env} gives {env.observation_space}")
    try:
        return play_episodes(env, agent, cfg.episodes, cfg.seed, cfg.agent, cfg.env,
                             cfg.progress)
    finally:
        env.close()


def play_episodes(env, agent, episodes: int, seed: int, agent_name: str, env_id: str,
                  progress: bool = False) -> ScoreResult:
    """Play `episodes` episodes of `env` (episode i reset with seed + i) and score them."""
    played = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc="episodes", unit="ep")
    names: list[str] = []
    try:
        for i in range(episodes):
            result = play_episode(env, agent, seed + i)
            if i == 0:
                names = achievement_names(env, {"achievements": result.achievements})
            played.append(result)
            if bar is not None:
                bar.set_postfix(ret=f"{result.episode_return:.1f}", len=result.length)
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return ScoreResult(agent_name, env_id, played, names,
                       list(getattr(env.unwrapped, "action_names", ())))


# ---------------------------------------------------------------------- reporting
def format_report(result: ScoreResult) -> str:
    s = result.summary()
    lines = [f"{s['agent']} on {s['env']}: {s['episodes']} episodes"]
    if s["score"] is not None:
        lines.append(f"Crafter score      {s['score']:.2f} %")
    lines.append(f"return             {s['return_mean']:.2f} ± {s['return_std']:.2f}")
    lines.append(f"episode length     {s['length_mean']:.1f} ± {s['length_std']:.1f}")
    if s["success_rates"]:
        lines.append("success rates (%):")
        width = max(len(n) for n in s["success_rates"])
        lines += [f"  {name:<{width}}  {rate:6.1f}" for name, rate in s["success_rates"].items()]
    if s["action_shares"]:
        lines.append("actions taken (% of steps):")
        width = max(len(n) for n in s["action_shares"])
        lines += [f"  {name:<{width}}  {share:6.1f}" for name, share in s["action_shares"].items()]
    return "\n".join(lines)


# Layout of the bar plot, in pixels.
_ROW, _LABEL_W, _BAR_W, _PAD = 18, 150, 300, 8


def plot_success_rates(rates: dict[str, float], title: str, path: Path) -> None:
    """A horizontal bar per achievement (0-100 %), written atomically as PNG (PIL only)."""
    from PIL import Image, ImageDraw

    height = _PAD * 3 + _ROW * (len(rates) + 1)
    width = _LABEL_W + _BAR_W + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_PAD, _PAD), title, fill="black")
    top = _PAD * 2 + _ROW
    for row, (name, rate) in enumerate(rates.items()):
        y = top + row * _ROW
        draw.text((_PAD, y + 3), name, fill="black")
        x0 = _LABEL_W
        draw.rectangle([x0, y + 2, x0 + _BAR_W, y + _ROW - 2], outline=(200, 200, 200))
        if rate > 0:
            draw.rectangle([x0, y + 2, x0 + max(1, round(_BAR_W * rate / 100)), y + _ROW - 2],
                           fill=(70, 110, 180))
        draw.text((x0 + _BAR_W + 6, y + 3), f"{rate:.1f}%", fill="black")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_outputs(result: ScoreResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    summary["written"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(out / "score.json", summary)
    if summary["success_rates"]:
        score = summary["score"]
        title = (f"{result.agent} on {result.env}: Crafter score {score:.2f}% "
                 f"({len(result.episodes)} episodes)")
        plot_success_rates(summary["success_rates"], title, out / "achievements.png")


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.runtime import configure

    cfg = tyro.cli(ScoreConfig, args=argv)
    configure()
    result = score_agent(cfg)
    print(format_report(result))
    if cfg.out is not None:
        write_outputs(result, cfg.out)
        print(f"wrote {cfg.out / 'score.json'}")


__all__ = ["ScoreConfig", "ScoreResult", "EpisodeResult", "crafter_score", "success_rates",
           "score_agent", "play_episode", "make_agent", "main"]
