"""The episode store: round trip, atomic writes, corruption reports, split, windows."""

import json
import os
import time

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from worldsim.data.store import (
    CorruptEpisodeError,
    Episode,
    EpisodeStore,
    WindowDataset,
    is_validation,
    merge_stores,
)

OBS = spaces.Box(0, 255, (8, 8, 3), np.uint8)
ACT = spaces.Discrete(5)


def make_episode(T: int, tag: int = 0, seed: int = 0) -> Episode:
    """Frame t of episode `tag` has pixel (0,0) = (tag, t % 256, t // 256): windows can be
    traced back to where they came from."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T + 1, 8, 8, 3), dtype=np.uint8)
    frames[:, 0, 0] = np.stack([np.full(T + 1, tag), np.arange(T + 1) % 256,
                                np.arange(T + 1) // 256], 1)
    terminated = np.zeros(T, bool)
    terminated[-1] = True
    return Episode(frames=frames, actions={"action": rng.integers(0, 5, T)},
                   rewards=rng.normal(size=T).astype(np.float32), terminated=terminated,
                   truncated=np.zeros(T, bool), info={"seed": seed, "tag": tag})


def new_store(path) -> EpisodeStore:
    return EpisodeStore.create(path, env_id="Test-v0", observation_space=OBS, action_space=ACT)


def test_round_trip(tmp_path):
    store = new_store(tmp_path / "d")
    ep = make_episode(12, tag=3, seed=1)
    name = store.add(ep, name="ep-a")
    again = EpisodeStore(tmp_path / "d")
    assert again.names == [name] and again.env_id == "Test-v0"
    assert again.observation_space == OBS and again.action_space == ACT
    loaded = again.load(name, verify=True)
    assert isinstance(loaded.frames, np.memmap)
    for key, array in ep.arrays().items():
        got = loaded.arrays()[key]
        assert got.dtype == array.dtype and np.array_equal(got, array), key
    assert loaded.info == {"seed": 1, "tag": 3}
    assert again.episode_meta(name)["return"] == pytest.approx(float(ep.rewards.sum()))
    assert again.num_frames == 13 and again.verify() == {}


def test_dict_action_space_round_trip(tmp_path):
    act = spaces.Dict({"buttons": spaces.MultiBinary(4), "camera": spaces.Box(-1, 1, (2,))})
    store = EpisodeStore.create(tmp_path, env_id="D-v0", observation_space=OBS, action_space=act)
    T = 5
    ep = Episode(frames=np.zeros((T + 1, 8, 8, 3), np.uint8),
                 actions={"buttons": np.ones((T, 4), np.int8),
                          "camera": np.full((T, 2), 0.5, np.float32)},
                 rewards=np.zeros(T, np.float32), terminated=np.zeros(T, bool),
                 truncated=np.ones(T, bool))
    name = store.add(ep)
    again = EpisodeStore(tmp_path)
    assert again.action_space == act and again.action_keys == ["buttons", "camera"]
    assert np.array_equal(again.load(name).actions["camera"], ep.actions["camera"])


def test_create_appends_and_refuses_another_dataset(tmp_path):
    new_store(tmp_path).add(make_episode(4), name="first")
    store = new_store(tmp_path)  # opens it
    store.add(make_episode(4), name="second")
    assert sorted(EpisodeStore(tmp_path).names) == ["first", "second"]
    with pytest.raises(ValueError, match="observation_space"):
        EpisodeStore.create(tmp_path, env_id="Test-v0", action_space=ACT,
                            observation_space=spaces.Box(0, 255, (16, 16, 3), np.uint8))
    with pytest.raises(FileExistsError):
        store.add(make_episode(4), name="first")


def test_leftover_temporary_is_ignored_and_cleaned(tmp_path):
    store = new_store(tmp_path)
    store.add(make_episode(6), name="whole")
    # what a writer killed mid-episode leaves behind: a .tmp dir with part of the files
    tmp = tmp_path / "episodes" / ".tmp-killed"
    tmp.mkdir()
    np.save(tmp / "frames.npy", np.zeros((3, 8, 8, 3), np.uint8))
    (tmp / "rewards.npy").write_bytes(b"\x93NUMPY half")
    again = EpisodeStore(tmp_path)
    assert again.names == ["whole"] and again.corrupt == {} and again.verify() == {}
    again.remove_stale_temporaries(older_than_s=60)
    assert tmp.exists()  # recent: may belong to a writer still at work
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    again.remove_stale_temporaries(older_than_s=60)
    assert not tmp.exists()


def test_corrupted_frames_are_named_and_other_episodes_load(tmp_path):
    store = new_store(tmp_path)
    for i in range(3):
        store.add(make_episode(10, tag=i, seed=i), name=f"ep{i}")
    frames = tmp_path / "episodes" / "ep1" / "frames.npy"
    data = bytearray(frames.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte: same size, wrong checksum
    frames.write_bytes(bytes(data))

    store = EpisodeStore(tmp_path)
    with pytest.raises(CorruptEpisodeError, match="ep1/frames.npy.*CRC-32"):
        store.load("ep1", verify=True)
    bad = store.verify()
    assert list(bad) == ["ep1"] and str(frames) in bad["ep1"]
    for name in ("ep0", "ep2"):
        assert store.load(name, verify=True).length == 10

    # a truncated file is caught even without checksums (by its size)
    frames.write_bytes(bytes(data[:-500]))
    with pytest.raises(CorruptEpisodeError, match=f"{frames}.*bytes"):
        EpisodeStore(tmp_path).load("ep1")


def test_missing_file_is_named(tmp_path):
    store = new_store(tmp_path)
    store.add(make_episode(5), name="ep")
    os.remove(tmp_path / "episodes" / "ep" / "rewards.npy")
    with pytest.raises(CorruptEpisodeError, match="ep/rewards.npy"):
        EpisodeStore(tmp_path).load("ep")


def test_corrupt_meta_is_listed_with_its_path(tmp_path):
    store = new_store(tmp_path)
    store.add(make_episode(5), name="good")
    store.add(make_episode(5), name="bad")
    meta = tmp_path / "episodes" / "bad" / "meta.json"
    meta.write_text('{"name": "bad", "len')
    with pytest.warns(UserWarning, match="bad/meta.json"):
        again = EpisodeStore(tmp_path)
    assert again.names == ["good"]
    assert list(again.corrupt) == ["bad"] and str(meta) in again.corrupt["bad"]
    assert "bad" in again.verify() and again.load("good").length == 5


def test_corrupt_dataset_json_is_named(tmp_path):
    new_store(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(CorruptEpisodeError, match="dataset.json"):
        EpisodeStore(tmp_path)


def test_split_is_deterministic_and_stable_when_episodes_are_added(tmp_path):
    store = new_store(tmp_path)
    ep = make_episode(2)
    for i in range(60):
        store.add(ep, name=f"episode-{i:03d}")
    train, val = store.split("train"), store.split("val")
    assert val and train and not set(train) & set(val)
    assert sorted(train + val) == sorted(store.split("all"))
    assert EpisodeStore(tmp_path).split("val") == val  # reopening changes nothing
    for i in range(60, 120):
        store.add(ep, name=f"episode-{i:03d}")
    grown = EpisodeStore(tmp_path)
    old = {f"episode-{i:03d}" for i in range(60)}
    assert set(grown.split("val")) & old == set(val)
    assert set(grown.split("train")) & old == set(train)
    assert 0.03 < len(grown.split("val")) / 120 < 0.25
    with pytest.raises(ValueError, match="split"):
        grown.split("test")


def test_tiny_dataset_still_has_a_validation_episode(tmp_path):
    store = new_store(tmp_path)
    for i in range(3):
        store.add(make_episode(2), name=f"e{i}")
    assert len(store.split("val")) >= 1 and len(store.split("train")) >= 1


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       window=st.integers(1, 12), stride=st.integers(1, 3))
def test_windows_never_cross_an_episode_end(tmp_path_factory, lengths, window, stride):
    root = tmp_path_factory.mktemp("w")
    store = new_store(root)
    for tag, T in enumerate(lengths):
        store.add(make_episode(T, tag=tag, seed=tag), name=f"ep{tag:02d}")
    ds = WindowDataset(store, split="all", length=window, stride=stride)
    expected = sum(len(range(0, T + 2 - window, stride)) for T in lengths if T + 1 >= window)
    assert len(ds) == expected
    for i in range(len(ds)):
        item = ds[i]
        obs = item["observations"]
        assert obs.shape == (window, 8, 8, 3)
        tags = obs[:, 0, 0, 0]
        t = obs[:, 0, 0, 1].astype(int) + 256 * obs[:, 0, 0, 2].astype(int)
        assert (tags == tags[0]).all(), "a window mixes two episodes"
        assert (np.diff(t) == 1).all(), "a window skips or repeats frames"
        ep = store.load(f"ep{int(tags[0]):02d}")
        s = int(t[0])
        assert np.array_equal(item["actions"]["action"], ep.actions["action"][s:s + window - 1])
        assert np.array_equal(item["rewards"], ep.rewards[s:s + window - 1])
    if len(ds):
        batch = ds.sample(4, np.random.default_rng(0))
        assert batch["observations"].shape == (4, window, 8, 8, 3)
        assert batch["actions"]["action"].shape == (4, window - 1)


def test_dataset_json_describes_itself(tmp_path):
    new_store(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["env_id"] == "Test-v0" and meta["action_space"]["type"] == "Discrete"
    assert meta["observation_space"]["shape"] == [8, 8, 3] and "numpy" in meta["versions"]


def test_last_transition_events_mark_rewards_and_terminations(tmp_path):
    store = new_store(tmp_path)
    for tag in range(2):
        ep = make_episode(12, tag=tag, seed=tag)
        ep.rewards[:] = 0
        ep.rewards[[3, 7]] = (1.0, -0.1)
        store.add(ep, name=f"ep{tag:02d}")
    ds = WindowDataset(store, split="all", length=3)
    events = ds.last_transition_events()
    batch = ds.take(np.arange(len(ds)))
    expected = (batch["rewards"][:, -1] != 0) | batch["terminated"][:, -1]
    assert np.array_equal(events, expected)
    assert events.sum() == 2 * 3  # two rewards and the terminal step, per episode
    every = ds.transition_events()
    assert every.shape == (len(ds), 2) and np.array_equal(every[:, -1], events)
    assert np.array_equal(every, (batch["rewards"] != 0) | batch["terminated"])


def scrolled_view(world: np.ndarray, x: int) -> np.ndarray:
    """The 8x8 view of a wide random `world` (8, width, 3) whose left edge is at column x."""
    return world[:, x:x + 8]


def test_revisits_mark_windows_whose_view_comes_back(tmp_path):
    """A view scrolling 3 columns out and 3 back revisits its start; a view scrolling one way
    does not, nor does one that changes a little in place (a player turning, say)."""
    rng = np.random.default_rng(0)
    world = rng.integers(0, 256, (8, 40, 3), dtype=np.uint8)
    store = new_store(tmp_path)
    # episode 0: still for 4 frames, 3 steps right, 3 back left, still for 4 frames
    path = [0] * 4 + [1, 2, 3, 2, 1, 0] + [0] * 4
    # episode 1: scrolls right one column per frame, never back
    onward = list(range(14))
    # episode 2: in place, with a small flicker (two pixels) every other frame
    for tag, xs in enumerate((path, onward, [0] * 14)):
        ep = make_episode(len(xs) - 1, tag=tag, seed=tag)
        ep.frames[:] = np.stack([scrolled_view(world, x) for x in xs])
        if tag == 2:
            ep.frames[1::2, :1, :2] = 255 - ep.frames[1::2, :1, :2]
        store.add(ep, name=f"ep{tag:02d}")
    ds = WindowDataset(store, split="all", length=5)
    flags = ds.revisits()
    episode = ds._index[:, 0]
    names = np.array(ds.names)[episode]
    starts = ds._index[:, 1]
    # In episode 0 the frame at x=2 (index 5) is revisited at index 7, x=1 (4) at 8, x=0 (3) at
    # 9: a 5-frame window holds such a pair when it spans (5, 7) or (4, 8): starts 3 to 5.
    assert set(starts[(names == "ep00") & flags]) == {3, 4, 5}
    assert not flags[names == "ep01"].any()
    assert not flags[names == "ep02"].any()
    assert flags.shape == (len(ds),) and flags.dtype == bool


def two_stores(tmp_path):
    """Store a (default start, latents under tag "v1") and store b (another env kwarg)."""
    a = EpisodeStore.create(tmp_path / "a", env_id="Test-v0", observation_space=OBS,
                            action_space=ACT, extra={"env_kwargs": {}})
    b = EpisodeStore.create(tmp_path / "b", env_id="Test-v0", observation_space=OBS,
                            action_space=ACT, extra={"env_kwargs": {"start_clock": "random"}})
    for i in range(6):
        a.add(make_episode(5 + i, tag=i, seed=i), name=f"ep-a{i}")
        a.write_latents("v1", f"ep-a{i}", np.full((6 + i, 2, 2, 2), i, np.float16))
    for i in range(4):
        b.add(make_episode(7, tag=10 + i, seed=10 + i), name=f"ep-b{i}")
    for store, first in ((a, 0), (b, 1)):  # achievement labels of some episodes
        labels = store.root / "labels" / "achievements"
        labels.mkdir(parents=True)
        (labels / "names.json").write_text(json.dumps(["wood", "water"]))
        name = store.names[first]
        np.save(labels / f"{name}.npy", np.eye(store.length(name), 2, dtype=bool))
    return a, b


def test_merge_gathers_episodes_latents_and_their_split(tmp_path):
    a, b = two_stores(tmp_path)
    merged = merge_stores(tmp_path / "m", [a.root, b.root])
    assert sorted(merged.names) == sorted(a.names + b.names)
    assert merged.verify() == {}
    for store in (a, b):
        for name in store.names:
            for key, array in store.load(name).arrays().items():
                assert np.array_equal(merged.load(name).arrays()[key], array), (name, key)
    assert np.array_equal(merged.load_latents("v1", "ep-a3"), a.load_latents("v1", "ep-a3"))
    assert not merged.has_latents("v1", "ep-b0")
    labels = merged.root / "labels" / "achievements"
    assert sorted(p.name for p in labels.iterdir()) == ["ep-a0.npy", "ep-b1.npy", "names.json"]
    assert np.array_equal(np.load(labels / "ep-b1.npy"), np.eye(7, 2, dtype=bool))
    assert set(merged.split("val")) == {n for n in merged.names if is_validation(n)}
    # The env kwargs differ, so no single one is claimed; each source's is listed.
    assert "env_kwargs" not in merged.meta
    assert [(e["env_kwargs"], e["episodes"]) for e in merged.meta["merged_from"]] == \
        [({}, 6), ({"start_clock": "random"}, 4)]
    assert EpisodeStore(tmp_path / "m").meta == merged.meta


def test_merge_resumes_and_refuses_clashes(tmp_path):
    a, b = two_stores(tmp_path)
    # A merge killed midway leaves a temporary episode and a subset of episodes.
    merge_stores(tmp_path / "m", [a.root])
    (tmp_path / "m" / "episodes" / ".tmp-ep-b0").mkdir()
    merged = merge_stores(tmp_path / "m", [a.root, b.root])
    assert len(merged) == 10 and merged.verify() == {}
    assert not list((tmp_path / "m" / "episodes").glob(".tmp-*"))
    # The same name for two different episodes is refused with both places named.
    c = new_store(tmp_path / "c")
    c.add(make_episode(3, seed=99), name="ep-a0")
    with pytest.raises(ValueError, match="ep-a0.*is in both"):
        merge_stores(tmp_path / "n", [a.root, c.root])
    with pytest.raises(ValueError, match="exists and is not"):
        merge_stores(tmp_path / "m", [c.root])


def test_merge_refuses_another_space_or_other_label_names(tmp_path):
    a, b = two_stores(tmp_path)
    (b.root / "labels" / "achievements" / "names.json").write_text(json.dumps(["wood"]))
    with pytest.raises(ValueError, match="names.json.*differs"):
        merge_stores(tmp_path / "m", [a.root, b.root])
    other = EpisodeStore.create(tmp_path / "o", env_id="Test-v0", observation_space=OBS,
                                action_space=spaces.Discrete(7))
    with pytest.raises(ValueError, match="action_space"):
        merge_stores(tmp_path / "m", [a.root, other.root])
