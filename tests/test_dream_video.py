"""Dream videos: the rendering core on the real Crafter game and on a stand-in dream that honours
prompts, prompts from images / arrays / episodes, action files, the streaming writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from PIL import Image

from envs.dream_video import (
    LABEL_HEIGHT,
    PANEL_GAP,
    DreamConfig,
    VideoWriter,
    compose,
    load_actions,
    load_prompt,
    random_actions,
    render_video,
    rgb_frame,
    rollout,
    run,
)
from worldsim.data.collect import make_env
from worldsim.data.store import Episode, EpisodeStore

CRAFTER = "worldsim/Crafter-v0"
REPO = Path(__file__).resolve().parents[1]


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


class PromptedEnv(gym.Env):
    """A stand-in dream: starts from the last prompt frame and shifts it one pixel right per
    step; remembers the reset options it got."""

    metadata = {"render_modes": []}

    def __init__(self, n_actions: int = 17, shape=(64, 64, 3)):
        self.action_space = spaces.Discrete(n_actions)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.options_seen: list = []
        self.frame = np.zeros(shape, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.options_seen.append(options)
        if options and "frames" in options:
            self.frame = np.asarray(options["frames"])[-1].copy()
        return self.frame.copy(), {}

    def step(self, action):
        assert self.action_space.contains(action)
        self.frame = np.roll(self.frame, 1, axis=1)
        return self.frame.copy(), 0.0, False, False, {"predicted_termination": 0.0}


@pytest.fixture(scope="module")
def crafter_store(tmp_path_factory) -> Path:
    """A dataset with one 12-step Crafter episode."""
    root = tmp_path_factory.mktemp("store")
    env = make_env(CRAFTER)
    r = rollout(env, [1, 1, 3, 3, 2, 2, 4, 4, 5, 5, 0, 0], 12, seed=5)
    store = EpisodeStore.create(root, env_id=CRAFTER, observation_space=env.observation_space,
                                action_space=env.action_space)
    store.add(Episode(r.frames, {"action": np.array(r.actions, np.int64)}, r.rewards,
                      np.zeros(12, bool), np.zeros(12, bool)), name="ep-0")
    return root


def test_rgb_frame_from_observation_or_render():
    env = make_env(CRAFTER)
    obs, _ = env.reset(seed=0)
    assert rgb_frame(env, obs) is obs
    assert rgb_frame(env, {"pov": obs}) is obs
    cartpole = gym.make("CartPole-v1", render_mode="rgb_array")
    obs, _ = cartpole.reset(seed=0)
    assert rgb_frame(cartpole, obs).shape[2] == 3
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        no_render = gym.make("CartPole-v1")
        rgb_frame(no_render, no_render.reset(seed=0)[0])


def test_rollout_on_the_real_game():
    env = make_env(CRAFTER)
    r = rollout(env, random_actions(env.action_space, 10, seed=0), 10, seed=1)
    assert r.frames.shape == (11, 64, 64, 3) and r.length == 10 and r.ended == ""
    again = rollout(env, r.actions, 10, seed=1)
    np.testing.assert_array_equal(r.frames, again.frames)  # same seed, same actions
    short = rollout(env, lambda t, obs: 0, 3, seed=1)
    assert short.length == 3


def test_compose_scales_labels_and_holds_the_last_frame():
    a = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    b = a[:3]
    out = compose([a, b], ["real", "dream"], scale=4)
    assert out.shape == (5, LABEL_HEIGHT + 32, 2 * 32 + PANEL_GAP, 3)
    np.testing.assert_array_equal(out[2, LABEL_HEIGHT:, :32], a[2].repeat(4, 0).repeat(4, 1))
    right = slice(32 + PANEL_GAP, None)
    np.testing.assert_array_equal(out[4, LABEL_HEIGHT:, right], b[2].repeat(4, 0).repeat(4, 1))
    assert out[0, :LABEL_HEIGHT].std() > 0  # the caption is drawn
    assert compose([a]).shape == (5, 8, 8, 3)
    odd = compose([a, np.zeros((5, 4, 4, 3), np.uint8)], scale=3)  # resized to the first
    assert odd.shape == (5, 24, 48 + PANEL_GAP, 3)
    with pytest.raises(ValueError, match="labels"):
        compose([a, b], ["one"])


def test_render_video_with_the_real_game_beside(tmp_path):
    dream, real = PromptedEnv(), make_env(CRAFTER)
    path, shown = render_video(dream, tmp_path / "cmp.mp4", 6, real=real, seed=2, scale=2)
    frames = decode(path)
    assert len(frames) == 7
    assert frames[0].shape == (LABEL_HEIGHT + 128, 2 * 128 + PANEL_GAP, 3)
    # the dream starts from the real game's first frame and takes the same actions
    np.testing.assert_array_equal(dream.options_seen[0]["frames"][0], shown["real"].frames[0])
    np.testing.assert_array_equal(shown["dream"].frames[0], shown["real"].frames[0])
    assert shown["dream"].actions == shown["real"].actions


def test_render_video_from_an_episode_prompt(tmp_path, crafter_store):
    prompt = load_prompt(crafter_store, context=3, start=2)
    assert prompt.frames.shape == (3, 64, 64, 3) and prompt.actions == [3, 3]
    dream = PromptedEnv()
    path, shown = render_video(dream, tmp_path / "ep.gif", 20, prompt=prompt, recorded=True,
                               scale=1)
    # the episode has 13 frames: prompt 2..4, then 8 recorded steps to compare with
    assert shown["dream"].actions == [2, 2, 4, 4, 5, 5, 0, 0]
    options = dream.options_seen[0]
    assert options["frames"].shape == (3, 64, 64, 3) and list(options["actions"]) == [3, 3]
    ep = EpisodeStore(crafter_store).load("ep-0")
    np.testing.assert_array_equal(shown["real"].frames, ep.frames[4:])
    assert len(decode(path)) == 9
    with pytest.raises(ValueError, match="own"):
        render_video(dream, tmp_path / "x.mp4", 3, [0, 0, 0], prompt=prompt, recorded=True)


def test_prompts_from_images_and_arrays(tmp_path):
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "start.png")
    prompt = load_prompt(tmp_path / "start.png")
    np.testing.assert_array_equal(prompt.frames, frame[None])
    assert prompt.future_frames is None
    np.save(tmp_path / "ctx.npy", np.stack([frame, frame, frame]))
    assert load_prompt(tmp_path / "ctx.npy", context=2).frames.shape == (2, 64, 64, 3)
    np.save(tmp_path / "bad.npy", np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="bad.npy"):
        load_prompt(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError):
        load_prompt(tmp_path / "missing.png")
    dream = PromptedEnv()
    path, shown = render_video(dream, tmp_path / "img.mp4", 4, prompt=prompt, seed=0)
    np.testing.assert_array_equal(shown["dream"].frames[0], frame)
    assert len(decode(path)) == 5


def test_action_files(tmp_path):
    space = spaces.Discrete(17)
    np.save(tmp_path / "a.npy", np.array([1, 2, 3]))
    assert load_actions(tmp_path / "a.npy", space) == [1, 2, 3]
    (tmp_path / "a.json").write_text(json.dumps([0, 16]))
    assert load_actions(tmp_path / "a.json", space) == [0, 16]
    (tmp_path / "bad.json").write_text(json.dumps([0, 17]))
    with pytest.raises(ValueError, match="action 1"):
        load_actions(tmp_path / "bad.json", space)
    dict_space = spaces.Dict({"forward": spaces.Discrete(2),
                              "camera": spaces.Box(-180, 180, (2,), np.float32)})
    (tmp_path / "d.json").write_text(json.dumps([{"forward": 1, "camera": [0.5, -2.0]}]))
    (action,) = load_actions(tmp_path / "d.json", dict_space)
    assert dict_space.contains(action) and action["forward"] == 1
    (tmp_path / "d2.json").write_text(json.dumps([{"forward": 1}]))
    with pytest.raises(ValueError, match="camera"):
        load_actions(tmp_path / "d2.json", dict_space)


def test_run_renders_with_any_env_as_the_dream(tmp_path, crafter_store):
    cfg = DreamConfig(checkpoint=tmp_path, out=tmp_path / "run.mp4", steps=5,
                      prompt=crafter_store, context=2, side_by_side=True, scale=1)
    path, shown = run(cfg, dream=PromptedEnv())
    assert set(shown) == {"real", "dream"} and len(decode(path)) == 6
    cfg = DreamConfig(checkpoint=tmp_path, out=tmp_path / "rand.gif", steps=4, scale=1)
    path, shown = run(cfg, dream=make_env(CRAFTER))  # the real game renders just the same
    assert len(decode(path)) == 5 and set(shown) == {"dream"}
    with pytest.raises(ValueError, match="real env"):
        run(DreamConfig(checkpoint=tmp_path, out=tmp_path / "x.mp4", side_by_side=True),
            dream=PromptedEnv())


def test_video_writer_streams_and_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=".avi"):
        VideoWriter(tmp_path / "x.avi", 15)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 31, 33, 3), dtype=np.uint8)
    for ext in ("mp4", "gif"):
        writer = VideoWriter(tmp_path / f"x.{ext}", 15)
        for f in frames:  # odd sides work (full-resolution chroma in mp4)
            writer.write(f)
        assert not (tmp_path / f"x.{ext}").exists()  # appears only when complete
        with pytest.raises(ValueError, match="frame of"):
            writer.write(np.zeros((32, 32, 3), np.uint8))
        assert writer.close() == tmp_path / f"x.{ext}"
        decoded = decode(tmp_path / f"x.{ext}")
        assert len(decoded) == 4 and decoded[0].shape == (31, 33, 3)
    # gif frames keep their colours exactly when a frame has at most 256 of them
    few = np.zeros((2, 16, 16, 3), np.uint8)
    few[:, :8] = [200, 30, 60]
    few[:, 8:] = [10, 150, 250]
    writer = VideoWriter(tmp_path / "few.gif", 10)
    for f in few:
        writer.write(f)
    writer.close()
    np.testing.assert_array_equal(decode(tmp_path / "few.gif")[1], few[1])
    assert VideoWriter(tmp_path / "none.mp4", 15).close() is None


def test_cli_reports_a_missing_checkpoint(tmp_path):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "dream", "--checkpoint",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "d.mp4")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "nope" in out.stderr and "does not exist" in out.stderr
