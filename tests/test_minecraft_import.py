"""`worldsim import`: MineRL v0 and VPT recordings, built here in their real formats with real
mp4 files, imported into an episode store; plus the action space and VPT camera bins."""

import json
import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given
from hypothesis import strategies as st

from worldsim.data.minecraft import ENV_ID, main
from worldsim.data.minecraft_actions import (
    BUTTONS,
    VPT_CAMERA,
    bins_to_camera,
    camera_to_bins,
    minecraft_action_space,
    vpt_actions,
)
from worldsim.data.store import EpisodeStore
from worldsim.data.video import write_video
from worldsim.spaces import space_from_json, space_to_json

LEVEL_STEP = 5  # video frame j is a flat grey of level LEVEL_STEP * j


def grey_video(path, n_frames, H, W):
    levels = (np.arange(n_frames) * LEVEL_STEP).astype(np.uint8)
    write_video(path, np.broadcast_to(levels[:, None, None, None], (n_frames, H, W, 3)).copy(),
                fps=20)


def frame_index(frame):
    """Which synthetic video frame a decoded (and resized) frame shows."""
    return int(round(float(frame.mean()) / LEVEL_STEP))


# ---------------------------------------------------------------------- fixtures: MineRL v0
def make_minerl_demo(folder, n_actions=12, leading=3, *, with_reward=True):
    """A demonstration as MineRL's publisher writes it: n_actions (>= 8) actions and rewards
    for n_actions + 1 states (observation$ arrays have n_actions + 1 entries), and a 64x64
    video with `leading` extra frames before the first state."""
    folder.mkdir(parents=True)
    n_video = n_actions + 1 + leading
    grey_video(folder / "recording.mp4", n_video, 64, 64)
    N = n_actions
    arrays = {f"action${k}": np.zeros(N, np.int64)
              for k in ("attack", "back", "forward", "jump", "left", "right", "sneak", "sprint")}
    arrays["action$forward"][2] = 1
    arrays["action$attack"][6:8] = 1
    arrays["action$camera"] = np.zeros((N, 2), np.float32)
    arrays["action$camera"][3] = (-5.0, 12.5)
    arrays["action$place"] = np.array(["none"] * N, dtype="<U16")
    arrays["action$place"][4] = "dirt"
    arrays["action$craft"] = np.array(["none"] * N, dtype="<U16")
    arrays["action$craft"][1] = "planks"
    arrays["observation$inventory$dirt"] = np.arange(N + 1)
    if with_reward:
        arrays["reward"] = np.zeros(N, np.float32)
        arrays["reward"][5] = 1.0
    np.savez_compressed(folder / "rendered.npz", **arrays)
    (folder / "metadata.json").write_text(json.dumps({
        "success": False, "duration_ms": N * 50, "duration_steps": N, "total_reward": 1.0,
        "stream_name": "v3_" + folder.name, "true_video_frame_count": n_video}))
    return folder


# ---------------------------------------------------------------------- fixtures: VPT
def vpt_tick(t, keys=(), dx=0.0, dy=0.0, buttons=(), new_buttons=(), hotbar=0, gui=False):
    """One line of a VPT contractor .jsonl, with every field the recorder writes (v7.x)."""
    return {
        "mouse": {"x": 640.0, "y": 360.0, "dx": dx, "dy": dy, "scaledX": 0.0, "scaledY": 0.0,
                  "dwheel": 0.0, "buttons": list(buttons), "newButtons": list(new_buttons)},
        "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
        "isGuiOpen": gui, "isGuiInventory": gui, "hotbar": hotbar,
        "yaw": 0.0, "pitch": 0.0, "xpos": 0.5, "ypos": 64.0, "zpos": 0.5,
        "tick": t, "milli": 1649575088006 + 50 * t,
        "inventory": [{"type": "oak_planks", "quantity": 3}],
        "serverTick": 6001 + t, "serverTickDurationMs": 36.3, "stats": {},
    }


def make_vpt(stem, n_ticks=10, n_frames=None):
    """NAME.mp4 (a 64x36 stand-in for the 640x360 original) + NAME.jsonl, n_ticks >= 6."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    grey_video(stem.with_suffix(".mp4"), n_frames or n_ticks, 36, 64)
    ticks = [vpt_tick(t) for t in range(n_ticks)]
    ticks[1] = vpt_tick(1, keys=["key.keyboard.w", "key.keyboard.f3"])
    ticks[2] = vpt_tick(2, dx=100.0, dy=-20.0)
    ticks[3] = vpt_tick(3, buttons=[0], new_buttons=[0])
    ticks[4] = vpt_tick(4, hotbar=2)
    ticks[5] = vpt_tick(5, keys=["key.keyboard.space", "key.keyboard.left.shift"], buttons=[1],
                        hotbar=2)
    for t in range(6, n_ticks):
        ticks[t]["hotbar"] = 2
    stem.with_suffix(".jsonl").write_text("\n".join(json.dumps(t) for t in ticks) + "\n")
    return stem


def only_pressed(actions, t):
    return sorted(b for b in BUTTONS if actions[b][t])


# ---------------------------------------------------------------------- the action space
def test_action_space_is_minerl_style_and_serialises():
    space = minecraft_action_space()
    assert isinstance(space, spaces.Dict) and len(space.spaces) == len(BUTTONS) + 1
    assert all(space[b] == spaces.Discrete(2) for b in BUTTONS)
    assert space["camera"].shape == (2,) and space["camera"].high[0] == 180
    assert {"forward", "back", "left", "right", "jump", "sneak", "sprint", "attack", "use",
            "hotbar.1", "inventory"} <= set(space.spaces)
    assert space_from_json(space_to_json(space)) == space


def test_vpt_camera_bins():
    assert VPT_CAMERA.n_bins == 11 and VPT_CAMERA.zero_bin == 5
    assert camera_to_bins(np.array([0.0, 10.0, -10.0, 50.0, -99.0])).tolist() == [5, 10, 0, 10, 0]
    centres = bins_to_camera(np.arange(11))
    assert centres[5] == 0 and centres[10] == pytest.approx(10) and centres[0] == pytest.approx(-10)
    # the inverse mu-law at bin 6: ((1 + mu)^(1/5) - 1) / mu * maxval = 11^0.2 - 1 degrees
    assert centres[6] == pytest.approx(11 ** 0.2 - 1, rel=1e-6)
    assert (np.diff(centres[5:]) > np.diff(centres[5:])[0] - 1e-6).all()  # widening bins
    assert camera_to_bins(centres).tolist() == list(range(11))
    with pytest.raises(ValueError, match="camera bins"):
        bins_to_camera(np.array([11]))


@given(st.floats(-200, 200), st.floats(-200, 200))
def test_camera_bins_are_monotone_and_symmetric(a, b):
    lo, hi = sorted((a, b))
    bins = camera_to_bins(np.array([lo, hi, -hi]))
    assert 0 <= bins[0] <= bins[1] <= 10
    assert bins[2] == 10 - bins[1]


def test_vpt_mapping_and_the_stuck_attack_repair():
    ticks = [vpt_tick(0, buttons=[0], new_buttons=[0]),  # attack held from the start: stuck
             vpt_tick(1, buttons=[0], keys=["key.keyboard.d"]),
             vpt_tick(2, buttons=[0], new_buttons=[0]),  # pressed anew: real from here on
             vpt_tick(3, buttons=[0, 2], dx=-2400.0)]
    actions, unmapped = vpt_actions(ticks)
    assert actions["attack"].tolist() == [0, 0, 1, 1]
    assert actions["right"].tolist() == [0, 1, 0, 0] and actions["pickItem"][3] == 1
    assert actions["camera"][3].tolist() == [0.0, -180.0]  # 2400 units = 360 degrees, clipped
    assert unmapped == {}
    with pytest.raises(ValueError, match="tick 0"):
        vpt_actions([{"keyboard": {"keys": []}}])


# ---------------------------------------------------------------------- importing
def test_import_minerl_v0(tmp_path):
    src = tmp_path / "MineRLTreechop-v0"
    make_minerl_demo(src / "v3_demo", n_actions=12, leading=3)
    main(["--src", str(tmp_path), "--out", str(tmp_path / "out"), "--size", "16"])
    store = EpisodeStore(tmp_path / "out")
    assert store.env_id == ENV_ID and store.action_space == minecraft_action_space()
    assert store.observation_space.shape == (16, 16, 3)
    (name,) = store.names
    assert name == "minerl-MineRLTreechop-v0_v3_demo"
    ep = store.load(name, verify=True)
    assert ep.length == 12 and ep.frames.shape == (13, 16, 16, 3)
    # aligned by the end: 3 leading frames skipped; the final state repeats the one before
    assert [frame_index(f) for f in ep.frames] == [3 + t for t in range(12)] + [14]
    assert ep.actions["forward"].tolist() == [0, 0, 1] + [0] * 9
    assert only_pressed(ep.actions, 4) == ["use"]  # place dirt = right click
    assert only_pressed(ep.actions, 6) == ["attack"]
    np.testing.assert_allclose(ep.actions["camera"][3], [-5.0, 12.5])
    assert np.abs(np.delete(ep.actions["camera"], 3, 0)).sum() == 0
    assert ep.rewards.tolist() == [0.0] * 5 + [1.0] + [0.0] * 6
    assert not ep.terminated.any() and ep.truncated.tolist() == [False] * 11 + [True]
    assert ep.info["unmapped_actions"] == {"craft": 1}
    assert ep.info["skipped_leading_frames"] == 3


def test_import_vpt_with_rectangular_size(tmp_path):
    make_vpt(tmp_path / "rec" / "cheeky-cornflower-setter-abc-20220315-122354", n_ticks=10)
    main(["--src", str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--size", "12", "20",
          "--format", "vpt"])
    store = EpisodeStore(tmp_path / "out")
    ep = store.load(store.names[0])
    assert ep.length == 9 and ep.frames.shape == (10, 12, 20, 3)
    assert [frame_index(f) for f in ep.frames] == list(range(10))
    assert only_pressed(ep.actions, 0) == []
    assert only_pressed(ep.actions, 1) == ["forward"]
    # mouse dx 100, dy -20 units at 360/2400 degrees per unit: 15 right, 3 up
    np.testing.assert_allclose(ep.actions["camera"][2], [-3.0, 15.0])
    assert only_pressed(ep.actions, 3) == ["attack"]
    assert only_pressed(ep.actions, 4) == ["hotbar.3"]  # slot changed without a key press
    assert only_pressed(ep.actions, 5) == ["jump", "sneak", "use"]
    assert ep.rewards.tolist() == [0.0] * 9 and not ep.terminated.any() and ep.truncated[-1]
    assert ep.info["unmapped_keys"] == {"key.keyboard.f3": 1}


def test_long_recordings_are_cut_into_truncated_pieces(tmp_path):
    make_vpt(tmp_path / "rec" / "long", n_ticks=13)
    main(["--src", str(tmp_path / "rec" / "long.mp4"), "--out", str(tmp_path / "out"),
          "--size", "8", "--max-length", "5"])
    store = EpisodeStore(tmp_path / "out")
    assert store.names == ["vpt-long-p000", "vpt-long-p001", "vpt-long-p002"]
    pieces = [store.load(n) for n in store.names]
    assert [p.length for p in pieces] == [5, 5, 2]
    assert [[frame_index(f) for f in p.frames] for p in pieces] == [
        [0, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9, 10], [10, 11, 12]]
    assert all(p.truncated[-1] and p.truncated.sum() == 1 for p in pieces)
    camera = np.concatenate([p.actions["camera"] for p in pieces])
    np.testing.assert_allclose(camera[2], [-3.0, 15.0])


def test_bad_recordings_are_reported_and_do_not_stop_the_others(tmp_path):
    src = tmp_path / "src"
    make_vpt(src / "good", n_ticks=6)
    make_vpt(src / "badvideo", n_ticks=6)
    (src / "badvideo.mp4").write_bytes(b"\x00garbage" * 50)
    make_vpt(src / "badjson", n_ticks=6)
    with open(src / "badjson.jsonl", "a") as f:
        f.write("{not json\n")
    make_vpt(src / "nojson", n_ticks=6)
    (src / "nojson.jsonl").unlink()
    make_minerl_demo(src / "MineRLNavigate-v0" / "v3_badnpz")
    (src / "MineRLNavigate-v0" / "v3_badnpz" / "rendered.npz").write_bytes(b"PK\x03\x04junk")
    make_minerl_demo(src / "MineRLNavigate-v0" / "v3_nometa")
    (src / "MineRLNavigate-v0" / "v3_nometa" / "metadata.json").unlink()
    make_minerl_demo(src / "MineRLNavigate-v0" / "v3_short", n_actions=12, leading=0)
    grey_video(src / "MineRLNavigate-v0" / "v3_short" / "recording.mp4", 8, 64, 64)

    with pytest.raises(SystemExit) as exit_info:
        main(["--src", str(src), "--out", str(tmp_path / "out"), "--size", "8"])
    message = str(exit_info.value.code)
    assert "6 recordings failed" in message
    assert "badvideo.mp4: cannot open as a video" in message
    assert "badjson.jsonl: line 7 is not JSON" in message
    assert "nojson.jsonl: missing" in message
    assert "v3_badnpz/rendered.npz: corrupt" in message
    assert "v3_nometa/metadata.json: missing" in message
    assert "v3_short/recording.mp4: has 8 frames, but rendered.npz describes 13 states" in message
    assert EpisodeStore(tmp_path / "out").names == ["vpt-good"]


def test_import_again_skips_and_other_size_is_refused(tmp_path, capsys):
    make_minerl_demo(tmp_path / "demo", with_reward=False)
    args = ["--src", str(tmp_path / "demo"), "--out", str(tmp_path / "out"), "--size", "8"]
    main(args)
    assert EpisodeStore(tmp_path / "out").load("minerl-demo").rewards.sum() == 0  # no reward
    main(args)
    assert "skipped 1 recordings imported before" in capsys.readouterr().out
    assert len(EpisodeStore(tmp_path / "out")) == 1
    with pytest.raises(SystemExit, match="observation_space"):
        main(args[:-1] + ["16"])


def test_cli_subprocess(tmp_path):
    make_vpt(tmp_path / "rec" / "a", n_ticks=7)
    make_minerl_demo(tmp_path / "rec" / "MineRLTreechop-v0" / "v3_b", n_actions=8, leading=1)
    result = subprocess.run(
        [sys.executable, "-m", "worldsim.cli", "import", "--src", str(tmp_path / "rec"),
         "--out", str(tmp_path / "out"), "--size", "8"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 episodes" in result.stdout
    store = EpisodeStore(tmp_path / "out")
    assert sorted(store.length(n) for n in store.names) == [6, 8]
    assert store.meta["fps"] == 20
