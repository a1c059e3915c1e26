"""`worldsim collect`: play a real Gymnasium env and record its episodes into an episode store.

    worldsim collect --env worldsim/Crafter-v0 --steps 100000 --out data/crafter --num-envs 2

Parallelism: `--num-envs K` environments are spread over `--workers W` processes (default
min(K, CPU count)); each worker steps its envs, runs the policy on its batch of observations
and writes its own finished episodes, so nothing waits for a slow world generation elsewhere
and frames never cross a process boundary. With one worker everything runs in this process.

Any env works whose observations are RGB frames (uint8 (H, W, 3)) or that renders
"rgb_array": frames are resized to `--size`, rendered frames become the observation.

Reproducible: given --seed, --num-envs and --workers, episode i of env k is reset with the
seed derived from (seed, k, i) (stored in the episode's info) and the policy draws from a
generator derived from (seed, worker). Episode names derive from the seed too
(ep-seed<S>-env<k>-<i>), so the train/validation split, which hashes the name, is the same
whenever the same games are collected. Without --seed a fresh one is drawn and recorded, so
running again on the same DIR appends new, different play; a seed already in DIR is refused.

Never loses finished play: each episode is written atomically as soon as it ends. The
episodes in progress when the step budget runs out, or on Ctrl-C / SIGTERM, are written too,
their last transition marked truncated. A kill -9 loses only the episodes in progress.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldsim.data.policies import make_policy
from worldsim.data.store import Episode, EpisodeStore
from worldsim.spaces import stack_actions

# SeedSequence spawn-key streams: independent random streams for episode resets and policy
# draws derived from one --seed.
_EPISODE_STREAM, _POLICY_STREAM = 1, 2


# ---------------------------------------------------------------------- making envs
def _hw(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"size must be one int or (height, width), got {size!r}")
    return size


def is_rgb_frame_space(space: spaces.Space) -> bool:
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8
            and len(space.shape) == 3 and space.shape[2] == 3)


class FrameObservation(gym.ObservationWrapper):
    """Observations become RGB frames of a fixed size.

    source="observation": the env's own uint8 (H, W, 3) observation, resized.
    source="render": the env's `render()` (render_mode "rgb_array"), resized; the env's own
    observation is dropped.
    Downscaling averages pixels (box filter), upscaling is bilinear.
    """

    def __init__(self, env: gym.Env, size: int | tuple[int, int], source: str = "observation"):
        super().__init__(env)
        if source not in ("observation", "render"):
            raise ValueError(f"source must be 'observation' or 'render', not {source!r}")
        if source == "observation" and not is_rgb_frame_space(env.observation_space):
            raise ValueError(f"{env.spec.id if env.spec else env}: observation space "
                             f"{env.observation_space} is not uint8 (H, W, 3); use source='render'")
        if source == "render" and env.render_mode != "rgb_array":
            raise ValueError(f"{env.spec.id if env.spec else env} must be made with "
                             f"render_mode='rgb_array' to record its rendered frames, "
                             f"not {env.render_mode!r}")
        self.size, self.source = _hw(size), source
        self.observation_space = spaces.Box(0, 255, (*self.size, 3), np.uint8)

    def observation(self, observation):
        frame = observation if self.source == "observation" else self.env.render()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} "
                             f"{frame.shape} from the env's {self.source}")
        if frame.shape[:2] == self.size:
            return np.ascontiguousarray(frame)
        from PIL import Image

        h, w = self.size
        shrinking = frame.shape[0] >= h and frame.shape[1] >= w
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(frame).resize((w, h), resample=resample))


def _accepts_size(env_id: str) -> bool:
    """Whether the env's constructor takes a `size` argument (as worldsim/Crafter-v0 does),
    so frames are drawn at the right size instead of resized."""
    entry = gym.spec(env_id).entry_point
    try:
        creator = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        return "size" in inspect.signature(creator).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def make_env(env_id: str, size: int | tuple[int, int] = 64, env_kwargs: dict | None = None,
             max_episode_steps: int | None = None) -> gym.Env:
    """Make `env_id` with RGB frame observations of `size` (int or (H, W)).

    Envs whose constructor takes `size` get it; envs with uint8 (H, W, 3) observations have
    them resized; any other env is made with render_mode="rgb_array" and its rendered frames
    become the observation."""
    import envs  # noqa: F401  (registers the worldsim/* ids)

    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(f"unknown env id {env_id!r}: {e}") from e
    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if "size" not in kwargs and _accepts_size(env_id):
        kwargs["size"] = _hw(size)
    env = gym.make(env_id, **kwargs)
    if is_rgb_frame_space(env.observation_space):
        return FrameObservation(env, size, source="observation")
    if env.render_mode != "rgb_array":
        env.close()
        kwargs["render_mode"] = "rgb_array"
        env = gym.make(env_id, **kwargs)
    return FrameObservation(env, size, source="render")


# ---------------------------------------------------------------------- seeds
def episode_seed(seed: int, env_index: int, episode_index: int) -> int:
    """The reset seed of episode `episode_index` of env `env_index` in a collect run."""
    seq = np.random.SeedSequence(seed, spawn_key=(_EPISODE_STREAM, env_index, episode_index))
    return int(seq.generate_state(1, np.uint32)[0])


def policy_rng(seed: int, worker: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_POLICY_STREAM, worker)))


# ---------------------------------------------------------------------- recording
@dataclass
class _Job:
    """What one worker does (plain data: it crosses a process boundary)."""

    root: str
    env_id: str
    size: tuple[int, int]
    env_kwargs: dict
    max_episode_steps: int | None
    policy: str
    seed: int
    run_id: str
    worker: int
    env_indices: list[int]
    budgets: list[int]  # transitions each env may take
    parent_pid: int | None = None  # a worker stops when this process is gone


@dataclass
class _EpisodeBuffer:
    env_index: int
    episode_index: int
    seed: int
    frames: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    reset_info: dict = field(default_factory=dict)
    last_info: dict = field(default_factory=dict)


def _finish(buf: _EpisodeBuffer, action_space: spaces.Space, job: _Job, cut: bool) -> Episode:
    """The episode of `buf`; `cut` marks the last transition truncated (budget or stop)."""
    truncated = np.array(buf.truncated, dtype=bool)
    terminated = np.array(buf.terminated, dtype=bool)
    if cut and not (terminated[-1] or truncated[-1]):
        truncated[-1] = True
    rewards = np.array(buf.rewards, dtype=np.float32)
    info: dict[str, Any] = {
        "seed": buf.seed, "collect_seed": job.seed, "env_index": buf.env_index,
        "episode_index": buf.episode_index, "policy": job.policy, "run": job.run_id,
        "return": float(rewards.sum()), "terminated": bool(terminated[-1]),
        "truncated": bool(truncated[-1]),
    }
    for key in ("world_seed", "start_clock"):  # what a replay or an analysis needs
        if key in buf.reset_info:
            info[key] = int(buf.reset_info[key])
    achievements = buf.last_info.get("achievements")
    if isinstance(achievements, dict):
        info["achievements"] = sorted(k for k, v in achievements.items() if v > 0)
    return Episode(frames=np.stack(buf.frames), actions=stack_actions(action_space, buf.actions),
                   rewards=rewards, terminated=terminated, truncated=truncated, info=info)


def _run(job: _Job, on_progress: Callable[[int, int], None], should_stop: Callable[[], bool]
         ) -> dict[str, Any]:
    """Step the job's envs until their budgets are spent or `should_stop()`; write every
    episode. `on_progress(steps, episodes)` gets running totals. Returns summary stats."""
    store = EpisodeStore(job.root)
    made = [make_env(job.env_id, job.size, job.env_kwargs, job.max_episode_steps)
            for _ in job.env_indices]
    action_space = made[0].action_space
    names = getattr(made[0].unwrapped, "action_names", None)
    policy = make_policy(job.policy, action_space, len(made), action_names=names)
    rng = policy_rng(job.seed, job.worker)
    left = list(job.budgets)
    steps = episodes = 0
    returns: list[float] = []
    unlocked: dict[str, int] = {}

    def start(i: int, episode_index: int) -> _EpisodeBuffer:
        k = job.env_indices[i]
        seed = episode_seed(job.seed, k, episode_index)
        obs, info = made[i].reset(seed=seed)
        buf = _EpisodeBuffer(k, episode_index, seed, reset_info=info)
        buf.frames.append(obs)
        return buf

    def write(buf: _EpisodeBuffer, cut: bool) -> None:
        nonlocal episodes
        if not buf.actions:
            return  # reset but never stepped: nothing to learn from
        episode = _finish(buf, action_space, job, cut)
        store.add(episode, name=f"ep-{job.run_id}-env{buf.env_index:02d}-{buf.episode_index:05d}")
        episodes += 1
        returns.append(episode.info["return"])
        for name in episode.info.get("achievements", []):
            unlocked[name] = unlocked.get(name, 0) + 1

    blank = np.zeros(made[0].observation_space.shape, np.uint8)
    buffers = [start(i, 0) if left[i] > 0 else None for i in range(len(made))]
    policy.reset(np.ones(len(made), dtype=bool))
    interrupted = False
    try:
        while any(b is not None for b in buffers):
            if should_stop():
                interrupted = True
                break
            # envs whose budget is spent show the policy a blank frame; their action is unused
            observations = np.stack([b.frames[-1] if b is not None else blank for b in buffers])
            actions = policy.act(observations, rng)
            new_episodes = np.zeros(len(made), dtype=bool)
            for i, buf in enumerate(buffers):
                if buf is None:
                    continue
                obs, reward, terminated, truncated, info = made[i].step(actions[i])
                buf.frames.append(obs)
                buf.actions.append(actions[i])
                buf.rewards.append(float(reward))
                buf.terminated.append(bool(terminated))
                buf.truncated.append(bool(truncated))
                buf.last_info = info
                left[i] -= 1
                steps += 1
                if terminated or truncated or left[i] == 0:
                    write(buf, cut=left[i] == 0)
                    buffers[i] = None
                    if left[i] > 0:
                        buffers[i] = start(i, buf.episode_index + 1)
                    new_episodes[i] = True
            if new_episodes.any():
                policy.reset(new_episodes)
            on_progress(steps, episodes)
    finally:
        # Budget spent, stopped, or failing: keep whatever was played.
        for buf in buffers:
            if buf is not None:
                try:
                    write(buf, cut=True)
                except Exception as e:  # do not hide the error that brought us here
                    warnings.warn(f"could not save the episode in progress of env "
                                  f"{buf.env_index}: {e}", stacklevel=1)
        on_progress(steps, episodes)
        for env in made:
            env.close()
    return {"steps": steps, "episodes": episodes, "returns": returns, "unlocked": unlocked,
            "interrupted": interrupted}


class _StopFlag:
    """SIGINT / SIGTERM set a flag instead of raising, so an interrupt can never land in the
    middle of writing an episode."""

    def __init__(self):
        self.stopped = False

    def __call__(self, signum, frame):
        self.stopped = True

    def install(self) -> dict:
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}


def _worker_main(job: _Job, steps_counter, episodes_counter, results) -> None:
    flag = _StopFlag()
    flag.install()
    check = {"n": 0}

    def should_stop() -> bool:
        check["n"] += 1
        # an orphaned worker (its collect was killed) saves its episodes and leaves
        if job.parent_pid is not None and check["n"] % 16 == 0 and os.getppid() != job.parent_pid:
            return True
        return flag.stopped

    def on_progress(steps: int, episodes: int) -> None:
        steps_counter[job.worker] = steps
        episodes_counter[job.worker] = episodes

    try:
        results.put((job.worker, _run(job, on_progress, should_stop)))
    except BaseException as e:
        results.put((job.worker, {"error": f"{type(e).__name__}: {e}"}))
        raise


# ---------------------------------------------------------------------- the library call
@dataclass
class CollectStats:
    """What a collect run did."""

    out: str
    env_id: str
    seed: int
    steps: int
    episodes: int
    seconds: float
    steps_per_s: float
    mean_return: float | None
    achievements: dict[str, int]  # achievement -> number of episodes that unlocked it
    interrupted: bool
    store_episodes: int  # episodes in the store afterwards (earlier runs included)
    store_frames: int


def collect(env_id: str, steps: int, out: str | os.PathLike, policy: str = "sticky",
            num_envs: int = 1, seed: int | None = None, size: int | tuple[int, int] = 64,
            env_kwargs: dict | None = None, max_episode_steps: int | None = None,
            workers: int | None = None, progress: bool = True) -> CollectStats:
    """Record `steps` transitions of `env_id` (spread over `num_envs` envs) into the episode
    store at `out`, creating it or appending to it. See the module docstring."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    size = _hw(size)
    env_kwargs = dict(env_kwargs or {})
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    workers = min(num_envs, workers or os.cpu_count() or 1)

    # One env in this process gives the spaces and validates the arguments early.
    probe = make_env(env_id, size, env_kwargs, max_episode_steps)
    make_policy(policy, probe.action_space, num_envs,
                action_names=getattr(probe.unwrapped, "action_names", None))
    extra = {"env_kwargs": env_kwargs, "frame_source": probe.source}
    store = EpisodeStore.create(out, env_id=env_id, observation_space=probe.observation_space,
                                action_space=probe.action_space, extra=extra)
    probe.close()
    if store.meta.get("env_kwargs", env_kwargs) != env_kwargs:
        raise ValueError(f"{out} was collected with env kwargs {store.meta['env_kwargs']}, "
                         f"not {env_kwargs}; use another --out")
    store.remove_stale_temporaries()

    # Episode names come from the seed, not the clock: the train/validation split hashes the
    # name (store.is_validation), so collecting the same games again gives the same split, and
    # a model evaluated on re-collected data is never scored on games it trained on.
    run_id = f"seed{seed}"
    if any(name.startswith(f"ep-{run_id}-") for name in store.names):
        raise ValueError(f"{out} already holds episodes collected with seed {seed} (the same "
                         f"seed plays the same games again); pass another --seed to add more")
    budgets = [steps // num_envs + (k < steps % num_envs) for k in range(num_envs)]
    jobs = [_Job(root=str(out), env_id=env_id, size=size, env_kwargs=env_kwargs,
                 max_episode_steps=max_episode_steps, policy=policy, seed=seed, run_id=run_id,
                 worker=w, env_indices=list(range(w, num_envs, workers)),
                 budgets=budgets[w::workers]) for w in range(workers)]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="frame", unit_scale=True, dynamic_ncols=True,
                   desc=f"collect {env_id}")
    start = time.perf_counter()
    try:
        if workers == 1:
            results = [_run_here(jobs[0], bar)]
        else:
            results = _run_workers(jobs, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    returns = [r for res in results for r in res["returns"]]
    unlocked: dict[str, int] = {}
    for res in results:
        for k, v in res["unlocked"].items():
            unlocked[k] = unlocked.get(k, 0) + v
    total_steps = sum(res["steps"] for res in results)
    store.scan()
    return CollectStats(
        out=str(out), env_id=env_id, seed=seed, steps=total_steps,
        episodes=sum(res["episodes"] for res in results), seconds=seconds,
        steps_per_s=total_steps / max(seconds, 1e-9),
        mean_return=float(np.mean(returns)) if returns else None,
        achievements=dict(sorted(unlocked.items())),
        interrupted=any(res["interrupted"] for res in results),
        store_episodes=len(store), store_frames=store.num_frames)


def _run_here(job: _Job, bar) -> dict[str, Any]:
    flag = _StopFlag()
    # signal handlers can only be installed from the main thread
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = flag.install() if in_main_thread else {}

    def on_progress(steps: int, episodes: int) -> None:
        if bar is not None:
            bar.update(steps - bar.n)
            bar.set_postfix(episodes=episodes, refresh=False)

    try:
        return _run(job, on_progress, lambda: flag.stopped)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_workers(jobs: list[_Job], bar) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads or a window
    steps_counter = ctx.Array("q", len(jobs), lock=False)
    episodes_counter = ctx.Array("q", len(jobs), lock=False)
    results_queue = ctx.Queue()
    for job in jobs:
        job.parent_pid = os.getpid()
    procs = [ctx.Process(target=_worker_main, args=(job, steps_counter, episodes_counter,
                                                    results_queue), daemon=True)
             for job in jobs]
    for p in procs:
        p.start()
    results: dict[int, dict] = {}
    interrupted = False
    while len(results) < len(procs):
        try:
            try:
                worker, res = results_queue.get(timeout=0.25)
                results[worker] = res
            except Exception:  # queue.Empty
                pass
            if bar is not None:
                bar.update(sum(steps_counter) - bar.n)
                bar.set_postfix(episodes=sum(episodes_counter), refresh=False)
            dead = [w for w, p in enumerate(procs) if not p.is_alive() and p.exitcode != 0
                    and w not in results]
            if dead:
                time.sleep(0.5)  # a result may still be in the pipe
                while not results_queue.empty():
                    worker, res = results_queue.get()
                    results[worker] = res
                dead = [w for w in dead if w not in results]
                if dead and interrupted:
                    # interrupted while starting up, before playing: nothing to save
                    results.update({w: {"steps": 0, "episodes": 0, "returns": [],
                                        "unlocked": {}, "interrupted": True} for w in dead})
                elif dead:
                    raise RuntimeError(f"collect worker(s) {dead} died with exit codes "
                                       f"{[procs[w].exitcode for w in dead]}")
        except KeyboardInterrupt:
            # Workers usually get the terminal's SIGINT themselves; pass it on in case only
            # this process was signalled. Workers then write their episodes and report.
            interrupted = True
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join()
    errors = {w: r["error"] for w, r in results.items() if "error" in r}
    if errors:
        raise RuntimeError(f"collect worker(s) failed: {errors}")
    out = [results[w] for w in sorted(results)]
    if interrupted:
        for r in out:
            r["interrupted"] = True
    return out


# ---------------------------------------------------------------------- the command
@dataclass
class CollectConfig:
    """Record episodes of a real env into an episode store (appends if DIR exists)."""

    out: Path
    """Dataset directory (created, or appended to if it holds a compatible dataset)."""
    env: str = "worldsim/Crafter-v0"
    """Gymnasium env id; any env with RGB frame observations or rgb_array rendering."""
    steps: int = 10_000
    """Transitions to record in total over all envs."""
    policy: str = "sticky"
    """Policy: 'sticky' (actions held for random durations), 'random', or 'module:factory'."""
    num_envs: int = 1
    """Environments played at once."""
    workers: int | None = None
    """Processes the envs are spread over (default: min(num_envs, CPU count))."""
    seed: int | None = None
    """Seed of the run (default: a fresh one, recorded in every episode's info)."""
    size: tuple[int, ...] = (64,)
    """Frame size: one int (square) or HEIGHT WIDTH."""
    max_episode_steps: int | None = None
    """Override the env's time limit (default: the registered one)."""
    env_kwargs: str = "{}"
    """Extra keyword arguments for gymnasium.make, as JSON (e.g. '{"area": [32, 32]}')."""
    progress: bool = True
    """Show a progress bar."""


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(CollectConfig, args=argv)
    try:
        env_kwargs = json.loads(cfg.env_kwargs)
    except json.JSONDecodeError as e:
        sys.exit(f"--env-kwargs is not valid JSON: {e}")
    if not isinstance(env_kwargs, dict):
        sys.exit(f"--env-kwargs must be a JSON object, got {cfg.env_kwargs!r}")
    stats = collect(cfg.env, cfg.steps, cfg.out, policy=cfg.policy, num_envs=cfg.num_envs,
                    seed=cfg.seed, size=_hw(cfg.size), env_kwargs=env_kwargs,
                    max_episode_steps=cfg.max_episode_steps, workers=cfg.workers,
                    progress=cfg.progress)
    print(json.dumps(asdict(stats), indent=2))
    if stats.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
