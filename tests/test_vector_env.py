"""WorldModelVectorEnv on the tiny bundle: batched spaces, agreement with the single env,
independent rows, per-sub-env SAME_STEP autoreset, prompts, reset masks, tensor mode,
branching, registration, and the CleanRL-style example."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers worldsim/*)
import worldsim
from envs.world_model_env import WorldModelEnv, WorldModelVectorEnv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wm(tiny_bundle):
    return worldsim.load(tiny_bundle, device="cpu")


def start_obs(wm, index: int) -> np.ndarray:
    """The first observation of an episode started from shipped context `index`."""
    return wm.decode(wm.encode(wm.start_frames[index])[-1:])[0].numpy()


def same_frame(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to rounding: the env decodes a batch and `start_obs` one frame, and the
    convolutions' float sums may differ in the last bit between batch sizes, which moves a
    pixel by 1 after quantisation (seen in a full test run). Another frame
    differs by tens."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) <= 1


def test_batched_spaces_and_metadata(wm):
    env = WorldModelVectorEnv(wm, num_envs=3)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_action_space == wm.action_space
    assert env.action_space.shape == (3,)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, *wm.observation_space.shape) and obs in env.observation_space
    assert info["_context_index"].all() and (info["step"] == 0).all()
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs in env.observation_space
    assert reward.dtype == np.float32 and reward.shape == (3,)
    assert terminated.dtype == truncated.dtype == np.bool_
    assert info["termination_prob"].shape == (3,) and info["reward_probs"].shape[0] == 3

    latent = WorldModelVectorEnv(wm, num_envs=2, obs_mode="latent")
    obs, _ = latent.reset(seed=0)
    assert obs.shape == (2, *wm.latent_shape) and obs.dtype == np.float32


def test_one_env_vector_env_equals_the_single_env(wm):
    actions = [3, 5, 1, 0]
    single = WorldModelEnv(wm)
    vector = WorldModelVectorEnv(wm, num_envs=1)
    obs, info = single.reset(seed=11)
    vobs, vinfo = vector.reset(seed=11)
    assert np.array_equal(obs, vobs[0]) and info["context_index"] == vinfo["context_index"][0]
    for a in actions:
        obs, reward, terminated, *_ = single.step(a)
        vobs, vreward, vterminated, *_ = vector.step(np.array([a]))
        assert np.array_equal(obs, vobs[0])
        assert reward == pytest.approx(float(vreward[0]), abs=1e-6)
        assert terminated == vterminated[0]


def test_sub_env_i_starts_as_the_single_env_seeded_seed_plus_i(wm):
    vector = WorldModelVectorEnv(wm, num_envs=3)
    obs, info = vector.reset(seed=20)
    single = WorldModelEnv(wm)
    for i in range(3):
        sobs, sinfo = single.reset(seed=20 + i)
        assert sinfo["context_index"] == info["context_index"][i]
        # the single env decodes one frame, the vector env three
        assert same_frame(sobs, obs[i])
    # a list of seeds is the same thing
    lobs, linfo = vector.reset(seed=[20, 21, 22])
    assert np.array_equal(lobs, obs)


def test_rows_are_independent_and_seeded_runs_repeat(wm):
    env = WorldModelVectorEnv(wm, num_envs=3, obs_mode="latent")

    def run(actions):
        env.reset(seed=3)
        return [env.step(np.array(actions))[0] for _ in range(3)]

    first = run([1, 2, 3])
    assert all(np.array_equal(x, y) for x, y in zip(first, run([1, 2, 3]), strict=True))
    other = run([1, 9, 16])
    # row 0's frames do not depend on what the other rows do
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(first, other, strict=True))
    assert not any(np.array_equal(x[1], y[1]) for x, y in zip(first, other, strict=True))


def test_same_step_autoreset_resets_only_the_rows_that_ended(wm):
    env = WorldModelVectorEnv(wm, num_envs=3, max_episode_steps=3)
    env.reset(seed=0)
    env.step(np.zeros(3, dtype=np.int64))
    obs, info = env.reset(options={"reset_mask": np.array([True, False, False])})
    assert info["_context_index"].tolist() == [True, False, False]
    assert same_frame(obs[0], start_obs(wm, info["context_index"][0]))
    env.step(np.zeros(3, dtype=np.int64))
    obs, _, terminated, truncated, info = env.step(np.zeros(3, dtype=np.int64))
    assert truncated.tolist() == [False, True, True] and not terminated.any()
    assert info["_final_obs"].tolist() == [False, True, True]
    assert info["final_obs"][0] is None
    assert all(info["final_obs"][i] in env.single_observation_space for i in (1, 2))
    assert info["final_info"]["_step"].tolist() == [False, True, True]
    assert info["final_info"]["step"][1:].tolist() == [3, 3]
    assert info["step"].tolist() == [2, 0, 0]
    assert info["_termination_prob"].tolist() == [True, False, False]
    for i in (1, 2):  # the rows that ended already show their next episode's first frame
        assert same_frame(obs[i], start_obs(wm, info["context_index"][i]))
    _, _, _, truncated, info = env.step(np.zeros(3, dtype=np.int64))
    assert truncated.tolist() == [True, False, False]
    assert info["step"].tolist() == [0, 1, 1]


def test_terminated_rows_autoreset_in_the_same_step(wm):
    env = WorldModelVectorEnv(wm, num_envs=2, termination_threshold=0.0)
    env.reset(seed=0)
    obs, _, terminated, truncated, info = env.step(np.array([1, 2]))
    assert terminated.all() and not truncated.any()
    for i in range(2):
        assert same_frame(obs[i], start_obs(wm, info["context_index"][i]))


def test_prompts_shared_and_per_sub_env(wm):
    env = WorldModelVectorEnv(wm, num_envs=2)
    frames, actions = wm.start_frames, wm.start_actions["action"]
    obs, info = env.reset(seed=0, options={"frames": frames[0], "actions": actions[0]})
    assert (info["context_index"] == -1).all()
    assert same_frame(obs[0], start_obs(wm, 0)) and np.array_equal(obs[1], obs[0])
    obs, _ = env.reset(options={"frames": frames[[2, 3]], "actions": actions[[2, 3]]})
    assert same_frame(obs[0], start_obs(wm, 2)) and same_frame(obs[1], start_obs(wm, 3))
    with pytest.raises(ValueError, match="prompts for 3 sub-envs"):
        env.reset(options={"frames": frames[:3], "actions": actions[:3]})


def test_reset_and_action_errors(wm):
    env = WorldModelVectorEnv(wm, num_envs=2)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="first reset"):
        env.reset(options={"reset_mask": np.array([True, False])})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match="2 sub-envs"):
        env.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match=r"each of the 2 sub-envs, an integer in \[0, 17\)"):
        env.step(np.array([0, 17]))
    with pytest.raises(ValueError, match="batched action space"):
        env.step(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="num_envs"):
        WorldModelVectorEnv(wm, num_envs=0)


def test_tensor_mode_matches_numpy_mode_without_leaving_the_device(wm):
    kwargs = dict(num_envs=2, obs_mode="latent", max_episode_steps=2)
    numpy_env = WorldModelVectorEnv(wm, **kwargs)
    tensor_env = WorldModelVectorEnv(wm, tensor_mode=True, **kwargs)
    obs, _ = numpy_env.reset(seed=4)
    tobs, _ = tensor_env.reset(seed=4)
    assert isinstance(tobs, torch.Tensor) and np.array_equal(tobs.numpy(), obs)
    for _ in range(2):
        actions = np.array([5, 6])
        obs, reward, terminated, truncated, info = numpy_env.step(actions)
        tobs, treward, tterminated, ttruncated, tinfo = tensor_env.step(torch.tensor(actions))
        assert all(isinstance(t, torch.Tensor) for t in (tobs, treward, tterminated, ttruncated))
        assert tterminated.dtype == ttruncated.dtype == torch.bool
        assert np.array_equal(tobs.numpy(), obs)
        assert np.allclose(treward.numpy(), reward)
        assert np.array_equal(ttruncated.numpy(), truncated)
        assert isinstance(tinfo["termination_prob"], torch.Tensor)
    assert truncated.all()
    assert isinstance(tinfo["final_obs"], torch.Tensor)
    for i in range(2):
        assert np.array_equal(tinfo["final_obs"][i].numpy(), info["final_obs"][i])
    with pytest.raises(ValueError, match="shape"):
        tensor_env.step(torch.zeros(3, dtype=torch.long))


def test_vector_branching(wm):
    env = WorldModelVectorEnv(wm, num_envs=2, obs_mode="latent")
    env.reset(seed=9)
    state = env.get_state()
    actions = [np.array([1, 2]), np.array([3, 4]), np.array([5, 6])]
    first = [env.step(a)[0] for a in actions]
    env.set_state(state)
    assert all(np.array_equal(x, env.step(a)[0]) for x, a in zip(first, actions, strict=True))


def test_make_vec_and_render(tiny_bundle):
    env = gym.make_vec("worldsim/Dream-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       checkpoint=str(tiny_bundle), render_mode="rgb_array", device="cpu",
                       max_episode_steps=7)
    assert isinstance(env, WorldModelVectorEnv) and env.num_envs == 2
    assert env.max_episode_steps == 7
    obs, _ = env.reset(seed=0)
    frames = env.render()
    assert len(frames) == 2 and all(np.array_equal(f, o) for f, o in zip(frames, obs, strict=True))
    env.close()


def test_gymnasium_vector_wrappers(wm):
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    env = RecordEpisodeStatistics(WorldModelVectorEnv(wm, num_envs=2, max_episode_steps=2))
    env.reset(seed=0)
    env.step(np.array([0, 1]))
    _, _, _, truncated, info = env.step(np.array([0, 1]))
    assert truncated.all() and info["_episode"].all()
    assert info["episode"]["l"].tolist() == [2, 2]


def test_cleanrl_style_example_runs(tiny_bundle, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cleanrl_style_dream.py"),
         "--checkpoint", str(tiny_bundle), "--num-envs", "2", "--num-steps", "4",
         "--total-timesteps", "16", "--num-minibatches", "2", "--update-epochs", "1",
         "--num-sampling-steps", "1", "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "updates 2" in result.stdout
