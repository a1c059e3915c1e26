"""`worldsim loop` end to end at seconds scale: real Crafter collection (sticky, then the
agent), a VAE, a dynamics model fine-tuned from one iteration to the next, an agent trained in
the dream, and real-game scoring; then a larger budget resumes with one more iteration."""

import json

import numpy as np

from agents.loop import run_loop, tiny_loop_config
from worldsim.data.policies import make_policy
from worldsim.data.store import EpisodeStore
from worldsim.training.checkpoint import read_config
from worldsim.training.loop import checkpoint_dirs


def test_loop_runs_resumes_and_extends(tmp_path):
    cfg = tiny_loop_config(tmp_path / "loop", budget=240, collect_steps=120)
    history = run_loop(cfg)
    assert [row["iteration"] for row in history] == [0, 1]
    assert [row["real_steps"] for row in history] == [120, 240]
    assert [row["policy"] for row in history] == ["sticky", "agent"]
    assert all(row["score"] is not None and np.isfinite(row["return_mean"]) for row in history)
    store = EpisodeStore(cfg.out / "data")
    assert sum(store.length(n) for n in store.names) == 240
    # iteration 1 fine-tuned iteration 0's dynamics model
    second = read_config(checkpoint_dirs(cfg.out / "dynamics-001")[-1])
    assert second["task"]["init_from"] == str(cfg.out / "dynamics-000")
    assert (cfg.out / "score-001" / "score.json").exists()
    agent = read_config(cfg.out / "agent" / "agent")
    assert agent["training"]["updates"] == 2 * cfg.agent_updates

    # running again does nothing; a larger budget adds exactly one iteration
    before = json.loads((cfg.out / "loop.json").read_text())
    assert run_loop(cfg) == before["history"]
    history = run_loop(tiny_loop_config(cfg.out, budget=300, collect_steps=120))
    assert [row["real_steps"] for row in history] == [120, 240, 300]
    assert (cfg.out / "dynamics-002" / "bundle").is_dir()


def test_agent_policy_acts_for_a_batch(tmp_path):
    """The collect policy wrapping a saved agent: one valid action per env, reproducible from
    the collector's generator, and a wrong action space is named."""
    import pytest
    import torch
    from gymnasium import spaces

    from agents.actor_critic import PRESETS, ActorCritic, save_agent
    from worldsim.training.checkpoint import CheckpointError

    obs_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    torch.manual_seed(0)
    path = save_agent(tmp_path / "agent", ActorCritic(PRESETS["tiny"](), obs_space,
                                                      spaces.Discrete(17)))
    obs = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    runs = []
    for _ in range(2):
        policy = make_policy(f"agents.policy:AgentPolicy={path}", spaces.Discrete(17), 3)
        policy.reset(np.ones(3, bool))
        rng = np.random.default_rng(5)
        runs.append([policy.act(obs, rng) for _ in range(4)])
    assert runs[0] == runs[1]
    assert all(isinstance(a, int) and 0 <= a < 17 for step in runs[0] for a in step)
    with pytest.raises(CheckpointError, match="acts in Discrete"):
        make_policy(f"agents.policy:AgentPolicy={path}", spaces.Discrete(5), 3)
    with pytest.raises(ValueError, match="needs the agent's path"):
        make_policy("agents.policy:AgentPolicy", spaces.Discrete(17), 3)


def test_loop_pays_the_agent_for_achievements(tmp_path):
    """`reward="achievements"`: the collected episodes are labelled, a pay-once reward model
    is trained on them and bundled, and the agent trains on its achievements reward."""
    from worldsim.data.achievements import has_labels
    from worldsim.training.loop import TrainConfig

    quick = TrainConfig(steps=5, batch_size=4, eval_every=0, checkpoint_every_min=0,
                        progress=False, bf16=False, threads=1)
    cfg = tiny_loop_config(tmp_path / "loop", budget=120, collect_steps=120,
                           reward="achievements", reward_train=quick)
    history = run_loop(cfg)
    store = EpisodeStore(cfg.out / "data")
    assert all(has_labels(store, name) for name in store.names)
    assert history[0]["labels"]["labelled"] == len(store.names)
    model = read_config(checkpoint_dirs(cfg.out / "reward-000")[-1])["reward_model"]
    assert model["action_input"] and not model["next_frame_input"]
    assert "collect_wood" in model["achievements"]
    assert (cfg.out / "dynamics-000" / "bundle" / "reward").is_dir()
    agent = read_config(cfg.out / "agent" / "agent")
    assert agent["training"]["config"]["reward_mode"] == "achievements"
