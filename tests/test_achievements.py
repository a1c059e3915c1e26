"""Achievements paid once per episode: labels recovered by replaying recorded Crafter play,
the reward model's unlock head, the once-per-episode payment and its place in bundles and
dream envs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldsim.data.achievements import (
    achievement_names,
    label_achievements,
    load_labels,
    unlocked_before,
)
from worldsim.data.store import EpisodeStore
from worldsim.models.reward_model import RewardModel, RewardModelConfig, event_shares, pay_once


def test_labels_match_the_recorded_rewards_and_resume(labelled):
    store = EpisodeStore(labelled)
    names = achievement_names(store)
    assert len(names) == 22 and "collect_wood" in names
    unlocks = 0
    for name in store.names:
        labels, rewards = load_labels(store, name), np.asarray(store.load(name).rewards)
        # Crafter pays +1 (give or take health's 0.1s) exactly where an achievement unlocks,
        # and each achievement unlocks at most once per episode.
        np.testing.assert_array_equal(labels.sum(1), np.round(rewards).clip(min=0))
        assert (labels.sum(0) <= 1).all()
        unlocks += int(labels.sum())
    assert unlocks > 0  # the seeded play does unlock some
    assert label_achievements(labelled, progress=False)["skipped"] == len(store)


def test_a_replay_that_departs_from_the_recording_names_the_episode(labelled, tmp_path):
    data = shutil.copytree(labelled, tmp_path / "data")
    store = EpisodeStore(data)
    name = store.names[0]
    meta_path = data / "episodes" / name / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["info"]["seed"] += 1  # another world
    meta_path.write_text(json.dumps(meta))
    (data / "labels" / "achievements" / f"{name}.npy").unlink()
    counts = label_achievements(data, progress=False)
    assert counts["failed"] == 1 and name in counts["failures"]
    assert "does not show the recorded first frame" in counts["failures"]


def test_pay_once_pays_each_achievement_once_in_expectation():
    p = torch.tensor([[0.1, 0.0, 1.0]])
    unlocked, total = None, torch.zeros(1)
    for _ in range(100):
        reward, unlocked = pay_once(p, unlocked)
        total += reward
    # a 10% chance per try pays 0.1, then 0.09, ...: 1 - 0.9^n in all, never more than 1
    torch.testing.assert_close(total, torch.tensor([1 - 0.9**100 + 1.0]))
    torch.testing.assert_close(unlocked, torch.tensor([[1 - 0.9**100, 0.0, 1.0]]))
    assert pay_once(p, unlocked)[0].item() == pytest.approx(0.9**100 * 0.1, rel=1e-2)


def test_pay_once_best_pays_only_the_rise_of_the_best_chance():
    """The "best" rule: repeating a press at the same probability pays once; a surer press
    later pays the difference; a sure unlock pays 1 in all; what a start context's episode
    took (unlocked 1) pays nothing."""
    unsure = torch.tensor([[0.12, 0.0, 0.3]])
    reward, unlocked = pay_once(unsure, None, "best")
    torch.testing.assert_close(reward, torch.tensor([0.42]))
    for _ in range(10):
        again, unlocked = pay_once(unsure, unlocked, "best")
        assert again.item() == 0.0
    surer, unlocked = pay_once(torch.tensor([[1.0, 0.0, 0.1]]), unlocked, "best")
    torch.testing.assert_close(surer, torch.tensor([0.88]))
    torch.testing.assert_close(unlocked, torch.tensor([[1.0, 0.0, 0.3]]))
    taken = torch.tensor([[1.0, 1.0, 1.0]])
    assert pay_once(torch.ones(1, 3), taken, "best")[0].item() == 0.0
    # the "expected" rule pays the same unsure press again and again
    paid = sum(pay_once(unsure[:, :1], u, "expected")[0].item()
               for u in (torch.tensor([[1 - 0.88**k]]) for k in range(10)))
    assert paid == pytest.approx(1 - 0.88**10, rel=1e-5)
    with pytest.raises(ValueError, match="best"):
        pay_once(unsure, None, "most")


def test_unlock_head_starts_and_stays_calibrated():
    # Unlocks the inputs say nothing about: the calibrated answer is the data's rate per
    # achievement, although half of every batch is events.
    n, g = 4000, torch.Generator().manual_seed(0)
    labels = torch.zeros(n, 2)
    labels[:, 0] = torch.rand(n, generator=g) < 0.02
    labels[:, 1] = torch.rand(n, generator=g) < 0.005
    rewards = torch.zeros(n)
    terminated = torch.zeros(n, dtype=torch.bool)
    event = labels.any(1)
    shares = event_shares(rewards, terminated, (-1.0, 0.0, 1.0), 0.5, event=event,
                          achievements=labels)
    model = RewardModel(RewardModelConfig(latent_size=(4, 4), width=16,
                                          reward_support=(-1.0, 0.0, 1.0),
                                          achievements=("a", "b"), **shares),
                        spaces.Discrete(3))
    z = torch.randn(512, 4, 4, 4, generator=g)
    actions = {"action": torch.zeros(512, dtype=torch.long)}
    with torch.no_grad():
        start = model.predict(z, actions, z).achievement_probs.mean(0)
    torch.testing.assert_close(start, labels.mean(0), atol=2e-3, rtol=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ev, plain = torch.nonzero(event)[:, 0], torch.nonzero(~event)[:, 0]
    for _ in range(100):
        pick = torch.where(torch.rand(64, generator=g) < 0.5,
                           ev[torch.randint(len(ev), (64,), generator=g)],
                           plain[torch.randint(len(plain), (64,), generator=g)])
        x = torch.randn(64, 4, 4, 4, generator=g)
        loss, metrics = model.loss(x, {"action": torch.zeros(64, dtype=torch.long)}, x,
                                   rewards[pick], terminated[pick], labels[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "achievement_loss" in metrics
    with torch.no_grad():
        after = model.predict(z, actions, z).achievement_probs.mean(0)
    torch.testing.assert_close(after, labels.mean(0), atol=6e-3, rtol=0.5)
    with pytest.raises(ValueError, match="needs achievement labels"):
        model.loss(z, actions, z, torch.zeros(512), torch.zeros(512, dtype=torch.bool))


def test_trained_unlock_head_in_a_bundle_pays_once_in_the_dream(tiny_bundle, labelled, tmp_path):
    import gymnasium as gym
    from tiny_bundle import make_pay_once_bundle

    import envs  # noqa: F401
    from worldsim.world_model import WorldModel, build_bundle

    root = tiny_bundle.parent.parent
    bundle, task, result = make_pay_once_bundle(tiny_bundle, labelled, tmp_path)
    reward_dir = tmp_path / "run-reward"
    # The reward head learns the rest of the reward: Crafter's health changes, no +1.
    assert max(task.model_config.reward_support) < 0.5
    assert "recorded_reward_recall" in result.metrics
    wm = WorldModel.load(bundle)
    assert len(wm.achievements) == 22 and wm.start_unlocked.shape == (6, 22)
    # Contexts starting at an episode's first frame have unlocked nothing yet; the others
    # carry what their episode unlocked before them.
    assert not wm.start_unlocked[::2].any()
    store = EpisodeStore(labelled)
    assert all(not unlocked_before(load_labels(store, n), 0).any() for n in store.names)

    env = gym.make("worldsim/Dream-v0", checkpoint=str(bundle), obs_mode="latent")
    env.reset(seed=0)
    sim = env.unwrapped._sim
    assert sim.state.unlocked.shape == (1, 22)
    snapshot = env.unwrapped.get_state()
    rewards = [env.step(5)[1] for _ in range(4)]  # `do`, again and again
    unlocked = sim.state.unlocked.clone()
    assert (unlocked >= 0).all() and (unlocked <= 1).all() and unlocked.sum() > 0
    env.unwrapped.set_state(snapshot)
    assert [env.step(5)[1] for _ in range(4)] == rewards  # the unlocked state is restored
    with pytest.raises(ValueError, match="expected"):
        wm.start(wm.encode(wm.start_frames[:1]), {k: v[:1] for k, v in wm.start_actions.items()},
                 unlocked=np.zeros((1, 3)))

    # The same parts bundled to pay by the "best" rule: the bundle records it, and the dream
    # pays `do` again and again at most what the first press paid, with the same frames.
    best = build_bundle(tmp_path / "bundle-best", vae_checkpoint=root / "run-vae",
                        dynamics_checkpoint=tiny_bundle / "dynamics", data=labelled,
                        num_contexts=6, context_frames=2, reward_checkpoint=reward_dir,
                        pay_once="best")
    assert WorldModel.load(best).pay_once == "best" and wm.pay_once == "expected"
    env_best = gym.make("worldsim/Dream-v0", checkpoint=str(best), obs_mode="latent")
    env_best.reset(seed=0)
    paid = [env_best.step(5)[1] for _ in range(4)]
    assert sum(paid) <= sum(rewards) + 1e-6

    # reward_mode="achievements" pays the rise of the ledger and nothing else: the same
    # frames as "mean" for the same seed, minus the health part.
    vec = {mode: gym.make_vec("worldsim/Dream-v0", num_envs=3, checkpoint=str(bundle),
                              obs_mode="latent", reward_mode=mode,
                              vectorization_mode="vector_entry_point")
           for mode in ("mean", "achievements")}
    for v in vec.values():
        v.reset(seed=1)
    assert vec["achievements"].unwrapped.unlocked.shape == (3, 22)
    for _ in range(3):
        before = vec["achievements"].unwrapped.unlocked.clone()
        obs, paid, *_ = vec["achievements"].step(np.full(3, 5))
        mean_obs, mean_paid, *_ = vec["mean"].step(np.full(3, 5))
        rise = (vec["achievements"].unwrapped.unlocked - before).sum(-1)
        np.testing.assert_allclose(paid, rise.numpy(), atol=1e-5)
        np.testing.assert_array_equal(obs, mean_obs)
        assert np.abs(mean_paid - paid).max() < 1.0  # the rest: health tenths, not unlocks
    with pytest.raises(ValueError, match="reward_mode='achievements' needs a reward model"):
        gym.make("worldsim/Dream-v0", checkpoint=str(tiny_bundle), reward_mode="achievements")
    with pytest.raises(ValueError, match="pays achievements once"):
        build_bundle(tmp_path / "bad", vae_checkpoint=root / "run-vae",
                     dynamics_checkpoint=tiny_bundle / "dynamics", data=labelled,
                     num_contexts=2, context_frames=2, pay_once="best")
