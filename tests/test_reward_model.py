"""The companion reward and termination model: oversampling with calibrated logits, learning a
visible event, training on a real latent cache and its place in a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldsim.models.reward_model import RewardModel, RewardModelConfig, event_shares
from worldsim.world_model import CheckpointError

ACTIONS = spaces.Discrete(3)
SUPPORT = (-1.0, 0.0, 1.0)


def _oversampled_training(model: RewardModel, draw, rewards: torch.Tensor,
                          terminated: torch.Tensor, event_share: float, steps: int,
                          batch: int = 64) -> None:
    """Train on batches in which a share `event_share` comes from the event transitions;
    draw(index) -> (previous, actions, latents)."""
    g = torch.Generator().manual_seed(0)
    event = torch.nonzero((rewards != 0) | terminated)[:, 0]
    plain = torch.nonzero((rewards == 0) & ~terminated)[:, 0]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        from_events = torch.rand(batch, generator=g) < event_share
        index = torch.where(from_events, event[torch.randint(len(event), (batch,), generator=g)],
                            plain[torch.randint(len(plain), (batch,), generator=g)])
        loss, _ = model.loss(*draw(index), rewards[index], terminated[index])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_oversampled_training_stays_calibrated_to_the_data():
    # Events that the inputs say nothing about: the best calibrated answer is the data's rate,
    # which the model must recover although half of every batch is events.
    n = 4000
    g = torch.Generator().manual_seed(1)
    rewards = torch.where(torch.rand(n, generator=g) < 0.03, 1.0, 0.0)
    terminated = torch.rand(n, generator=g) < 0.01
    shares = event_shares(rewards, terminated, SUPPORT, event_share=0.5)
    assert shares["termination_rate"] == pytest.approx(terminated.float().mean().item())
    assert shares["termination_rate_train"] > 10 * shares["termination_rate"]
    model = RewardModel(RewardModelConfig(latent_size=(4, 4), width=16, reward_support=SUPPORT,
                                          **shares), ACTIONS)

    def noise(index):
        z = torch.randn(len(index), 4, 4, 4, generator=g)
        return (z, {"action": torch.zeros(len(index), dtype=torch.long)},
                z + 0.1 * torch.randn(z.shape, generator=g))

    _oversampled_training(model, noise, rewards, terminated, 0.5, steps=150)
    with torch.no_grad():
        reward, probs, term, *_ = model.predict(*noise(torch.arange(512)))
    assert term.mean().item() == pytest.approx(0.01, abs=0.01)
    assert reward.mean().item() == pytest.approx(0.03, abs=0.02)
    assert probs.shape == (512, 3) and torch.allclose(probs.sum(-1), torch.ones(512))


def test_learns_an_event_it_can_see():
    # +1 when the bottom-right cell of channel 0 lights up (an inventory slot filling).
    n = 3000
    g = torch.Generator().manual_seed(2)
    previous = torch.randn(n, 4, 8, 8, generator=g) * 0.3
    latents = previous + 0.05 * torch.randn(n, 4, 8, 8, generator=g)
    event = torch.rand(n, generator=g) < 0.05
    latents[event, 0, -2:, -2:] += 2.0
    rewards = event.float()
    terminated = torch.zeros(n, dtype=torch.bool)
    model = RewardModel(RewardModelConfig(latent_size=(8, 8), width=16, reward_support=(0.0, 1.0),
                                          **event_shares(rewards, terminated, (0.0, 1.0), 0.5)),
                        ACTIONS)
    actions = torch.randint(0, 3, (n,), generator=g)

    def draw(index):
        return previous[index], {"action": actions[index]}, latents[index]

    _oversampled_training(model, draw, rewards, terminated, 0.5, steps=200)
    with torch.no_grad():
        reward, *_ = model.predict(*draw(torch.arange(n)), reward_mode="mode")
    predicted = reward > 0
    recall = (predicted & event).sum() / event.sum()
    precision = (predicted & event).sum() / predicted.sum().clamp_min(1)
    assert recall > 0.9 and precision > 0.9, (recall, precision)


def test_from_frame_and_action_learns_what_an_action_earns_where():
    # Without frame t + 1: +1 for action 2 where channel 1's top-left cell is lit (facing a
    # tree), never elsewhere; the model must learn the pair, not the action alone.
    n = 3000
    g = torch.Generator().manual_seed(3)
    previous = torch.randn(n, 4, 8, 8, generator=g) * 0.3
    facing = torch.rand(n, generator=g) < 0.3
    previous[facing, 1, :2, :2] += 2.0
    actions = torch.randint(0, 3, (n,), generator=g)
    rewards = (facing & (actions == 2)).float()
    terminated = torch.zeros(n, dtype=torch.bool)
    config = RewardModelConfig(latent_size=(8, 8), width=16, reward_support=(0.0, 1.0),
                               action_input=True, next_frame_input=False,
                               **event_shares(rewards, terminated, (0.0, 1.0), 0.5))
    model = RewardModel(config, ACTIONS)

    def draw(index):
        # frame t + 1 is noise: the model must not read it
        return (previous[index], {"action": actions[index]},
                torch.randn(len(index), 4, 8, 8, generator=g))

    _oversampled_training(model, draw, rewards, terminated, 0.5, steps=200)
    with torch.no_grad():
        reward, *_ = model.predict(*draw(torch.arange(n)))
        again, *_ = model.predict(*draw(torch.arange(n)))
    torch.testing.assert_close(reward, again)  # frame t + 1 is ignored
    earning = facing & (actions == 2)
    assert reward[earning].mean() > 0.8 and reward[~earning].mean() < 0.05
    assert reward[~facing & (actions == 2)].mean() < 0.05
    with pytest.raises(ValueError, match="frame t \\+ 1 or the action"):
        RewardModel(RewardModelConfig(latent_size=(8, 8), next_frame_input=False), ACTIONS)


def test_wrong_input_shapes_are_named():
    model = RewardModel(RewardModelConfig(latent_size=(4, 4), width=8), ACTIONS)
    with pytest.raises(ValueError, match=r"two latents of shape \(B, 4, 4, 4\)"):
        model(torch.zeros(2, 4, 8, 8), {"action": torch.zeros(2, dtype=torch.long)},
              torch.zeros(2, 4, 8, 8))


def test_train_reward_then_bundle_uses_it(tiny_bundle, tmp_path):
    from tiny_bundle import tiny_train

    from worldsim.models.reward_model import load_reward_model
    from worldsim.training.loop import setup, train
    from worldsim.training.train_reward import RewardTask, TrainRewardConfig
    from worldsim.world_model import WorldModel, build_bundle
    from worldsim.world_model import main as bundle_main

    root = tiny_bundle.parent.parent  # root/run-dyn/bundle
    cfg = TrainRewardConfig(data=root / "data", vae=tiny_bundle, out=tmp_path / "run-reward",
                            dynamics=tiny_bundle, context=2, width=16, eval_plain=32,
                            predicted_share=0.5, action_input=True,
                            train=tiny_train(12, 8))
    ctx = setup(cfg.train)
    task = RewardTask(cfg, ctx.device)
    result = train(task, cfg.train, cfg.out, ctx)
    assert {"recorded_reward_recall", "sampled_reward_recall"} <= set(result.metrics)
    # every event transition of the training split is in the pool of sampled next frames
    assert len(task._pool["events"]) == len(task.train_events)

    # `worldsim bundle` assembles the parts; the dynamics' recorded metrics come along
    bundle_main(["--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
                 "--data", str(root / "data"), "--reward", str(cfg.out), "--num-contexts", "2",
                 "--context-frames", "2", "--sample-steps", "2", "--out", str(tmp_path / "bundle")])
    wm = WorldModel.load(tmp_path / "bundle")
    assert wm.num_steps == 2 and "val_loss" in wm.config["metrics"]
    assert wm.reward_model is not None
    assert wm.reward_support.tolist() == pytest.approx(list(task.model_config.reward_support))
    reward_model, _ = load_reward_model(cfg.out)
    latents = wm.encode(wm.start_frames[:2])
    state = wm.start(latents, {k: v[:2] for k, v in wm.start_actions.items()})
    previous = state.last_latents.clone()
    actions = {"action": np.array([1, 5])}
    out = wm.step(state, actions, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, probs, term, *_ = reward_model.predict(previous, {"action": torch.tensor([1, 5])},
                                                     out.latents)
    torch.testing.assert_close(out.reward, expected)
    torch.testing.assert_close(out.termination_prob, term)
    torch.testing.assert_close(out.reward_probs, probs)

    # the evaluation reads rewards from sampled frames and, separately, from recorded ones
    from worldsim.evaluation import report

    report.main(["--checkpoint", str(tmp_path / "bundle"), "--data", str(root / "data"),
                 "--parts", "reward", "--quick", "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["reward"]
    assert {"reward_nonzero", "reward_model_on_recorded_frames", "expected_reward_plain"} <= set(metrics)
    assert "recorded frame t+1" in (tmp_path / "eval" / "report.md").read_text()

    # a reward model for another game does not go into this bundle
    other = RewardModel(RewardModelConfig(latent_size=(16, 16), width=8), spaces.Discrete(4))
    from worldsim.spaces import space_to_json
    from worldsim.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other", {"kind": "reward", "reward_model": other.config.to_dict(),
                                         "action_space": space_to_json(other.action_space)},
                    {"model": other.state_dict()})
    with pytest.raises(CheckpointError, match="another action space"):
        build_bundle(tmp_path / "bundle2", vae_checkpoint=root / "run-vae",
                     dynamics_checkpoint=tiny_bundle / "dynamics", data=root / "data",
                     num_contexts=2, context_frames=2, reward_checkpoint=tmp_path / "other")


def test_by_default_the_reward_is_read_off_the_frames_alone():
    # an action shortcut is what an agent in imagination farmed; by default there is none
    model = RewardModel(RewardModelConfig(latent_size=(4, 4), width=8), ACTIONS)
    nn_init = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.1, generator=nn_init)
    z0, z1 = torch.randn(2, 3, 4, 4, 4, generator=nn_init)
    a = model(z0, {"action": torch.tensor([0, 1, 2])}, z1)
    b = model(z0, {"action": torch.tensor([2, 2, 0])}, z1)
    torch.testing.assert_close(a, b)
    with_actions = RewardModel(RewardModelConfig(latent_size=(4, 4), width=8, action_input=True),
                               ACTIONS)
    assert any("action_encoder" in name for name, _ in with_actions.named_parameters())


def test_configs_from_before_action_input_load_as_trained():
    from worldsim.training.checkpoint import dataclass_from_dict

    def config_from_dict(data):
        return dataclass_from_dict(RewardModelConfig, data, "reward model config")

    data = RewardModelConfig(latent_size=(4, 4), width=8, action_input=True).to_dict()
    del data["action_input"]  # written before the option existed, when the action was read
    assert config_from_dict(data).action_input is True
    del data["next_frame_input"]  # and before frame t + 1 became optional, when it was read
    assert config_from_dict(data).next_frame_input is True
    data["colour"] = 1
    with pytest.raises(CheckpointError, match="unknown field"):
        config_from_dict(data)
