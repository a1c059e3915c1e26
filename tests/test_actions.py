import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldsim.models.actions import build_action_encoder, mu_law
from worldsim.spaces import stack_actions

DIM = 32
B, T = 3, 4


@st.composite
def discrete_spaces(draw):
    return spaces.Discrete(draw(st.integers(1, 12)), start=draw(st.integers(-3, 3)))


@st.composite
def multidiscrete_spaces(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    size = int(np.prod(shape))
    nvec = np.array(draw(st.lists(st.integers(1, 5), min_size=size, max_size=size))).reshape(shape)
    start = np.array(draw(st.lists(st.integers(-2, 2), min_size=size, max_size=size))).reshape(shape)
    return spaces.MultiDiscrete(nvec, start=start)


@st.composite
def multibinary_spaces(draw):
    if draw(st.booleans()):
        return spaces.MultiBinary(draw(st.integers(1, 8)))
    return spaces.MultiBinary(list(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))))


@st.composite
def box_spaces(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    size = int(np.prod(shape))
    if draw(st.booleans()):  # integer boxes exist too
        low = np.array(draw(st.lists(st.integers(-20, 0), min_size=size, max_size=size)))
        span = np.array(draw(st.lists(st.integers(1, 40), min_size=size, max_size=size)))
        return spaces.Box(low.reshape(shape), (low + span).reshape(shape), dtype=np.int64)
    finite = st.floats(-100, 100, allow_nan=False, width=32)
    low = np.array(draw(st.lists(st.one_of(finite, st.just(-np.inf)), min_size=size,
                                 max_size=size)), dtype=np.float32)
    span = np.array(draw(st.lists(st.floats(0.0625, 200, width=32), min_size=size, max_size=size)),
                    dtype=np.float32)
    high = np.where(np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))),
                    np.inf, np.where(np.isfinite(low), low + span, span)).astype(np.float32)
    return spaces.Box(low.reshape(shape), high.reshape(shape), dtype=np.float32)


leaf_spaces = st.one_of(discrete_spaces(), multidiscrete_spaces(), multibinary_spaces(),
                        box_spaces())


@st.composite
def dict_spaces(draw):
    keys = draw(st.lists(st.sampled_from(["camera", "forward", "hotbar.1", "jump", "x", "craft"]),
                         min_size=1, max_size=4, unique=True))
    return spaces.Dict({k: draw(leaf_spaces) for k in keys})


any_space = st.one_of(leaf_spaces, dict_spaces())


def batch_of_samples(space, seed):
    """B*T samples of `space` stacked as the episode store keeps them: {key: (B, T, ...)}."""
    space.seed(seed)
    samples = [space.sample() for _ in range(B * T)]
    stacked = stack_actions(space, samples)
    return {k: torch.as_tensor(v).reshape(B, T, *v.shape[1:]) for k, v in stacked.items()}


def flat_rows(actions):
    """Each of the B*T actions as one float64 vector, to compare actions with each other."""
    return torch.cat([v.reshape(B * T, -1).double() for v in actions.values()], dim=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=any_space, seed=st.integers(0, 2**16))
def test_every_space_embeds_to_distinct_finite_vectors(space, seed):
    torch.manual_seed(seed)
    encoder = build_action_encoder(space, DIM)
    actions = batch_of_samples(space, seed)
    emb = encoder(actions)
    assert emb.shape == (B, T, DIM)
    assert torch.isfinite(emb).all()
    rows, flat = flat_rows(actions), emb.reshape(B * T, DIM)
    same_action = (rows[:, None] == rows[None]).all(-1)
    distance = (flat[:, None] - flat[None]).abs().amax(-1)
    # Distinct actions -> distinct embeddings; equal actions -> equal embeddings.
    assert bool((distance[~same_action] > 1e-7).all())
    assert bool((distance[same_action] < 1e-6).all())
    # Deterministic, and batch-independent (each frame embedded on its own).
    torch.testing.assert_close(encoder({k: v[:1, :2] for k, v in actions.items()}), emb[:1, :2])


@settings(max_examples=30, deadline=None)
@given(space=any_space, seed=st.integers(0, 2**16))
def test_null_frames_get_the_learned_no_action_vector(space, seed):
    encoder = build_action_encoder(space, DIM)
    actions = batch_of_samples(space, seed)
    null = torch.zeros(B, T, dtype=torch.bool)
    null[:, 0] = True
    emb = encoder(actions, null)
    torch.testing.assert_close(emb[:, 0], encoder.null.expand(B, DIM))
    torch.testing.assert_close(emb[:, 1:], encoder(actions)[:, 1:])
    # A null frame's values are ignored, even when they are outside the space.
    garbage = {k: v.clone() for k, v in actions.items()}
    for v in garbage.values():
        v[:, 0] = float("1e9") if v.is_floating_point() else torch.iinfo(v.dtype).max
    torch.testing.assert_close(encoder(garbage, null), emb)
    # "No action" differs from every real action.
    assert bool(((emb[:, 1:] - encoder.null).abs().amax(-1) > 1e-7).all())


@pytest.mark.parametrize("space", [
    spaces.Discrete(17),
    spaces.MultiDiscrete([3, 2, 2]),
    spaces.MultiBinary(4),
], ids=["discrete", "multidiscrete", "multibinary"])
def test_all_actions_of_small_spaces_are_distinct(space):
    if isinstance(space, spaces.Discrete):
        everything = torch.arange(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        everything = torch.cartesian_prod(*[torch.arange(n) for n in space.nvec])
    else:
        everything = torch.cartesian_prod(*[torch.arange(2)] * space.n)
    encoder = build_action_encoder(space, DIM)
    emb = encoder({"action": everything[None]})[0]
    distance = (emb[:, None] - emb[None]).abs().amax(-1) + torch.eye(len(emb))
    assert distance.min() > 1e-6


def minecraft_like_space():
    buttons = ["attack", "forward", "jump", *(f"hotbar.{i}" for i in range(1, 4))]
    return spaces.Dict({**{b: spaces.Discrete(2) for b in buttons},
                        "camera": spaces.Box(-180.0, 180.0, (2,), np.float32)})


def test_minecraft_buttons_and_camera():
    torch.manual_seed(0)
    space = minecraft_like_space()
    encoder = build_action_encoder(space, DIM)
    keys = list(space.spaces)
    base = {k: torch.zeros(1, 3, dtype=torch.long) for k in keys if k != "camera"}
    camera = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 90.0]]])  # no turn, 1 degree, 90
    emb = encoder({**base, "camera": camera})[0]
    small, large = (emb[1] - emb[0]).norm(), (emb[2] - emb[0]).norm()
    # mu-law companding keeps a one-degree turn visible next to a 90-degree one.
    assert small > 0.05 * large
    assert torch.isfinite(emb).all()
    # Keys interact through the mixer: the effect of "jump" depends on "forward".
    def with_(**on):
        acts = {k: torch.zeros(1, 1, dtype=torch.long) for k in keys if k != "camera"}
        for k in on:
            acts[k][:] = 1
        return encoder({**acts, "camera": torch.zeros(1, 1, 2)})[0, 0]
    effect_alone = with_(jump=1) - with_()
    effect_running = with_(jump=1, forward=1) - with_(forward=1)
    assert (effect_alone - effect_running).abs().max() > 1e-6


def test_mu_law_properties():
    x = torch.linspace(-1, 1, 101)
    y = mu_law(x)
    torch.testing.assert_close(y[[0, 50, 100]], torch.tensor([-1.0, 0.0, 1.0]))
    assert bool((y.diff() > 0).all())


def test_box_values_are_clipped_to_bounds():
    encoder = build_action_encoder(spaces.Box(-1.0, 1.0, (2,), np.float32), DIM)
    inside = encoder({"action": torch.tensor([[[1.0, -1.0]]])})
    outside = encoder({"action": torch.tensor([[[5.0, -7.0]]])})
    torch.testing.assert_close(inside, outside)


def test_bad_input_is_named():
    encoder = build_action_encoder(minecraft_like_space(), DIM)
    with pytest.raises(KeyError, match="camera"):
        encoder({"attack": torch.zeros(1, 1, dtype=torch.long)})
    disc = build_action_encoder(spaces.Discrete(3, start=1), DIM)
    with pytest.raises(ValueError, match=r"outside Discrete\(3, start=1\)"):
        disc({"action": torch.tensor([[0]])})
    with pytest.raises(ValueError, match="expected"):
        disc({"action": torch.tensor([[[1, 2]]])})
    with pytest.raises(ValueError, match="null mask"):
        disc({"action": torch.tensor([[1, 2]])}, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 or 1"):
        build_action_encoder(spaces.MultiBinary(2), DIM)({"action": torch.tensor([[[0, 2]]])})
    with pytest.raises(ValueError, match="finite"):
        build_action_encoder(spaces.Box(-1, 1, (1,)), DIM)({"action": torch.tensor([[[np.nan]]])})
    with pytest.raises(TypeError, match="Tuple"):
        build_action_encoder(spaces.Tuple([spaces.Discrete(2)]), DIM)
    with pytest.raises(TypeError, match="nested"):
        build_action_encoder(spaces.Dict({"a": spaces.Dict({"b": spaces.Discrete(2)})}), DIM)
