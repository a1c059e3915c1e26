"""`worldsim eval`: each measure on the tiny bundle with tiny settings, the stratified reward
statistics on a hand-made case, and the command end to end through a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import worldsim
from worldsim.data.store import Episode, EpisodeStore
from worldsim.evaluation import fidelity
from worldsim.evaluation.fidelity import (
    MOVING_CHANGE,
    SCROLL_EXPLAINED,
    PlayerTile,
    StabilityRun,
    TeacherForcedRun,
    all_transitions,
    consistency,
    consistency_metrics,
    frame_statistics,
    grey_levels,
    load_episodes,
    open_loop,
    open_loop_metrics,
    pair_metrics,
    reward_termination_metrics,
    reward_termination_picks,
    round_trip,
    shift_explained_share,
    spread,
    stability,
    stability_metrics,
    stability_reference,
    summary,
    teacher_forced,
    teacher_forced_metrics,
)
from worldsim.evaluation.metrics import frame_metrics


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    wm = worldsim.load(tiny_bundle, device="cpu")
    store = EpisodeStore(tiny_bundle.parent.parent / "data")
    episodes = load_episodes(store, store.split("val"))
    return wm, store, episodes


@pytest.fixture(scope="module")
def crafter_actions():
    import crafter.constants

    return list(crafter.constants.actions)


def test_pair_metrics_in_chunks_match_frame_metrics(monkeypatch):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    fake = real.copy()
    fake[3:] = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    monkeypatch.setattr(fidelity, "METRIC_CHUNK", 3)
    m = pair_metrics(real, fake)
    direct = frame_metrics(real, fake)
    np.testing.assert_allclose(m["psnr"], direct["psnr"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(m["ssim"], direct["ssim"].numpy(), rtol=1e-6)
    assert (m["mse"][:3] == 0).all() and (m["mse"][3:] > 0).all()
    s = summary(m)
    assert s["frames"] == 7 and s["psnr"] == pytest.approx(m["psnr"].mean(), rel=1e-6)
    # the PSNR of the mean MSE is not dominated by the identical (100 dB) frames
    assert s["psnr_of_mean_mse"] < s["psnr"] - 10


def test_teacher_forced_references_and_reproducibility(tiny):
    wm, _, episodes = tiny
    rows = all_transitions(episodes)
    picks = rows[spread(len(rows), 5)]
    assert picks[0, 1] == 0  # an episode's first transition: the context is shortened
    K = wm.window - 1
    counter = {"action": (np.array([episodes[e].actions["action"][t] for e, t in picks]) + 1)
               % wm.action_space.n}
    run = teacher_forced(wm, episodes, picks, context=K, num_steps=(1, 2),
                         counterfactual_actions=counter, batch_size=2, seed=3)
    e, t = picks[2]
    np.testing.assert_array_equal(run.current[2], episodes[e].frames[t])
    np.testing.assert_array_equal(run.target[2], episodes[e].frames[t + 1])
    np.testing.assert_array_equal(run.target_vae, round_trip(wm, run.target))
    assert set(run.dream) == {1, 2, run.heads_steps}
    assert run.counterfactual.shape == run.target.shape
    assert ((run.termination_prob >= 0) & (run.termination_prob <= 1)).all()
    assert set(np.unique(run.reward_mode)) <= set(wm.reward_support.tolist())

    again = teacher_forced(wm, episodes, picks, context=K, num_steps=(1, 2), batch_size=2,
                           seed=3)
    for n in run.dream:
        np.testing.assert_array_equal(again.dream[n], run.dream[n])
    other = teacher_forced(wm, episodes, picks, context=K, num_steps=(1,), batch_size=2, seed=4)
    assert not np.array_equal(other.dream[1], run.dream[1])

    m = teacher_forced_metrics(run)
    assert set(m["num_steps"]) == {"1", "2", str(run.heads_steps)}
    copy = frame_metrics(run.target, run.current)["psnr"].numpy()
    assert m["copy_last"]["all"]["psnr"] == pytest.approx(copy.mean(), rel=1e-5)
    gap = m["num_steps"]["1"]["all"]
    assert gap["psnr_gap_vs_copy_last_db"] == pytest.approx(
        gap["psnr"] - m["copy_last"]["all"]["psnr"])


def test_open_loop_skips_long_horizons(tiny):
    wm, _, episodes = tiny
    K = wm.window - 1
    run = open_loop(wm, episodes, context=K, horizons=(1, 3, 10**6), rollouts=2, seed=1)
    assert run.horizons == [1, 3] and run.skipped_horizons == [10**6]
    assert run.real.shape[:2] == (2, 3) and run.dream.shape == run.real.shape
    e, s = run.starts[1]
    np.testing.assert_array_equal(run.real[1], episodes[e].frames[s + K:s + K + 3])
    np.testing.assert_array_equal(run.last_context[1], episodes[e].frames[s + K - 1])
    m = open_loop_metrics(run)
    copy_h3 = frame_metrics(run.real[:, 2], run.last_context)["psnr"].numpy().mean()
    assert m["horizons"]["3"]["copy_last"]["psnr"] == pytest.approx(copy_h3, rel=1e-5)
    assert len(m["curve"]["dream_psnr"]) == 3
    assert open_loop(wm, episodes, context=K, horizons=(10**6,), rollouts=1) is None


def _episode(rewards: list[float], terminated_last: bool = False) -> Episode:
    T = len(rewards)
    terminated = np.zeros(T, bool)
    terminated[-1] = terminated_last
    return Episode(frames=np.zeros((T + 1, 4, 4, 3), np.uint8),
                   actions={"action": np.zeros(T, np.int64)},
                   rewards=np.array(rewards, np.float32), terminated=terminated,
                   truncated=np.zeros(T, bool))


def test_reward_precision_counts_false_alarms_of_all_negatives():
    # 40 transitions: 3 rewarded (+1, +0.1, -0.1), one terminal, 36 plain negatives
    episodes = [_episode([0] * 10 + [1.0] + [0] * 9),
                _episode([0.1] + [0] * 8 + [-0.1] + [0] * 9 + [0], terminated_last=True)]
    picks = reward_termination_picks(episodes, negatives=9, rng=np.random.default_rng(0))
    assert picks.weights.sum() == pytest.approx(40)
    assert (~picks.sampled).sum() == 4 and picks.sampled.sum() == 9
    n = len(picks.picks)
    rewards = np.array([episodes[e].rewards[t] for e, t in picks.picks], np.float32)
    terminated = np.array([episodes[e].terminated[t] for e, t in picks.picks])

    def run_with(reward_mode, termination_prob):
        zeros = np.zeros((n, 4, 4, 3), np.uint8)
        return TeacherForcedRun(
            picks=picks.picks, context=1, current=zeros, target=zeros, current_vae=zeros,
            target_vae=zeros, current_shown=zeros, dream={4: zeros}, dream_decoded=zeros,
            actions={"action": np.zeros(n, np.int64)},
            rewards=rewards, terminated=terminated, heads_steps=4,
            reward_mode=np.asarray(reward_mode, np.float32), reward_mean=np.zeros(n, np.float32),
            termination_prob=np.asarray(termination_prob, np.float32))

    # a head that calls every transition rewarded: recall 1, precision 3 / 40 (not 3 / 13)
    m = reward_termination_metrics(run_with(np.ones(n), np.ones(n)), picks)
    assert m["reward_nonzero"]["recall"] == 1.0
    assert m["reward_nonzero"]["precision"] == pytest.approx(3 / 40)
    assert m["termination"]["precision"] == pytest.approx(1 / 40)
    # a perfect head
    m = reward_termination_metrics(run_with(rewards, terminated.astype(float)), picks)
    for key in ("reward_nonzero", "reward_positive", "reward_negative", "termination"):
        assert m[key]["precision"] == 1.0 and m[key]["recall"] == 1.0, key
    assert m["reward_positive"]["positives"] == 2 and m["reward_negative"]["positives"] == 1


def test_consistency_replays_the_real_game(tiny, crafter_actions):
    wm, store, episodes = tiny
    run = consistency(wm, store, episodes, context=wm.window - 1, ks=(1, 2), starts=2,
                      action_names=crafter_actions, seed=0)
    assert run.replay_note == "real game replayed from each episode's seed"
    assert run.real_valid[1].all()
    assert run.dream_return[2].shape == run.start.shape == run.forget_return[2].shape
    assert [w[0] for w in run.walks] == ["move_left", "move_right"]
    e, t = run.starts[0]
    np.testing.assert_array_equal(run.start[0], episodes[e].frames[t])
    m = consistency_metrics(run)
    assert set(m["k"]) == {"1", "2"} and m["k"]["2"]["real_games"] == 2
    assert m["k"]["1"]["dream_minus_forget_psnr_db"] == pytest.approx(
        m["k"]["1"]["dream_vs_start"]["psnr_of_mean_mse"]
        - m["k"]["1"]["forget_vs_start"]["psnr_of_mean_mse"])
    # without move actions there is nothing to walk
    assert isinstance(consistency(wm, store, episodes, context=2, ks=(1,), starts=1,
                                  action_names=None), str)


def test_stability_statistics_flag_collapsed_frames(tiny, crafter_actions):
    wm, _, episodes = tiny
    reference = stability_reference(episodes, seed=0)
    rows = all_transitions(episodes)
    real = np.stack([episodes[e].frames[t + 1] for e, t in rows])
    prev = np.stack([episodes[e].frames[t] for e, t in rows])
    stats = frame_statistics(real, prev, reference.histogram)
    assert reference.inside("colour_distance", stats["colour_distance"]).mean() > 0.9
    grey = np.full((4, *real.shape[1:]), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (4, *real.shape[1:]), dtype=np.uint8)
    assert not reference.inside("colour_distance",
                                frame_statistics(grey, None, reference.histogram)
                                ["colour_distance"]).any()
    assert not reference.inside("sharpness", frame_statistics(noise, None, reference.histogram)
                                ["sharpness"]).any()

    run = stability(wm, stability_reference(episodes, wm), steps=4, rollouts=2, every=2,
                    action_names=crafter_actions, seed=0)
    assert run.values["sharpness"].shape == (2, 4)
    assert run.snapshots.shape[:2] == (2, 3) and run.snapshot_steps == [0, 2, 4]
    m = stability_metrics(run, reference, window=2)
    assert len(m["in_distribution"]["dream_share_per_window"]) == 2
    assert 0 <= m["in_distribution"]["dream_share"] <= 1
    assert len(m["moving"]["dream_share_per_window"]) == 2

    # from given real contexts (as examples/day_night.py starts at known game steps)
    K = wm.context_frames
    e = episodes[0]  # two contexts: game steps 0..K-1 and 1..K
    frames = np.stack([e.frames[t:t + K] for t in (0, 1)])
    actions = {k: np.stack([e.actions[k][t:t + K - 1] for t in (0, 1)]) for k in e.actions}
    run = stability(wm, reference, steps=2, every=2, seed=0,  # 2 rollouts, from `start`
                    action_names=crafter_actions, start=(frames, actions))
    np.testing.assert_array_equal(run.snapshots[:, 0], frames[:, -1])
    grey = grey_levels(run.snapshots[:, 1]).mean(axis=(1, 2))
    np.testing.assert_allclose(run.values["grey"][:, 1], grey, rtol=1e-5)
    with pytest.raises(ValueError, match="2 start contexts for 3 rollouts"):
        stability(wm, reference, steps=2, rollouts=3, every=2, start=(frames, actions))


def test_a_frozen_dream_is_in_range_but_does_not_move(tiny):
    _, _, episodes = tiny
    reference = stability_reference(episodes, seed=0)
    frame = episodes[0].frames[1]
    # a dream that repeats a real frame: every frame in range, no step moves
    frozen = StabilityRun(values={name: np.repeat(v[None], 6, axis=1)
                                  for name, v in frame_statistics(
                                      frame[None], frame[None], reference.histogram).items()},
                          snapshots=np.zeros((1, 1, *frame.shape), np.uint8),
                          snapshot_steps=[0], steps=6)
    m = stability_metrics(frozen, reference, window=3)
    assert m["moving"]["dream_share"] == 0 and m["moving"]["dream_share_per_window"] == [0, 0]
    # the same steps, every one changing by a scroll's worth: all moving
    frozen.values["change"][:] = 10 * MOVING_CHANGE
    assert stability_metrics(frozen, reference, window=3)["moving"]["dream_share"] == 1
    # the real steps of the tiny episodes include moves and stills alike
    assert 0 < m["moving"]["real_share"] < 1


def test_the_player_tile_finds_crafters_player():
    from worldsim.data.collect import make_env

    env = make_env("worldsim/Crafter-v0", size=64)
    obs, _ = env.reset(seed=0)
    frames = [obs]
    rng = np.random.default_rng(0)
    for _ in range(80):
        obs, _, terminated, truncated, _ = env.step(int(rng.choice([1, 2, 3, 4, 5])))
        frames.append(obs)
        if terminated or truncated:
            obs, _ = env.reset(seed=1)
    env.close()
    frames = np.stack(frames)
    tile = PlayerTile.crafter(frames[:60])
    unit = 64 // 9
    assert (tile.rows, tile.cols) == (slice(3 * unit, 4 * unit), slice(4 * unit, 5 * unit))
    assert tile.visible(frames[60:]).mean() > 0.9  # frames the bank did not see
    # the player's tile painted over with the tile to its left: no player
    gone = frames[60:].copy()
    gone[:, tile.rows, tile.cols] = gone[:, tile.rows, 3 * unit:4 * unit]
    assert tile.visible(gone).mean() < 0.1


def test_a_shifted_frame_scrolls_and_churn_does_not():
    rng = np.random.default_rng(0)
    # pixel-art frames: 8x8 flat tiles of random grey levels
    tiles = rng.integers(0, 256, (4, 9, 9)).astype(np.float32)
    grey = np.repeat(np.repeat(tiles, 8, axis=1), 8, axis=2)[:, :64, :64]  # (4, 64, 64)
    scrolled = np.roll(grey, 7, axis=2)  # the view moved by 7 pixels to the right
    # all but the 7 columns that came into view (50 of 57)
    assert (shift_explained_share(scrolled[:, :, 7:], grey[:, :, 7:]) > 0.8).all()
    assert (shift_explained_share(np.roll(grey, -5, axis=1), grey) > 0.8).all()
    churned = grey.copy()  # the same tiles, half of them redrawn in place
    churned[:, :32] = rng.integers(0, 256, (4, 32, 64))
    assert (shift_explained_share(churned, grey) < SCROLL_EXPLAINED).all()
    assert (shift_explained_share(grey, grey) == 0).all()  # nothing changed


def test_eval_cli_writes_metrics_and_report(tiny_bundle, tmp_path):
    out = tmp_path / "eval"
    data = tiny_bundle.parent.parent / "data"
    cmd = [sys.executable, "-m", "worldsim.cli", "eval", "--checkpoint", str(tiny_bundle),
           "--data", str(data), "--out", str(out), "--quick", "--tf-transitions", "3",
           "--tf-steps", "1", "--rollouts", "1", "--horizons", "1", "2", "--reward-negatives", "2",
           "--vae-frames", "4", "--idm-steps", "2", "--idm-batch-size", "4",
           "--idm-real-transitions", "8", "--idm-cache", str(tmp_path / "idm"),
           "--consistency-ks", "1", "--consistency-starts", "1", "--stability-steps", "3",
           "--stability-rollouts", "1", "--threads", "1", "--sampling-steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for part in ("teacher_forced", "open_loop", "controllability", "stability"):
        assert f"[eval] {part}:" in proc.stdout  # each part's timing is printed
    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("vae", "teacher_forced", "open_loop", "reward", "controllability",
                 "consistency", "stability", "timing_s"):
        assert part in metrics, part
    assert metrics["open_loop"]["horizons"]["2"]["copy_last"]["psnr"] is not None
    assert metrics["controllability"]["paired"]["dream"]["count"] == 3
    # The tiny bundle re-encodes, so open loop and stability also run without it.
    assert set(metrics["open_loop"]["without_reencoding"]) == {"1", "2"}
    assert 0 <= metrics["stability"]["without_reencoding"]["dream_share"] <= 1
    report = (out / "report.md").read_text()
    assert "without re-encoding" in report
    assert "## Summary" in report and "copy-last" in report
    # --sampling-steps overrides the bundle's sampler for every dream, and the report says so
    assert metrics["default_sampler_steps"] == 3
    assert "samples with 3 Euler steps" in report and "--sampling-steps 3" in report
    for name in metrics["figures"]:
        assert (out / name).stat().st_size > 0, name
    assert (out / "open_loop.png").exists() and (out / "dream_vs_real.gif").exists()



def test_eval_cli_names_a_bad_checkpoint(tmp_path):
    from worldsim.evaluation.report import main

    with pytest.raises(SystemExit, match="missing.*not a worldsim checkpoint bundle"):
        main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "eval")])


def test_eval_refuses_data_of_another_action_space(tiny_bundle, tmp_path):
    from gymnasium import spaces

    from worldsim.evaluation.report import EvalConfig, Evaluation

    EpisodeStore.create(tmp_path / "other", env_id="test/Other-v0",
                        observation_space=spaces.Box(0, 255, (64, 64, 3), np.uint8),
                        action_space=spaces.Discrete(3))
    with pytest.raises(ValueError, match="action space"):
        Evaluation(EvalConfig(checkpoint=tiny_bundle, data=tmp_path / "other",
                              out=tmp_path / "eval"), log=lambda s: None)
    with pytest.raises(ValueError, match="--sampling-steps must be at least 1, got 0"):
        Evaluation(EvalConfig(checkpoint=tiny_bundle, data=tmp_path / "other",
                              out=tmp_path / "eval", sampling_steps=0), log=lambda s: None)
