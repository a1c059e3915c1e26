"""worldsim/Crafter-v0: the Gymnasium contract, reproducibility, episode ends, sizes, render."""

import gc

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.crafter import CrafterEnv, _make_reproducible_crafter


def rollout(seed: int, steps: int, action_seed: int = 0, **kwargs):
    """Frames, rewards and flags of `steps` random actions, resetting (unseeded) on episode end."""
    env = gym.make("worldsim/Crafter-v0", **kwargs)
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    frames, rewards, flags = [obs], [], []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(17)))
        frames.append(obs)
        rewards.append(reward)
        flags.append((terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            frames.append(obs)
    env.close()
    return np.stack(frames), rewards, flags


def test_gymnasium_check_env():
    check_env(gym.make("worldsim/Crafter-v0", render_mode="rgb_array").unwrapped)


def test_stable_baselines3_check_env():
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    sb3_checker.check_env(gym.make("worldsim/Crafter-v0"), warn=True)


def test_spaces_types_and_info():
    env = gym.make("worldsim/Crafter-v0")
    assert env.spec.max_episode_steps == 10000
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(17)
    assert env.unwrapped.action_names[0] == "noop" and len(env.unwrapped.action_names) == 17
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    assert isinstance(info["world_seed"], int)
    obs, reward, terminated, truncated, info = env.step(5)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert set(info["achievements"]) == set(env.unwrapped.achievement_names)
    assert len(info["achievements"]) == 22 and "wood" in info["inventory"]
    pos = info["player_pos"]
    _, _, _, _, info2 = env.step(1)
    # fresh objects every step: nothing the caller holds changes under it
    assert info2["player_pos"] is not pos and info2["inventory"] is not info["inventory"]


def test_same_seed_and_actions_give_identical_frames():
    a_frames, a_rewards, a_flags = rollout(seed=11, steps=500)
    # perturb the heap so that objects of the second run live at other addresses: crafter's
    # set-ordered despawn made runs diverge exactly this way
    junk = [[object() for _ in range(i % 7)] for i in range(5000)]
    gc.collect()
    b_frames, b_rewards, b_flags = rollout(seed=11, steps=500)
    del junk
    assert a_frames.shape == b_frames.shape
    assert np.array_equal(a_frames, b_frames)
    assert a_rewards == b_rewards and a_flags == b_flags


def test_reproducible_crafter_sorts_creatures_by_position():
    # The fix itself: the despawn choice sees creatures in position order, whatever the set order.
    game = _make_reproducible_crafter(seed=0, length=None)
    game.reset()
    seen = []
    original = type(game).__mro__[1]._balance_object

    def spy(self, chunk, objs, *args, **kw):
        seen.append([tuple(int(v) for v in o.pos) for o in objs])
        return original(self, chunk, objs, *args, **kw)

    type(game).__mro__[1]._balance_object = spy
    try:
        for _ in range(30):
            game.step(0)
    finally:
        type(game).__mro__[1]._balance_object = original
    assert seen and all(s == sorted(s) for s in seen)
    assert any(len(s) > 1 for s in seen)


def test_seeding():
    env = gym.make("worldsim/Crafter-v0")
    a, info_a = env.reset(seed=3)
    b, info_b = env.reset(seed=3)
    c, info_c = env.reset(seed=4)
    assert np.array_equal(a, b) and info_a["world_seed"] == info_b["world_seed"]
    assert info_c["world_seed"] != info_a["world_seed"]
    # unseeded resets continue the seeded stream: two envs seeded alike stay alike
    other = gym.make("worldsim/Crafter-v0")
    env.reset(seed=5)
    other.reset(seed=5)
    for _ in range(2):
        x, ix = env.reset()
        y, iy = other.reset()
        assert np.array_equal(x, y) and ix["world_seed"] == iy["world_seed"]


def test_terminated_on_death_truncated_on_time_limit():
    env = gym.make("worldsim/Crafter-v0", max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4 and flags[4] == (False, True)

    env.reset(seed=0)
    env.unwrapped._game._player.health = 0
    _, reward, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["discount"] == 0.0 and reward < 0


@pytest.mark.parametrize("size,shape", [(32, (32, 32, 3)), ((48, 80), (48, 80, 3)),
                                        ([96, 64], (96, 64, 3))])
def test_sizes(size, shape):
    env = gym.make("worldsim/Crafter-v0", size=size)
    assert env.observation_space.shape == shape
    obs, _ = env.reset(seed=0)
    assert obs.shape == shape
    assert env.step(3)[0].shape == shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 pixels per tile"):
        CrafterEnv(size=(17, 64))
    CrafterEnv(size=18).reset(seed=0)
    with pytest.raises(ValueError, match="render_mode"):
        CrafterEnv(render_mode="ansi")
    env = CrafterEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(17)


def test_render_modes_do_not_change_the_game():
    env = gym.make("worldsim/Crafter-v0", render_mode="rgb_array")
    obs, _ = env.reset(seed=2)
    assert np.array_equal(env.render(), obs)

    # a human window (SDL's dummy driver in tests) draws at its own size from the world's
    # RNG at night; the game must not notice.
    human = gym.make("worldsim/Crafter-v0", render_mode="human", window_size=72)
    human.unwrapped.metadata = {**CrafterEnv.metadata, "render_fps": 0}  # no frame pacing
    plain = gym.make("worldsim/Crafter-v0")
    rng = np.random.default_rng(0)
    human.reset(seed=9)
    plain.reset(seed=9)
    assert human.unwrapped._window is not None
    for env in (human, plain):
        env.unwrapped._game._step = 200  # skip ahead to the night
    darkest = 1.0
    for _ in range(60):
        a = int(rng.integers(17))
        x, _, terminated, truncated, _ = human.step(a)
        y, *_ = plain.step(a)
        darkest = min(darkest, human.unwrapped._game._world.daylight)
        assert np.array_equal(x, y)
        if terminated or truncated:
            break
    assert darkest < 0.3  # the night noise was drawn
    human.close()


def test_start_clock_sets_the_time_of_day_and_nothing_else():
    from envs.crafter import DAY_LENGTH

    def daylight(step):  # crafter's Env._update_time
        return 1 - abs(np.cos(np.pi * ((step / DAY_LENGTH) % 1 + 0.3))) ** 3

    morning, night = gym.make("worldsim/Crafter-v0"), gym.make("worldsim/Crafter-v0",
                                                                start_clock=210)
    _, info_m = morning.reset(seed=7)
    dark, info_n = night.reset(seed=7)
    assert info_m["world_seed"] == info_n["world_seed"]  # the same world
    assert (info_m["start_clock"], info_n["start_clock"]) == (0, 210)
    assert night.unwrapped._game._world.daylight == pytest.approx(daylight(210), abs=1e-9)
    assert info_n["inventory"] == info_m["inventory"]  # the player starts as always
    for _ in range(3):
        dark, *_ = night.step(0)
    assert night.unwrapped._game._world.daylight == pytest.approx(daylight(213), abs=1e-9)
    # the same place drawn at night: darker
    assert dark.mean() < morning.step(0)[0].mean() - 3

    clocks = gym.make("worldsim/Crafter-v0", start_clock="random")
    drawn = [clocks.reset(seed=7)[1]] + [clocks.reset()[1] for _ in range(5)]
    assert drawn[0]["world_seed"] == info_m["world_seed"]  # drawn after the world seed
    values = [i["start_clock"] for i in drawn]
    assert all(0 <= v < DAY_LENGTH for v in values) and len(set(values)) > 1
    again = gym.make("worldsim/Crafter-v0", start_clock="random")
    assert [again.reset(seed=7)[1]["start_clock"]] + [again.reset()[1]["start_clock"]
                                                      for _ in range(5)] == values
    for bad in (-1, "noon", 1.5, True):
        with pytest.raises(ValueError, match="start_clock"):
            CrafterEnv(start_clock=bad)
