"""agents: random agent, actor-critic shapes and checkpoints, λ-returns, the trainer over
gymnasium vector envs (both autoreset modes), a learning run, and `worldsim imagine`."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from agents.actor_critic import (
    PRESETS,
    ActorCritic,
    ActorCriticConfig,
    load_actor_critic,
    load_agent,
    observation_kind,
    save_agent,
    symexp,
    symlog,
)
from agents.imagination import ImaginationConfig, ImaginationTrainer, lambda_returns
from agents.random_agent import RandomAgent
from worldsim.training.checkpoint import CheckpointError

FRAMES = spaces.Box(0, 255, (64, 64, 3), np.uint8)
LATENTS = spaces.Box(-np.inf, np.inf, (4, 16, 16), np.float32)
VECTOR = spaces.Box(-1, 1, (5,), np.float32)


# ---------------------------------------------------------------------- tiny envs
class CueEnv(gym.Env):
    """Memory task: a cue (one of two) is shown only on the first observation; after
    `length` steps the last action is rewarded 1 if it names the cue. Solving it needs the
    LSTM memory and credit over several steps."""

    observation_space = spaces.Box(0, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 3):
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        obs = np.zeros(2, np.float32)
        obs[self.cue] = 1.0
        return obs, {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        reward = float(done and int(action) == self.cue)
        return np.zeros(2, np.float32), reward, done, False, {}


class CountEnv(gym.Env):
    """Deterministic: observation = steps taken; reward 1 per step; ends after `length`
    steps, by termination or (truncate=True) by truncation."""

    observation_space = spaces.Box(0, 100, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 2, truncate: bool = False):
        self.length, self.truncate = length, truncate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return (np.array([float(self.t)], np.float32), 1.0, end and not self.truncate,
                end and self.truncate, {})


def tiny_model(obs_space, action_space=spaces.Discrete(3), **overrides):
    torch.manual_seed(0)
    cfg = ActorCriticConfig(**{**vars(PRESETS["tiny"]()), **overrides})
    return ActorCritic(cfg, obs_space, action_space)


# ---------------------------------------------------------------------- random agent
def test_random_agent_is_seeded_and_uniform():
    space = spaces.Discrete(17)
    a, b = RandomAgent(space, seed=3), RandomAgent(space, seed=3)
    draws = [a.act(None) for _ in range(3400)]
    assert draws[:50] == [b.act(None) for _ in range(50)]
    counts = np.bincount(draws, minlength=17)
    assert counts.min() > 120 and counts.max() < 290  # 200 expected per action
    assert all(space.contains(x) for x in draws)


# ---------------------------------------------------------------------- λ-returns
def test_lambda_returns_hand_computed():
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    next_values = torch.tensor([[0.5], [1.0], [3.0]])
    ones, no_end = torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.bool)
    # G2 = 2 + .9*3 = 4.7; G1 = 0 + .9*(.5*1 + .5*4.7) = 2.565;
    # G0 = 1 + .9*(.5*.5 + .5*2.565) = 2.37925
    got = lambda_returns(rewards, ones, no_end, next_values, gamma, lam)
    torch.testing.assert_close(got[:, 0], torch.tensor([2.37925, 2.565, 4.7]))

    # death at step 1: no bootstrap there, and step 2 (a new episode) does not leak into G0's
    # recursion beyond G1 = r1 = 0. G0 = 1 + .9*(.5*.5 + .5*0) = 1.225
    continues = torch.tensor([[1.0], [0.0], [1.0]])
    ends = torch.tensor([[False], [True], [False]])
    got = lambda_returns(rewards, continues, ends, next_values, gamma, lam)
    torch.testing.assert_close(got[:, 0], torch.tensor([1.225, 0.0, 4.7]))

    # truncation at step 1: bootstrapped from V(last state) = next_values[1] = 1.0, the
    # next episode still kept out: G1 = 0 + .9*1 = .9; G0 = 1 + .9*(.25 + .45) = 1.63
    got = lambda_returns(rewards, ones, ends, next_values, gamma, lam)
    torch.testing.assert_close(got[:, 0], torch.tensor([1.63, 0.9, 4.7]))


def test_lambda_returns_limits():
    """λ=1: discounted Monte-Carlo return plus discounted bootstrap; λ=0: one-step TD."""
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[10.0], [20.0], [30.0]])
    c, e = torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.bool)
    g = 0.5
    mc = lambda_returns(r, c, e, v, g, 1.0)[0, 0]
    assert mc.item() == pytest.approx(1 + g * 2 + g**2 * 3 + g**3 * 30)
    td = lambda_returns(r, c, e, v, g, 0.0)[:, 0]
    torch.testing.assert_close(td, r[:, 0] + g * v[:, 0])


def test_symlog_inverts():
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 250.0])
    torch.testing.assert_close(symexp(symlog(x)), x)


# ---------------------------------------------------------------------- the network
@pytest.mark.parametrize("obs_space,kind", [(FRAMES, "frames"), (LATENTS, "latents"),
                                            (VECTOR, "vector")])
def test_actor_critic_shapes(obs_space, kind):
    assert observation_kind(obs_space) == kind
    model = tiny_model(obs_space, spaces.Discrete(17))
    B, T = 3, 4
    obs = torch.as_tensor(np.stack([obs_space.sample() for _ in range(T * B)])
                          ).reshape(T, B, *obs_space.shape)
    state = model.initial_state(B)
    dist, value, state1 = model.step(obs[0], state)
    assert dist.log_probs.shape == (B, 17) and value.shape == (B,)
    assert state1[0].shape == state1[1].shape == (B, 32)
    first = torch.zeros(T, B, dtype=torch.bool)
    first[2, 1] = True
    dist, values, _ = model.unroll(obs, first, state)
    assert dist.log_probs.shape == (T, B, 17) and values.shape == (T, B)
    # the unroll equals step-by-step acting, memory cleared where `first`
    s = state
    for t in range(T):
        d, v, s = model.step(obs[t], s, first[t])
        torch.testing.assert_close(v, values[t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d.log_probs, dist.log_probs[t], atol=1e-5, rtol=1e-5)
    actions, _ = model.act(obs[0], state)
    assert actions.shape == (B,) and actions.dtype == torch.long
    assert ((actions >= 0) & (actions < 17)).all()


def test_memory_is_cleared_on_first():
    model = tiny_model(VECTOR)
    obs = torch.rand(2, 5)
    _, _, state = model.step(obs, model.initial_state(2))
    _, v_fresh, _ = model.step(obs, model.initial_state(2))
    _, v_first, _ = model.step(obs, state, torch.tensor([True, False]))
    assert torch.allclose(v_first[0], v_fresh[0])
    assert not torch.allclose(v_first[1], v_fresh[1])


def test_multidiscrete_head():
    space = spaces.MultiDiscrete([3, 5], start=[1, -2])
    model = tiny_model(VECTOR, space)
    dist, _, _ = model.step(torch.rand(4, 5), model.initial_state(4))
    actions = dist.sample()
    assert actions.shape == (4, 2)
    assert dist.log_prob(actions).shape == (4,) and dist.entropy().shape == (4,)
    # near-uniform at initialisation: entropy close to ln 3 + ln 5
    assert dist.entropy().mean().item() == pytest.approx(np.log(15), abs=0.01)
    env_actions = model.policy.to_env(actions)
    assert all(space.contains(a) for a in env_actions)


@pytest.mark.parametrize("space", [spaces.Box(0, 1, (2, 2), np.float32),
                                   spaces.Box(0, 255, (8, 8, 3), np.int64),
                                   spaces.Discrete(4)])
def test_unsupported_observation_space_is_named(space):
    with pytest.raises(ValueError, match="observation space"):
        observation_kind(space)


def test_unsupported_action_space_is_named():
    with pytest.raises(ValueError, match="Box"):
        ActorCritic(PRESETS["tiny"](), VECTOR, spaces.Box(-1, 1, (2,)))


def test_wrong_observation_shape_is_named():
    model = tiny_model(FRAMES)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        model.step(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), model.initial_state(1))


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    model = tiny_model(FRAMES, spaces.Discrete(17))
    save_agent(tmp_path / "agent", model, extra_config={"training": {"updates": 7}})
    assert sorted(os.listdir(tmp_path / "agent")) == ["config.json", "model.safetensors"]
    loaded, config, _ = load_actor_critic(tmp_path / "agent")
    assert config["training"] == {"updates": 7}
    assert loaded.observation_space == FRAMES and loaded.action_space == spaces.Discrete(17)
    obs = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    _, v0, _ = model.step(obs, model.initial_state(2))
    _, v1, _ = loaded.step(obs, loaded.initial_state(2))
    torch.testing.assert_close(v0, v1)

    agent = load_agent(tmp_path / "agent", spaces.Discrete(17), device="cpu", seed=1)
    again = load_agent(tmp_path / "agent", device="cpu", seed=1)
    frame = FRAMES.sample()
    actions = [agent.act(frame) for _ in range(20)]
    assert actions == [again.act(frame) for _ in range(20)]
    assert all(isinstance(a, int) and 0 <= a < 17 for a in actions)


def test_load_is_strict(tmp_path):
    model = tiny_model(VECTOR)
    path = save_agent(tmp_path / "agent", model)
    config_path = path / "config.json"
    original = json.loads(config_path.read_text())

    def write(config):
        config_path.write_text(json.dumps(config))

    # a different size than the stored tensors: every mismatching tensor is named
    changed = json.loads(json.dumps(original))
    changed["agent"]["lstm_hidden"] = 16
    write(changed)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'lstm.weight_ih'"):
        load_actor_critic(path)
    # an unknown config field
    changed = json.loads(json.dumps(original))
    changed["agent"]["dropout"] = 0.1
    write(changed)
    with pytest.raises(CheckpointError, match="unknown field.*dropout"):
        load_actor_critic(path)
    # not an agent
    changed = json.loads(json.dumps(original))
    changed["kind"] = "something-else"
    write(changed)
    with pytest.raises(CheckpointError, match="not a saved agent"):
        load_actor_critic(path)
    write(original)
    # a different action space than the env's
    with pytest.raises(CheckpointError, match="Discrete\\(5\\)"):
        load_agent(path, spaces.Discrete(5))
    # a model whose tensors were saved under other names
    state = {k.replace("lstm.", "memory."): v for k, v in model.state_dict().items()}
    from worldsim.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "renamed", original, {"model": state})
    with pytest.raises(CheckpointError, match="missing key 'lstm.weight_ih'.*unexpected key"):
        load_actor_critic(tmp_path / "renamed")


# ---------------------------------------------------------------------- the trainer
def test_rollout_marks_autoreset_steps():
    """NEXT_STEP: the step after an episode's end only resets (invalid), the one after it
    starts with cleared memory; rewards and returns stay inside their episode."""
    env = SyncVectorEnv([lambda: CountEnv(length=2)])
    model = tiny_model(CountEnv.observation_space, spaces.Discrete(2))
    trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=7, restart=False), seed=0)
    r = trainer.collect()
    # t:       0  1  2(reset) 3  4  5(reset) 6
    assert r.obs[:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert r.valid[:, 0].tolist() == [True, True, False, True, True, False, True]
    assert r.first[:, 0].tolist() == [True, False, False, True, False, False, True]
    assert r.ends[:, 0].tolist() == [False, True, False, False, True, False, False]
    assert r.rewards[:, 0].tolist() == [1, 1, 0, 1, 1, 0, 1]
    assert r.continues[:, 0].tolist() == [1, 0, 1, 1, 0, 1, 1]
    assert trainer.finished_episodes == [(2.0, 2), (2.0, 2)]
    returns = lambda_returns(r.rewards, r.continues, r.ends, r.next_values, 0.9, 0.95)
    assert returns[1, 0].item() == pytest.approx(1.0)  # the last reward, nothing after death
    # the next rollout continues the episode in progress (restart=False)
    r2 = trainer.collect()
    assert r2.obs[0, 0, 0].item() == 1 and not r2.first[0, 0]


def test_same_step_autoreset_bootstraps_truncation_from_final_obs():
    env = SyncVectorEnv([lambda: CountEnv(length=2, truncate=True)] * 2,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    model = tiny_model(CountEnv.observation_space, spaces.Discrete(2))
    trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=4, restart=False), seed=0)
    r = trainer.collect()
    assert r.valid.all()
    assert r.obs[:, 0, 0].tolist() == [0, 1, 0, 1]
    assert r.first[:, 0].tolist() == [True, False, True, False]
    assert r.ends[:, 0].tolist() == [False, True, False, True]
    assert r.continues.eq(1).all()  # truncation, not death
    # V(s) of the truncated episode's real last obs (obs = 2) with the memory it had
    state = model.initial_state(1)
    with torch.no_grad():
        for t, x in enumerate([0.0, 1.0, 2.0]):
            _, v, state = model.step(torch.tensor([[x]]), state, torch.tensor([t == 0]))
    assert r.next_values[1, 0].item() == pytest.approx(v.item(), abs=1e-5)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_training_improves_the_return(mode):
    """The cue task (memory over 3 steps) goes from chance (0.5) to solved."""
    torch.manual_seed(0)
    env = SyncVectorEnv([CueEnv] * 16, autoreset_mode=mode)
    model = ActorCritic(PRESETS["tiny"](), env.single_observation_space, env.single_action_space)
    config = ImaginationConfig(horizon=8, gamma=0.9, lr=3e-3, restart=False)
    trainer = ImaginationTrainer(env, model, config, seed=0)
    for _ in range(10):
        trainer.train_step()
    before = np.mean([ret for ret, _ in trainer.finished_episodes])
    for _ in range(80):  # solved after ~60 updates for seeds 0-6 in both modes
        metrics = trainer.train_step()
    after = np.mean([ret for ret, _ in trainer.finished_episodes[-100:]])
    assert before < 0.7
    assert after > 0.9, f"return went from {before:.2f} to {after:.2f}"
    assert metrics["policy/entropy"] < 0.5


def test_trainer_runs_on_crafter_vector_env():
    import envs  # noqa: F401

    env = gym.make_vec("worldsim/Crafter-v0", num_envs=2, vectorization_mode="sync",
                       max_episode_steps=3)
    model = tiny_model(env.single_observation_space, env.single_action_space)
    trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=5, restart=False), seed=0)
    metrics = trainer.train_step()
    assert all(np.isfinite(v) for v in metrics.values())
    r = trainer.collect()
    assert r.obs.shape == (5, 2, 64, 64, 3) and r.obs.dtype == torch.uint8
    assert len(trainer.finished_episodes) >= 2  # 3-step episodes end inside 10 steps
    env.close()


def test_trainer_rejects_mismatched_env():
    env = SyncVectorEnv([CueEnv])
    with pytest.raises(ValueError, match="observation space"):
        ImaginationTrainer(env, tiny_model(VECTOR, spaces.Discrete(2)), ImaginationConfig())
    env = SyncVectorEnv([CueEnv], autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match="autoreset"):
        ImaginationTrainer(env, tiny_model(CueEnv.observation_space, spaces.Discrete(2)),
                           ImaginationConfig())


def test_trainer_state_round_trip():
    env = SyncVectorEnv([CueEnv] * 2)
    model = tiny_model(CueEnv.observation_space, spaces.Discrete(2))
    trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=4), seed=0)
    trainer.train_step()
    tensors, meta = trainer.state_dict()
    json.dumps(meta)  # JSON-serialisable
    other = ImaginationTrainer(env, model, ImaginationConfig(horizon=4), seed=5)
    other.load_state_dict(tensors, meta)
    assert other.updates == 1 and other.env_steps == 8
    assert torch.equal(other.generator.get_state(), trainer.generator.get_state())
    a = other.optimizer.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(a, trainer.optimizer.state_dict()["state"][0]["exp_avg"])


# ---------------------------------------------------------------------- worldsim imagine
def run_cli(*args, timeout=240):
    env = {**os.environ, "WORLDSIM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "worldsim.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_imagine_cli_trains_saves_and_resumes(tmp_path, capsys):
    from agents import imagine

    common = ["--env", "CartPole-v1", "--num-envs", "2", "--preset", "tiny",
              "--training.horizon", "4", "--save-every", "2", "--log-every", "1",
              "--no-progress", "--out", str(tmp_path)]
    first = run_cli("imagine", *common, "--steps", "2")
    assert first.returncode == 0, first.stderr
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    assert config["training"]["updates"] == 2 and config["training"]["env_steps"] == 16
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())
    # running again resumes (in-process: a second interpreter start costs seconds)
    imagine.main([*common, "--steps", "3"])
    assert "resuming" in capsys.readouterr().out
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    assert config["training"]["updates"] == 3 and config["training"]["env_steps"] == 24
    agent = load_agent(tmp_path / "agent", spaces.Discrete(2))
    assert agent.act(np.zeros(4, np.float32)) in (0, 1)
    # another env in the same output directory is refused, naming both
    with pytest.raises(CheckpointError, match="CartPole-v1.*Acrobot-v1"):
        imagine.main([*common[:1], "Acrobot-v1", *common[2:], "--steps", "4"])


# ---------------------------------------------------------------------- in the dream
def test_trainer_in_the_dream_env_tensor_mode(tiny_bundle):
    """Latent observations, tensor actions, SAME_STEP autoresets with truncation."""
    import envs  # noqa: F401

    env = gym.make_vec("worldsim/Dream-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       checkpoint=str(tiny_bundle), obs_mode="latent", tensor_mode=True,
                       max_episode_steps=2)
    model = tiny_model(env.single_observation_space, env.single_action_space)
    trainer = ImaginationTrainer(env, model, ImaginationConfig(horizon=3), seed=0)
    r = trainer.collect()
    assert trainer._tensor_env and r.obs.shape == (3, 2, *env.single_observation_space.shape)
    assert r.ends[1].all() and r.first[2].all()  # truncated after 2 steps, restarted
    metrics = trainer.update(r)
    assert all(np.isfinite(v) for v in metrics.values())
    env.close()


def test_imagine_in_the_dream_then_score_in_the_real_game(tiny_bundle, tmp_path):
    from agents import imagine
    from agents.score import ScoreConfig, score_agent

    imagine.main(["--checkpoint", str(tiny_bundle), "--num-envs", "2", "--steps", "1",
                  "--preset", "tiny", "--training.horizon", "3", "--no-progress", "--bf16",
                  "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--bf16 and --reward-mode apply to the dream envs"):
        imagine.main(["--env", "worldsim/Crafter-v0", "--bf16", "--out", str(tmp_path / "x")])
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    assert config["training"]["env"] == "worldsim/Dream-v0"
    assert config["observation_space"]["shape"] == [64, 64, 3]
    result = score_agent(ScoreConfig(agent=str(tmp_path / "agent"), episodes=1,
                                     max_episode_steps=5, progress=False, device="cpu"))
    assert result.episodes[0].length == 5
