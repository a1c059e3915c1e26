"""The inverse-dynamics model: it learns a trivially learnable synthetic task, caches itself by
the data's fingerprint, and refuses action spaces it cannot classify."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldsim.data.store import Episode, EpisodeStore
from worldsim.evaluation.idm import (
    IDMConfig,
    InverseDynamicsModel,
    Transitions,
    accuracy_table,
    load_or_train_idm,
    num_discrete_actions,
)

SIZE, SQUARE, STEP = 32, 8, 4
# action -> (dy, dx) of the square; the start of the Discrete space is 1 to check the offset
MOVES = {1: (0, -STEP), 2: (0, STEP), 3: (-STEP, 0), 4: (STEP, 0)}
TINY = IDMConfig(channels=(8, 16, 16), hidden=32, steps=150, batch_size=32, lr=3e-3)


def _frame(pos: tuple[int, int], colour: np.ndarray, background: int) -> np.ndarray:
    frame = np.full((SIZE, SIZE, 3), background, np.uint8)
    ys = (np.arange(SQUARE) + pos[0]) % SIZE
    xs = (np.arange(SQUARE) + pos[1]) % SIZE
    frame[np.ix_(ys, xs)] = colour
    return frame


def _episode(rng: np.random.Generator, length: int) -> Episode:
    """A coloured square on a plain background moving one step per action, wrapping around:
    every action is visible in every state, so an IDM can be right every time."""
    colour = rng.integers(128, 256, 3).astype(np.uint8)
    background = int(rng.integers(0, 80))
    pos = tuple(int(v) for v in rng.integers(0, SIZE, 2))
    frames, actions = [_frame(pos, colour, background)], []
    for _ in range(length):
        a = int(rng.integers(1, 5))
        dy, dx = MOVES[a]
        pos = ((pos[0] + dy) % SIZE, (pos[1] + dx) % SIZE)
        frames.append(_frame(pos, colour, background))
        actions.append(a)
    return Episode(frames=np.stack(frames), actions={"action": np.array(actions, np.int64)},
                   rewards=np.zeros(length, np.float32), terminated=np.zeros(length, bool),
                   truncated=np.zeros(length, bool))


@pytest.fixture(scope="module")
def square_store(tmp_path_factory) -> EpisodeStore:
    root = tmp_path_factory.mktemp("squares")
    store = EpisodeStore.create(root, env_id="test/Squares-v0",
                                observation_space=spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8),
                                action_space=spaces.Discrete(4, start=1))
    rng = np.random.default_rng(0)
    for i in range(12):
        store.add(_episode(rng, 40), name=f"ep-{i:02d}")
    return store


@pytest.fixture(scope="module")
def trained(square_store, tmp_path_factory):
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("idm-cache")
    model, info = load_or_train_idm(square_store, cache, TINY, log=None)
    return model, info, cache


def test_idm_learns_a_visible_action_and_is_cached(square_store, trained):
    model, info, cache = trained
    assert info["trained_now"]
    held_out = Transitions(square_store, square_store.split("val"))
    assert len(held_out) > 0
    a, b, y = held_out.gather(np.arange(len(held_out)))
    assert y.min() >= 0 and y.max() <= 3  # class indices, the space's start subtracted
    predicted = model.predict(a, b)
    table = accuracy_table(predicted, y, 4, ["left", "right", "up", "down"])
    assert table["accuracy"] > 0.9, table
    # the second call loads the cached model (same weights, same predictions)
    cached, info2 = load_or_train_idm(square_store, cache, TINY, log=None)
    assert not info2["trained_now"] and info2["path"] == info["path"]
    np.testing.assert_array_equal(cached.predict(a, b), predicted)
    # another setting is another model
    other = IDMConfig(**{**TINY.to_dict(), "steps": 2})
    _, info3 = load_or_train_idm(square_store, cache, other, log=None)
    assert info3["trained_now"] and info3["path"] != info["path"]


def test_idm_on_shuffled_pairs_is_at_chance(square_store, trained):
    """The IDM reads the change between the frames: the same frames with the actions of other
    transitions must score near chance (guards against a test that cannot fail)."""
    model = trained[0]
    data = Transitions(square_store, square_store.split("val"))
    a, b, y = data.gather(np.arange(len(data)))
    shuffled = np.random.default_rng(1).permutation(y)
    assert accuracy_table(model.predict(a, b), shuffled, 4)["accuracy"] < 0.5


def test_idm_needs_a_discrete_space(tmp_path):
    box = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ValueError, match="Discrete"):
        num_discrete_actions(box)
    store = EpisodeStore.create(tmp_path / "box", env_id="test/Box-v0",
                                observation_space=spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8),
                                action_space=box)
    with pytest.raises(ValueError, match="Discrete"):
        load_or_train_idm(store, tmp_path / "cache", TINY, log=None)


def test_forward_shapes_and_errors():
    model = InverseDynamicsModel(5, TINY)
    frames = torch.zeros(3, 48, 40, 3, dtype=torch.uint8)
    assert model(frames, frames).shape == (3, 5)  # any frame size (pooled to a fixed grid)
    with pytest.raises(ValueError, match="frame batches"):
        model(frames, frames[:, :32])


def test_accuracy_table_counts_per_action():
    table = accuracy_table(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 4, list("abcd"))
    assert table["accuracy"] == pytest.approx(0.75)
    assert table["per_action"]["c"] == {"count": 2, "accuracy": 0.5}
    assert table["per_action"]["d"]["count"] == 0 and np.isnan(table["per_action"]["d"]["accuracy"])
    assert table["macro_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
