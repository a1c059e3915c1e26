"""`worldsim data info`, `worldsim data verify` and `worldsim data merge`, through subprocesses, on small stores made
here with known contents."""

import json
import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces
from PIL import Image

from worldsim.data.info import contact_sheet, summarise
from worldsim.data.minecraft_actions import minecraft_action_space, noop_actions
from worldsim.data.store import Episode, EpisodeStore

H = W = 8


def run(*args):
    return subprocess.run([sys.executable, "-m", "worldsim.cli", "data", *map(str, args)],
                          capture_output=True, text=True)


def make_episode(T, rng, actions, terminated=False):
    done = np.zeros(T, bool)
    rewards = np.zeros(T, np.float32)
    rewards[::4] = 1.0
    rewards[1] = -0.5
    return Episode(frames=rng.integers(0, 256, (T + 1, H, W, 3), dtype=np.uint8),
                   actions=actions, rewards=rewards,
                   terminated=np.eye(1, T, T - 1, dtype=bool)[0] if terminated else done,
                   truncated=done if terminated else np.eye(1, T, T - 1, dtype=bool)[0])


@pytest.fixture
def crafter_store(tmp_path):
    """Three Crafter-like episodes (Discrete(17)) of 5, 7 and 9 transitions; the last dies."""
    store = EpisodeStore.create(tmp_path / "crafter", env_id="worldsim/Crafter-v0",
                                observation_space=spaces.Box(0, 255, (H, W, 3), np.uint8),
                                action_space=spaces.Discrete(17))
    rng = np.random.default_rng(0)
    for i, T in enumerate((5, 7, 9)):
        actions = {"action": rng.integers(0, 17, T)}
        store.add(make_episode(T, rng, actions, terminated=i == 2), name=f"ep{i}")
    return store


def test_info_on_a_crafter_store(crafter_store, tmp_path):
    sheet, summary_path = tmp_path / "sheet.png", tmp_path / "summary.json"
    result = run("info", crafter_store.root, "--out", sheet, "--json", summary_path,
                 "--grid", "4")
    assert result.returncode == 0, result.stderr
    s = json.loads(summary_path.read_text())
    episodes = [crafter_store.load(n) for n in crafter_store.names]
    actions = np.concatenate([ep.actions["action"] for ep in episodes])
    rewards = np.concatenate([ep.rewards for ep in episodes])
    assert (s["episodes"], s["frames"], s["transitions"]) == (3, 24, 21)
    assert s["train_episodes"] + s["val_episodes"] == 3 and s["val_episodes"] >= 1
    assert s["episode_length"] == {"min": 5, "mean": 7.0, "median": 7.0, "max": 9}
    assert s["actions"]["action"]["counts"] == np.bincount(actions, minlength=17).tolist()
    assert s["actions"]["action"]["names"][11] == "make_wood_pickaxe"
    assert s["rewards"]["sum"] == pytest.approx(rewards.sum())
    assert s["rewards"]["nonzero"] == np.count_nonzero(rewards)
    assert s["rewards"]["histogram"] == {"values": [-0.5, 0.0, 1.0],
                                         "counts": [3, 21 - 3 - 7, 7]}
    assert s["terminated_transitions"] == 1
    assert s["episode_ends"] == {"truncated": 2, "terminated": 1}
    assert s["bytes"]["episodes"] > 24 * H * W * 3 and s["corrupt"] == {}
    # the text names Crafter's actions and the counts
    assert "make_wood_pickaxe" in result.stdout and "3 episodes" in result.stdout
    # 16 frames in a 4x4 grid with 1-pixel gaps
    assert Image.open(sheet).size == (4 * (W + 1) - 1, 4 * (H + 1) - 1)


def test_info_split_and_corrupt_episode(crafter_store, tmp_path):
    val = crafter_store.split("val")
    result = run("info", crafter_store.root, "--split", "val", "--no-sheet",
                 "--json", tmp_path / "val.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "val.json").read_text())["episodes"] == len(val)
    assert not (crafter_store.root / "contact_sheet.png").exists()

    frames = crafter_store.root / "episodes" / "ep1" / "frames.npy"
    frames.write_bytes(frames.read_bytes()[:-10])  # truncated: the others still summarise
    result = run("info", crafter_store.root, "--json", tmp_path / "all.json")
    assert result.returncode == 0, result.stderr
    s = json.loads((tmp_path / "all.json").read_text())
    assert s["episodes"] == 2 and list(s["corrupt"]) == ["ep1"]
    assert "CORRUPT" in result.stdout and str(frames) in result.stdout
    assert (crafter_store.root / "contact_sheet.png").exists()  # the default place


def test_info_on_a_minecraft_dict_store(tmp_path):
    store = EpisodeStore.create(tmp_path / "mc", env_id="minecraft-recordings",
                                observation_space=spaces.Box(0, 255, (H, W, 3), np.uint8),
                                action_space=minecraft_action_space())
    actions = noop_actions(6)
    actions["attack"][:4] = 1
    actions["camera"][2] = (0.0, 10.0)
    store.add(make_episode(6, np.random.default_rng(1), actions), name="rec")
    s = summarise(store)
    assert s["actions"]["attack"]["counts"] == [2, 4]
    assert s["actions"]["camera"]["nonzero"] == [0, 1]
    assert s["actions"]["camera"]["vpt_bins"][1] == [0] * 5 + [5] + [0] * 4 + [1]
    result = run("info", store.root, "--no-sheet")
    assert result.returncode == 0, result.stderr
    assert "attack" in result.stdout and "camera yaw VPT bins" in result.stdout


def test_verify_finds_a_flipped_byte(crafter_store):
    result = run("verify", crafter_store.root)
    assert result.returncode == 0, result.stderr
    assert "3 episodes good" in result.stdout
    rewards = crafter_store.root / "episodes" / "ep2" / "rewards.npy"
    data = bytearray(rewards.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum can tell
    rewards.write_bytes(bytes(data))
    assert run("info", crafter_store.root, "--no-sheet").returncode == 0
    result = run("verify", crafter_store.root)
    assert result.returncode != 0
    assert str(rewards) in result.stderr and "CRC-32" in result.stderr
    assert "2 episodes good" in result.stdout


def test_verify_and_info_refuse_a_non_dataset(tmp_path):
    for command in ("info", "verify"):
        result = run(command, tmp_path)
        assert result.returncode != 0 and "no dataset.json" in result.stderr


def test_merge_command_gathers_stores_and_refuses_a_non_dataset(crafter_store, tmp_path):
    other = EpisodeStore.create(tmp_path / "other", env_id="worldsim/Crafter-v0",
                                observation_space=crafter_store.observation_space,
                                action_space=crafter_store.action_space)
    rng = np.random.default_rng(1)
    other.add(make_episode(4, rng, {"action": rng.integers(0, 17, 4)}), name="ep-other")
    result = run("merge", crafter_store.root, other.root, "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    assert "4 episodes, 29 frames" in result.stdout and "from 2 datasets" in result.stdout
    assert run("verify", tmp_path / "merged").returncode == 0
    result = run("merge", crafter_store.root, tmp_path / "nothing", "--out", tmp_path / "m2")
    assert result.returncode != 0 and "no dataset.json" in result.stderr


def test_contact_sheet_layout():
    frames = np.stack([np.full((2, 3, 3), i * 10, np.uint8) for i in range(5)])
    sheet = contact_sheet(frames, columns=2)
    assert sheet.shape == (3 * 3 - 1, 2 * 4 - 1, 3)
    assert (sheet[0:2, 4:7] == 10).all() and (sheet[6:8, 0:3] == 40).all()
    assert (sheet[6:8, 4:7] == sheet[2, 0]).all()  # the empty cell is background


def test_known_action_names_are_crafters_for_crafter_only():
    from worldsim.data.info import known_action_names

    names = known_action_names("worldsim/Crafter-v0")
    assert len(names) == 17 and names[5] == "do" and names[16] == "make_iron_sword"
    assert known_action_names("CartPole-v1") is None
