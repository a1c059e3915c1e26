"""`worldsim collect` and its policies: the CLI, reproducibility, appending, interruption,
kill -9, and other Gymnasium envs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gymnasium import spaces

from worldsim.data.collect import collect, episode_seed, make_env
from worldsim.data.policies import (
    POLICIES,
    RandomPolicy,
    StickyPolicy,
    make_policy,
    register_policy,
)
from worldsim.data.store import EpisodeStore


def run_cli(*args, timeout=120):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    return subprocess.run([sys.executable, "-m", "worldsim.cli", "collect", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def episodes_of(root):
    store = EpisodeStore(root)
    return store, [store.load(n) for n in store.names]


def test_cli_collects_crafter(tmp_path):
    out = tmp_path / "d"
    proc = run_cli("--out", str(out), "--steps", "60", "--seed", "3", "--size", "32",
                   "--max-episode-steps", "25", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["steps"] == 60 and stats["seed"] == 3 and not stats["interrupted"]
    store, eps = episodes_of(out)
    assert store.env_id == "worldsim/Crafter-v0" and store.frame_shape() == (32, 32, 3)
    assert store.action_space == spaces.Discrete(17)
    assert sum(ep.length for ep in eps) == 60 and store.verify() == {}
    for ep in sorted(eps, key=lambda e: e.info["episode_index"]):
        assert ep.frames.shape[1:] == (32, 32, 3)
        assert ep.terminated[-1] or ep.truncated[-1]  # every episode ends
        assert not (ep.terminated[:-1] | ep.truncated[:-1]).any()  # and only at its end
        assert ep.info["seed"] == episode_seed(3, 0, ep.info["episode_index"])
        assert ep.info["policy"] == "sticky" and "world_seed" in ep.info
        assert ep.info["start_clock"] == 0  # Crafter's own clock
        assert isinstance(ep.info["achievements"], list)
        assert ep.info["return"] == pytest.approx(float(ep.rewards.sum()), abs=1e-5)
    # the step budget cut the last episode: 25 + 25 + 10 transitions
    last = max(eps, key=lambda e: e.info["episode_index"])
    assert last.length == 10 and last.truncated[-1] and not last.terminated[-1]


def test_cli_help_and_bad_input(tmp_path):
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--num-envs" in proc.stdout and "--policy" in proc.stdout
    proc = run_cli("--out", str(tmp_path / "x"), "--steps", "5", "--policy", "nope",
                   "--no-progress")
    assert proc.returncode != 0 and "unknown policy 'nope'" in proc.stderr
    assert "sticky" in proc.stderr


def test_same_seed_same_data_and_appending(tmp_path):
    kwargs = dict(steps=50, num_envs=2, workers=1, seed=5, size=24, max_episode_steps=20,
                  progress=False)
    a = collect("worldsim/Crafter-v0", out=tmp_path / "a", **kwargs)
    collect("worldsim/Crafter-v0", out=tmp_path / "b", **kwargs)
    assert a.steps == 50 and a.store_episodes == a.episodes
    _, eps_a = episodes_of(tmp_path / "a")
    _, eps_b = episodes_of(tmp_path / "b")
    key = lambda e: (e.info["env_index"], e.info["episode_index"])  # noqa: E731
    eps_a, eps_b = sorted(eps_a, key=key), sorted(eps_b, key=key)
    assert [key(e) for e in eps_a] == [key(e) for e in eps_b]
    assert {e.info["env_index"] for e in eps_a} == {0, 1}
    for x, y in zip(eps_a, eps_b, strict=True):
        assert np.array_equal(x.frames, y.frames)
        assert np.array_equal(x.actions["action"], y.actions["action"])
        assert x.info["seed"] == y.info["seed"]

    # running again on the same directory appends
    again = collect("worldsim/Crafter-v0", out=tmp_path / "a", **{**kwargs, "seed": 6})
    assert again.store_episodes == a.episodes + again.episodes
    assert again.store_frames == a.store_frames + again.steps + again.episodes
    with pytest.raises(ValueError, match="observation_space"):
        collect("worldsim/Crafter-v0", out=tmp_path / "a", **{**kwargs, "size": 32})


def test_other_gymnasium_env_through_its_renderer(tmp_path):
    pytest.importorskip("pygame")
    env = make_env("CartPole-v1", size=(24, 32))
    obs, _ = env.reset(seed=0)
    assert env.source == "render" and obs.shape == (24, 32, 3) and obs.dtype == np.uint8
    assert obs.std() > 0  # an actual picture, not a blank
    stats = collect("CartPole-v1", steps=30, out=tmp_path, policy="random", seed=0,
                    size=(24, 32), progress=False)
    store, eps = episodes_of(tmp_path)
    assert stats.steps == 30 and store.frame_shape() == (24, 32, 3)
    assert store.meta["frame_source"] == "render"
    assert store.action_space == spaces.Discrete(2)


def test_same_seed_gives_same_names_and_split_and_is_refused_twice(tmp_path):
    """Names come from the seed, so collecting the same games into a new directory gives the
    same train/validation split; collecting a seed again into the same directory is an error
    (it would only duplicate games)."""
    kwargs = dict(steps=40, policy="random", seed=3, num_envs=2, size=(24, 32),
                  max_episode_steps=7, progress=False)
    collect("CartPole-v1", out=tmp_path / "a", **kwargs)
    collect("CartPole-v1", out=tmp_path / "b", **kwargs)
    a, b = EpisodeStore(tmp_path / "a"), EpisodeStore(tmp_path / "b")
    assert sorted(a.names) == sorted(b.names) and a.names[0].startswith("ep-seed3-env")
    assert a.split("val") == b.split("val") and a.split("train") == b.split("train")
    with pytest.raises(ValueError, match="already holds episodes collected with seed 3"):
        collect("CartPole-v1", out=tmp_path / "a", **kwargs)
    collect("CartPole-v1", out=tmp_path / "a", **{**kwargs, "seed": 4})  # another seed adds
    assert len(EpisodeStore(tmp_path / "a").names) > len(b.names)


def test_unknown_env_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown env id 'NoSuchEnv-v9'"):
        collect("NoSuchEnv-v9", steps=5, out=tmp_path, progress=False)


def _wait_for_episodes(root, count, proc, envs=(0,), timeout=90):
    """Wait until `count` episodes are written, from each env index in `envs`."""
    deadline = time.time() + timeout
    episodes = root / "episodes"
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        names = [p.name for p in episodes.iterdir()] if episodes.exists() else []
        names = [n for n in names if not n.startswith(".")]
        if len(names) >= count and all(any(f"-env{k:02d}-" in n for n in names) for k in envs):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no {count} episodes under {root} after {timeout} s")


def _start_long_collect(out, *extra):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    return subprocess.Popen(
        [sys.executable, "-m", "worldsim.cli", "collect", "--out", str(out), "--steps",
         "1000000", "--size", "24", "--max-episode-steps", "15", "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)  # its own process group: signals reach it and its workers


def test_kill_9_leaves_a_readable_dataset(tmp_path):
    out = tmp_path / "d"
    proc = _start_long_collect(out, "--num-envs", "2", "--seed", "1")
    try:
        _wait_for_episodes(out, 4, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the collector and its workers, all at once
        proc.wait(timeout=30)
    store = EpisodeStore(out)
    assert len(store) >= 4 and store.corrupt == {}
    assert store.verify() == {}  # every finished episode is whole
    for name in store.names:
        ep = store.load(name, verify=True)
        assert 1 <= ep.length <= 15 and (ep.terminated[-1] or ep.truncated[-1])
    # and collecting into it again works
    stats = collect("worldsim/Crafter-v0", steps=10, out=out, size=24, seed=2, progress=False)
    assert stats.store_episodes == len(store) + 1


def test_interrupt_writes_the_episodes_in_progress(tmp_path):
    # An interrupt that lands while a worker resets Crafter (world generation takes a good
    # share of a random agent's short episodes) finds no step of a new episode to save, so a
    # run may legitimately end with no cut episode; try a few runs until one is cut.
    for attempt in range(8):
        out = tmp_path / f"d{attempt}"
        # episodes of up to 10,000 steps: the ones in progress at the interrupt are long-running
        proc = _start_long_collect(out, "--num-envs", "2", "--seed", str(4 + attempt),
                                   "--max-episode-steps", "10000")
        try:
            _wait_for_episodes(out, 2, proc, envs=(0, 1))  # both workers are playing
            # The episode that just appeared means its worker is now resetting; let the
            # interrupt land at a different moment on each attempt, so attempts do not all
            # fall into world generation together (a loaded machine made that happen).
            time.sleep(0.15 * attempt)
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 130, stderr
        stats = json.loads(stdout)
        assert stats["interrupted"]
        store = EpisodeStore(out)
        eps = [store.load(n, verify=True) for n in store.names]
        # every step played was saved: the episodes in progress were written, cut
        assert sum(ep.length for ep in eps) == stats["steps"]
        assert all(ep.terminated[-1] or ep.truncated[-1] for ep in eps)
        cut = [ep for ep in eps if ep.truncated[-1]]
        assert all(not ep.terminated[-1] for ep in cut)
        if cut:
            return
    raise AssertionError("no run was interrupted during an episode in progress")


# ---------------------------------------------------------------------- policies
def test_sticky_policy_holds_actions_and_prefers_moving():
    names = [f"a{i}" for i in range(17)]
    names[1:6] = ["move_left", "move_right", "move_up", "move_down", "do"]
    policy = make_policy("sticky", spaces.Discrete(17), num_envs=3, action_names=names)
    assert isinstance(policy, StickyPolicy)
    rng = np.random.default_rng(0)
    policy.reset(np.ones(3, bool))
    actions = np.array([policy.act(np.zeros((3, 4, 4, 3), np.uint8), rng) for _ in range(3000)])
    assert actions.shape == (3000, 3)
    changes = (np.diff(actions, axis=0) != 0).sum()
    mean_run = actions.size / (changes + 3)
    assert 3 < mean_run < 10  # held for several steps, not resampled every step
    share = np.isin(actions, [1, 2, 3, 4, 5]).mean()
    assert share > 0.6 and set(np.unique(actions)) <= set(range(17))
    # a reset forces a fresh draw in the masked envs only
    policy._left[:] = 5
    policy.reset(np.array([True, False, False]))
    assert policy._left[0] == 0 and (policy._left[1:] == 5).all()


def test_policies_are_reproducible_and_cover_spaces():
    space = spaces.Dict({"b": spaces.MultiBinary(3), "c": spaces.Box(-1, 1, (2,)),
                         "k": spaces.Discrete(4, start=1)})
    for name in ("random", "sticky"):
        runs = []
        for _ in range(2):
            policy = make_policy(name, space, num_envs=2)
            rng = np.random.default_rng(1)
            runs.append([policy.act(None, rng) for _ in range(20)])
        flat = lambda r: [(a["b"].tolist(), a["c"].tolist(), a["k"]) for s in r for a in s]  # noqa: E731
        assert flat(runs[0]) == flat(runs[1])
        assert all(space.contains(a) for step in runs[0] for a in step)


def test_unknown_policy_lists_known_and_factories_load():
    with pytest.raises(ValueError, match="unknown policy 'greedy'.*random.*sticky"):
        make_policy("greedy", spaces.Discrete(3), num_envs=1)
    policy = make_policy("worldsim.data.policies:RandomPolicy", spaces.Discrete(3), num_envs=2)
    assert isinstance(policy, RandomPolicy)
    with pytest.raises(ValueError, match="cannot load policy"):
        make_policy("worldsim.data.policies:Missing", spaces.Discrete(3), num_envs=1)
    register_policy("always-zero-test", lambda space, num_envs, action_names=None: RandomPolicy(
        spaces.Discrete(1), num_envs))
    try:
        rng = np.random.default_rng(0)
        assert make_policy("always-zero-test", spaces.Discrete(3), 2).act(None, rng) == [0, 0]
    finally:
        POLICIES.pop("always-zero-test")


def test_collect_at_random_hours_records_each_start_clock_and_replays(tmp_path):
    from worldsim.data.achievements import label_achievements

    out = tmp_path / "d"
    proc = run_cli("--out", str(out), "--steps", "40", "--seed", "5", "--size", "32",
                   "--max-episode-steps", "10", "--no-progress",
                   "--env-kwargs", '{"start_clock": "random"}')
    assert proc.returncode == 0, proc.stderr
    store, eps = episodes_of(out)
    clocks = [ep.info["start_clock"] for ep in eps]
    assert all(0 <= c < 300 for c in clocks) and len(set(clocks)) > 1
    # the real game replays each episode from its seed alone (the clock is drawn from it)
    counts = label_achievements(out, progress=False)
    assert counts["failed"] == 0 and counts["labelled"] == len(eps)
