"""stable-baselines3 on the dream: its env checker, PPO on the single env, the SB3VecEnv
adapter over the batched env (and PPO through it), and the SB3 example."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import worldsim
from envs.world_model_env import WorldModelEnv, WorldModelVectorEnv

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env  # noqa: E402

from envs.sb3 import SB3VecEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wm(tiny_bundle):
    return worldsim.load(tiny_bundle, device="cpu")


def test_sb3_check_env_passes(wm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(WorldModelEnv(wm), warn=True)
    # SB3 takes any 3-D Box for an image and gives CnnPolicy advice (uint8, [0, 255], 36x36);
    # latents are float (C, h, w) by nature and MlpPolicy flattens them: only that is allowed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(WorldModelEnv(wm, obs_mode="latent"), warn=True)
    assert all("image" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


def test_ppo_learns_on_the_single_env(wm):
    env = WorldModelEnv(wm, num_sampling_steps=1, max_episode_steps=50)
    model = PPO("CnnPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0,
                device="cpu", verbose=0)
    before = params(model)
    model.learn(total_timesteps=128)
    assert model.num_timesteps == 128
    assert not torch.equal(before, params(model))


def test_adapter_semantics(wm):
    venv = SB3VecEnv(WorldModelVectorEnv(wm, num_envs=2, obs_mode="latent",
                                         max_episode_steps=2, render_mode="rgb_array"))
    assert venv.num_envs == 2 and venv.observation_space.shape == wm.latent_shape
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (2, *wm.latent_shape)
    assert all("context_index" in info for info in venv.reset_infos)
    again = WorldModelVectorEnv(wm, num_envs=2, obs_mode="latent")
    assert np.array_equal(again.reset(seed=5)[0], obs)  # SB3's seed(s) is sub-env i = s + i
    obs, rewards, dones, infos = venv.step(np.array([1, 2]))
    assert rewards.dtype == np.float32 and not dones.any()
    assert [info["step"] for info in infos] == [1, 1]
    assert all(info["TimeLimit.truncated"] is False for info in infos)
    obs, rewards, dones, infos = venv.step(np.array([1, 2]))
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == wm.latent_shape
        assert info["final_info"]["step"] == 2 and info["step"] == 0
    prompt = {"frames": wm.start_frames[1], "actions": wm.start_actions["action"][1]}
    venv.set_options(prompt)  # one dict for every sub-env
    prompted = venv.reset()
    assert np.array_equal(prompted[0], prompted[1])
    assert all(info["context_index"] == -1 for info in venv.reset_infos)
    venv.set_options([prompt, {"frames": wm.start_frames[2]}])
    with pytest.raises(ValueError, match="one options dict"):
        venv.reset()
    assert venv.get_attr("num_envs") == [2, 2]
    assert venv.env_is_wrapped(object) == [False, False]
    assert len(venv.get_images()) == 2
    with pytest.raises(ValueError, match="all sub-envs"):
        venv.set_attr("max_episode_steps", 3, indices=[0])
    venv.close()


def test_adapter_refuses_other_autoreset_modes_and_tensor_mode(wm):
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    cartpole = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="vector_entry_point")
    assert cartpole.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(cartpole)
    with pytest.raises(ValueError, match="tensor_mode"):
        SB3VecEnv(WorldModelVectorEnv(wm, num_envs=2, tensor_mode=True))


def test_ppo_through_the_adapter(wm):
    venv = SB3VecEnv(WorldModelVectorEnv(wm, num_envs=4, obs_mode="latent",
                                         num_sampling_steps=1, max_episode_steps=8))
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                device="cpu", verbose=0)
    before = params(model)
    model.learn(total_timesteps=128)
    assert model.num_timesteps == 128
    assert not torch.equal(before, params(model))
    assert len(model.ep_info_buffer) == 0  # no Monitor: SB3 sees only raw steps
    venv.close()


def test_sb3_example_runs(tiny_bundle, tmp_path):
    out = tmp_path / "policy.safetensors"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sb3_ppo_dream.py"),
         "--checkpoint", str(tiny_bundle), "--num-envs", "2", "--n-steps", "8",
         "--batch-size", "8", "--n-epochs", "1", "--total-timesteps", "32",
         "--max-episode-steps", "4", "--num-sampling-steps", "1", "--device", "cpu",
         "--threads", "1", "--save", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] == 32 and summary["episodes_in_buffer"] >= 2
    from safetensors.torch import load_file

    assert load_file(str(out))
