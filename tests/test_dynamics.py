import json
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldsim.diffusion.edm import OffsetDenoiser, add_noise, append_dims, get_scalings
from worldsim.models.dit import Conditioning, dit_tiny
from worldsim.models.dynamics import (
    DynamicsConfig,
    DynamicsModel,
    HeadsConfig,
    RewardTerminationHead,
    reward_class_weights,
    reward_support_from_data,
    termination_pos_weight,
    two_hot,
)
from worldsim.models.kv_cache import KVCache

C, H, W = 4, 8, 8
# Synthetic game: a blob on a 4x4 grid of 2x2-latent-pixel cells, moved by Discrete(5)
# actions (no-op, up, down, left, right; wrapping); reward 1 for moving into the corner cell.
MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


def render(cells: torch.Tensor) -> torch.Tensor:
    """cells (..., 2) -> latents (..., C, H, W): blob in channel 0, a fixed gradient in 1."""
    x = torch.full((*cells.shape[:-1], C, H, W), -0.5)
    x[..., 1, :, :] = torch.linspace(-1, 1, W)
    grid = torch.arange(H) // 2
    blob = ((grid[:, None] == cells[..., 0, None, None])
            & (grid[None, :] == cells[..., 1, None, None]))
    x[..., 0, :, :] = torch.where(blob, 1.5, -0.5)
    return x


def synthetic_batch(B: int, T: int, g: torch.Generator):
    cells = torch.randint(0, 4, (B, 2), generator=g)
    actions = torch.randint(0, 5, (B, T - 1), generator=g)
    trajectory = [cells]
    for t in range(T - 1):
        cells = (cells + MOVES[actions[:, t]]) % 4
        trajectory.append(cells)
    trajectory = torch.stack(trajectory, 1)
    rewards = ((trajectory[:, 1:] == 0).all(-1) & (actions != 0)).float()
    terminated = torch.zeros(B, T - 1, dtype=torch.bool)
    return render(trajectory), {"action": actions}, rewards, terminated


def tiny_model(**heads) -> DynamicsModel:
    torch.manual_seed(0)
    config = DynamicsConfig(dit=dit_tiny(window=4), heads=HeadsConfig(**heads))
    return DynamicsModel(config, spaces.Discrete(5))


def test_tiny_training_run_loss_falls():
    model = tiny_model(reward_support=(0.0, 1.0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(120):
        loss, metrics = model.loss(*synthetic_batch(8, 4, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    mean = lambda key, part: float(np.mean([m[key] for m in part]))  # noqa: E731
    for key in ("diffusion_loss", "reward_loss", "loss"):
        assert mean(key, history[-20:]) < 0.5 * mean(key, history[:10]), key


def test_loss_metrics_gradients_and_layouts():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    latents, actions, rewards, terminated = synthetic_batch(3, 5, g)
    loss, metrics = model.loss(latents, actions, rewards, terminated, generator=g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(metrics) == {"loss", "diffusion_loss", "reward_loss", "termination_loss",
                            "reward_mae"}
    loss.backward()
    assert model.action_encoder.null.grad is not None  # frame 0's "no action" is trained
    # Same generator state -> same loss (all randomness comes from the generator).
    again, _ = model.loss(latents, actions, rewards, terminated,
                          generator=torch.Generator().manual_seed(0))
    first, _ = model.loss(latents, actions, rewards, terminated,
                          generator=torch.Generator().manual_seed(0))
    assert again.item() == first.item()
    # Windows longer than the attention window are fine (the window slides).
    long = synthetic_batch(2, 9, g)
    assert torch.isfinite(model.loss(*long, generator=g)[0])


def test_training_noise_levels_and_layout_choice():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    sigma, teacher_forcing = model.training_noise_levels(4000, 5, g)
    assert sigma.shape == (4000, 5) and teacher_forcing.shape == (4000,)
    assert (sigma[:, 1:] != sigma[:, :1]).float().mean() > 0.99  # every frame its own level
    share = model.config.teacher_forcing_prob
    assert abs(teacher_forcing.float().mean().item() - share) < 0.03


@pytest.mark.parametrize("from_seen,augmented", [(False, False), (True, True)])
def test_teacher_forcing_layout_is_the_inference_situation(from_seen, augmented):
    """In the teacher-forcing layout, noisy frame t is denoised exactly as the sampler
    denoises it at inference: attending to the cached frames 0..t-1 (at the context level,
    window 4) and to itself, reading frame t-1 as seen in context, and predicting the change
    from frame t-1 (clean, or as seen with `residual_from_seen`). Checked against the
    KV-cached network, frame by frame; frame 0 is its own predecessor and carries no loss.
    With context-noise augmentation the context frames carry the levels drawn for them."""
    model = tiny_model()
    model.config.residual_from_seen = from_seen
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    B, T = 2, 7
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(B, T, C, H, W, generator=g)
    noise, context_noise = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    sigma = torch.rand(B, T, generator=g) * 5 + 0.05
    emb = model.embed_actions({"action": torch.randint(0, 5, (B, T - 1), generator=g)}, T)

    def shifted(frames):
        return torch.cat([frames[:, :1], frames[:, :-1]], 1)

    dcfg = model.config.diffusion
    ctx_sigma = (torch.rand(B, T, generator=g) * 0.5 + dcfg.context_sigma if augmented
                 else torch.full((B, T), dcfg.context_sigma))
    with torch.no_grad():
        frame_loss, head_tokens = model._denoising_pass(
            x0, emb, sigma, noise, context_noise, teacher_forcing=True,
            context_sigma=ctx_sigma if augmented else None)
        assert frame_loss.shape == (B, T - 1)
        x_ctx = add_noise(x0, ctx_sigma, context_noise)
        reference = x_ctx if from_seen else x0  # what each frame's change is taken from
        for t in range(1, T):
            cache = KVCache.empty(B, model.config.dit.window, model.config.dit.depth)
            s = get_scalings(ctx_sigma[:, :t], dcfg.sigma_data)
            model.dit.features(append_dims(s.c_in, 5) * (x_ctx[:, :t]
                                                         - shifted(reference[:, :t])),
                               s.c_noise, Conditioning(emb[:, :t], cache,
                                                       previous=shifted(x_ctx[:, :t])))
            cache.commit(t)
            den = OffsetDenoiser(model.denoiser, reference[:, t - 1:t])
            x_t = add_noise(x0[:, t:t + 1], sigma[:, t:t + 1], noise[:, t:t + 1])
            denoised = den(x_t, sigma[:, t:t + 1],
                           Conditioning(emb[:, t:t + 1], cache, previous=x_ctx[:, t - 1:t]))
            weight = 1 / get_scalings(sigma[:, t], dcfg.sigma_data).c_out ** 2
            expected = weight * (denoised - x0[:, t:t + 1]).pow(2).flatten(1).mean(-1)
            torch.testing.assert_close(frame_loss[:, t - 1], expected, rtol=1e-4, atol=1e-5)
    assert head_tokens.shape == (B, T - 1, 16, 64)


def test_loss_rejects_misaligned_inputs():
    model = tiny_model()
    latents, actions, rewards, terminated = synthetic_batch(2, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"rewards and terminated of shape \(2, 3\)"):
        model.loss(latents, actions, rewards[:, :2], terminated)
    with pytest.raises(ValueError, match=r"need \(B, 3, \.\.\.\) actions"):
        model.loss(latents, {"action": actions["action"][:, :2]}, rewards, terminated)
    with pytest.raises(ValueError, match="at least 2 frames"):
        model.loss(latents[:, :1], {"action": actions["action"][:, :0]}, rewards[:, :0],
                   terminated[:, :0])


def test_rollout_shapes_determinism_and_ranges():
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    latents, actions, _, _ = synthetic_batch(2, 3, g)

    def rollout(seed):
        gen = torch.Generator().manual_seed(seed)
        state = model.start(latents, actions, gen)
        outs = [model.step(state, {"action": torch.tensor([1, 4])}, gen) for _ in range(3)]
        return torch.stack([o.latents for o in outs]), outs[-1]

    a, last = rollout(7)
    b, _ = rollout(7)
    c, _ = rollout(8)
    assert a.shape == (3, 2, C, H, W) and torch.equal(a, b) and not torch.equal(a, c)
    assert last.reward.shape == (2,) and last.termination_prob.shape == (2,)
    assert bool(((last.termination_prob >= 0) & (last.termination_prob <= 1)).all())
    assert last.state.reward_probs.shape == (2, 5)
    # A fresh model's denoiser is D(x) = c_skip x: the sample is the noise shrunk by c_skip.
    assert torch.isfinite(a).all()
    with pytest.raises(ValueError, match="3 actions for a rollout of 2 rows"):
        model.step(last.state, {"action": torch.tensor([1, 2, 3])})
    with pytest.raises(ValueError, match="unknown sampler"):
        model.step(last.state, {"action": torch.tensor([1, 2])}, sampler="ddpm")


def test_start_from_one_frame_without_actions():
    model = tiny_model().eval()
    state = model.start(torch.randn(2, 1, C, H, W), {"action": torch.zeros(2, 0, dtype=torch.long)})
    out = model.step(state, {"action": torch.tensor([0, 1])}, num_steps=2, sampler="heun")
    assert out.latents.shape == (2, C, H, W) and out.state.position.tolist() == [2, 2]
    # Without actions at all (image prompting); the same as an empty action array.
    a = model.start(torch.ones(2, 1, C, H, W), None, torch.Generator().manual_seed(0))
    b = model.start(torch.ones(2, 1, C, H, W), {"action": torch.zeros(2, 0, dtype=torch.long)},
                    torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.cache.keys[0], b.cache.keys[0])
    with pytest.raises(ValueError, match="need the 1 actions"):
        model.start(torch.ones(2, 2, C, H, W), None)


def test_dict_action_space_end_to_end():
    space = spaces.Dict({"camera": spaces.Box(-180.0, 180.0, (2,), np.float32),
                         "hotbar.1": spaces.Discrete(2), "forward": spaces.Discrete(2)})
    model = DynamicsModel(DynamicsConfig(dit=dit_tiny()), space)
    B, T = 2, 3
    actions = {"camera": torch.randn(B, T - 1, 2), "hotbar.1": torch.ones(B, T - 1, dtype=torch.long),
               "forward": torch.zeros(B, T - 1, dtype=torch.long)}
    loss, _ = model.loss(torch.randn(B, T, C, H, W), actions, torch.zeros(B, T - 1),
                         torch.zeros(B, T - 1, dtype=torch.bool))
    assert torch.isfinite(loss)
    state = model.start(torch.randn(B, T, C, H, W), actions)
    out = model.step(state, {k: v[:, 0] for k, v in actions.items()})
    assert out.latents.shape == (B, C, H, W)


def test_two_hot_round_trip():
    support = torch.tensor([-1.0, -0.1, 0.0, 0.1, 1.0])
    values = torch.tensor([0.0, 1.0, 0.9, -0.05, 1.1, -3.0, 0.1])
    target = two_hot(values, support)
    torch.testing.assert_close(target.sum(-1), torch.ones(7))
    torch.testing.assert_close(target @ support, values.clamp(-1, 1))
    assert target[0].tolist() == [0, 0, 1, 0, 0]


def test_heads_loss_weights_and_decoding():
    head = RewardTerminationHead(8, HeadsConfig(reward_support=(0.0, 1.0),
                                                reward_class_weights=(1.0, 5.0),
                                                termination_pos_weight=3.0))
    logits = torch.zeros(1, 2, 2)
    rewards = torch.tensor([[0.0, 1.0]])
    r_loss, t_loss = head.loss(logits, torch.zeros(1, 2), rewards, torch.tensor([[False, True]]))
    # Uniform logits: CE = ln 2 per transition, weighted 1 and 5.
    assert abs(r_loss.item() - np.log(2) * 3) < 1e-5
    assert abs(t_loss.item() - np.log(2) * 2) < 1e-5
    confident = torch.tensor([[[0.0, 3.0]]])
    assert head.decode(confident, "mode").item() == 1.0
    assert 0.9 < head.decode(confident, "mean").item() < 1.0
    with pytest.raises(ValueError, match="increasing"):
        RewardTerminationHead(8, HeadsConfig(reward_support=(1.0, 0.0)))


def test_weights_and_support_from_data():
    rewards = torch.cat([torch.zeros(990), torch.ones(10)])
    support = reward_support_from_data(rewards)
    assert support == (0.0, 1.0)
    weights = reward_class_weights(rewards, support)
    assert weights[1] > 5 * weights[0]
    freq = torch.tensor([0.99, 0.01])
    assert abs(float((freq * torch.tensor(weights)).sum()) - 1.0) < 1e-4
    assert termination_pos_weight(torch.tensor([True] + [False] * 99)) == pytest.approx(99**0.5)
    crafter = reward_support_from_data(torch.tensor([0.0, 1.0, -0.1, 0.1, 0.9, 0.0]))
    assert crafter == (-0.1, 0.0, 0.1, 0.9, 1.0)
    # more distinct values than max_values: the frequent ones and both extremes
    many = torch.tensor([0.0] * 50 + [-0.2] * 9 + [1.0] * 8 + [0.1] * 7 + [-0.7, 1.1, 0.6])
    assert reward_support_from_data(many, max_values=5) == (-0.7, -0.2, 0.0, 1.0, 1.1)


def test_config_round_trips_through_json_strictly():
    config = DynamicsConfig(dit=dit_tiny(window=6), heads=HeadsConfig(reward_class_weights=(1.0,) * 5))
    data = json.loads(json.dumps(config.to_dict()))
    assert DynamicsConfig.from_dict(data) == config
    data["dit"]["colour"] = 1
    with pytest.raises(ValueError, match=r"dit: unknown settings \['colour'\]"):
        DynamicsConfig.from_dict(data)
    del data["dit"]["colour"], data["diffusion"]["context_sigma"]
    with pytest.raises(ValueError, match="missing.*context_sigma"):
        DynamicsConfig.from_dict(data)


def test_state_dict_holds_only_learned_weights():
    model = tiny_model()
    keys = model.state_dict().keys()
    assert not any(k.endswith(("support", "class_weights", "pos_weight", "offsets")) for k in keys)
    clone = tiny_model()
    clone.load_state_dict(model.state_dict(), strict=True)


def test_event_share_and_hud_weight_of_dynamics_training(tiny_bundle, tmp_path):
    """--event-share draws that share of windows with an event; --hud-fraction/--hud-weight
    weight the bottom latent rows; both are recorded in the run's config."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig

    root = tiny_bundle.parent.parent
    cfg = TrainDynamicsConfig(data=root / "data", vae=root / "run-vae", out=tmp_path / "run",
                              init_from=tiny_bundle, event_share=0.5, hud_fraction=0.25,
                              hud_weight=3.0, train=tiny_train(2, 4), eval_windows=2,
                              eval_horizon=2, eval_context=2)
    ctx = setup(cfg.train)
    task = DynamicsTask(cfg, ctx.device)
    assert len(task.train_oversampled) > 0
    batch = task.sample_batch(np.random.default_rng(0), 400)
    has_event = ((batch["rewards"] != 0) | batch["terminated"]).any(1).float().mean().item()
    natural = len(task.train_oversampled) / len(task.train_set)
    assert natural < 0.4 and 0.4 < has_event < 0.6
    h = task.position_weight.shape[0]
    rows = int(np.ceil(0.25 * h))
    assert (task.position_weight[h - rows:] == 3.0).all() and (task.position_weight[:h - rows] == 1).all()
    assert {"event_share": 0.5, "hud_fraction": 0.25, "hud_weight": 3.0}.items() <= task.config().items()
    loss, metrics = task.loss(task.model, batch)
    assert torch.isfinite(loss) and metrics["diffusion_loss"] > 0
    with pytest.raises(ValueError, match="hud_weight"):
        DynamicsTask(TrainDynamicsConfig(data=root / "data", vae=root / "run-vae",
                                         out=tmp_path / "bad", hud_weight=0.0), ctx.device)


def test_init_window_widens_a_fine_tuned_models_window(tiny_bundle, tmp_path):
    """--init-window keeps every weight of the initial model and only lengthens its attention
    window (and the training windows): its denoiser on a short window is unchanged, and
    the run's config records the widening."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig
    from worldsim.world_model import load_dynamics

    root = tiny_bundle.parent.parent
    initial, _ = load_dynamics(tiny_bundle)
    wide = initial.config.dit.window + 2
    cfg = TrainDynamicsConfig(data=root / "data", vae=root / "run-vae", out=tmp_path / "run",
                              init_from=tiny_bundle, init_window=wide, train=tiny_train(2, 4),
                              eval_windows=2, eval_horizon=2, eval_context=2)
    task = DynamicsTask(cfg, setup(cfg.train).device)
    assert task.model.config.dit.window == wide and task.window == wide
    assert task.config()["init_window"] == wide
    for name, tensor in initial.state_dict().items():
        assert torch.equal(tensor, task.model.state_dict()[name]), name
    batch = task.sample_batch(np.random.default_rng(0), 2)
    assert batch["latents"].shape[1] == wide
    # On windows no longer than the initial model's, the two see the same frames.
    T = initial.config.dit.window
    window = (batch["latents"][:, :T], {k: v[:, :T - 1] for k, v in batch["actions"].items()},
              batch["rewards"][:, :T - 1], batch["terminated"][:, :T - 1])
    task.model.eval()
    with torch.no_grad():
        a, _ = initial.loss(*window, generator=torch.Generator().manual_seed(0))
        b, _ = task.model.loss(*window, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="needs --init-from"):
        DynamicsTask(TrainDynamicsConfig(data=root / "data", vae=root / "run-vae",
                                         out=tmp_path / "bad", init_window=wide),
                     setup(cfg.train).device)


def action_sensitive_model() -> DynamicsModel:
    """A tiny model whose output depends on the action: a fresh one does not (adaLN-Zero
    starts every block as the identity), so its zero-initialised weights are drawn small."""
    return make_action_sensitive(tiny_model())


def make_action_sensitive(model: DynamicsModel) -> DynamicsModel:
    """Draw a model's zero-initialised weights small and its action table large, in place."""
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.05)
        model.action_encoder.encoders[0].table.weight.normal_(std=1.0)
    return model


def test_action_dropout_teaches_an_action_free_prediction():
    """With action_dropout, training frames see the learned "no action" in place of their
    action: at a share close to 1 the loss no longer depends on the actions at all; without
    it, it does. Runs without dropout draw no extra random numbers."""
    g = torch.Generator().manual_seed(0)
    latents, actions, rewards, terminated = synthetic_batch(4, 5, g)
    other = {"action": (actions["action"] + 1) % 5}

    def loss(model, acts):
        return model.loss(latents, acts, rewards, terminated,
                          generator=torch.Generator().manual_seed(3))[0].item()

    plain = action_sensitive_model()
    dropped = tiny_model()
    dropped.load_state_dict(plain.state_dict())
    dropped.config = DynamicsConfig.from_dict({**plain.config.to_dict(),
                                               "action_dropout": 0.9999})
    assert loss(plain, actions) != loss(plain, other)
    assert loss(dropped, actions) == loss(dropped, other)
    # measuring how much the model reads the action turns the dropout off
    assert dropped.action_gain(latents, actions, rewards, terminated) == pytest.approx(
        plain.action_gain(latents, actions, rewards, terminated))
    assert plain.action_gain(latents, actions, rewards, terminated) != 0
    assert DynamicsConfig.from_dict({k: v for k, v in plain.config.to_dict().items()
                                     if k != "action_dropout"}).action_dropout == 0.0


def test_guidance_scales_what_the_action_changes():
    """Classifier-free guidance on the action: scale 1 is the plain step, scale 0 the
    prediction under "no action" (the same whatever the action), and the guided sample
    moves beyond the conditional one by (scale - 1) times its difference from that. The
    two passes leave the cache as a plain step does."""
    model = action_sensitive_model().eval()
    g = torch.Generator().manual_seed(0)
    latents, actions, _, _ = synthetic_batch(2, 3, g)

    def step(action, guidance, project=None):
        gen = torch.Generator().manual_seed(5)
        state = model.start(latents, actions, gen)
        out = model.step(state, {"action": torch.tensor(action)}, gen, num_steps=1,
                         guidance=guidance,
                         project=project)
        return out.latents, state

    conditional, _ = step([1, 4], 1.0)
    unconditional, _ = step([1, 4], 0.0)
    torch.testing.assert_close(unconditional, step([2, 0], 0.0)[0])
    assert not torch.allclose(conditional, unconditional)
    guided, guided_state = step([1, 4], 3.0)
    # one Euler step from sigma_max to 0 lands on the denoiser's output, which is linear
    # in the two predictions
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))
    # the same frame appended by a plain step leaves the same cache
    _, plain_state = step([1, 4], 1.0, project=lambda _: guided[:, None])
    for ours, plain in zip(guided_state.cache.keys, plain_state.cache.keys, strict=True):
        torch.testing.assert_close(ours, plain)
    assert guided_state.position.tolist() == plain_state.position.tolist()


def test_training_evaluation_measures_how_much_the_model_reads_the_action(tiny_bundle, tmp_path):
    """val_action_gain compares the validation loss under each window's own actions with the
    same windows and noise under another window's actions: exactly 0 for a fresh model (its
    output ignores every input) and not 0 once the output depends on the action."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig

    root = tiny_bundle.parent.parent
    cfg = TrainDynamicsConfig(data=root / "data", vae=root / "run-vae", out=tmp_path / "run",
                              dit=dit_tiny(), train=tiny_train(2, 4), eval_windows=4,
                              eval_horizon=2, eval_context=2)
    task = DynamicsTask(cfg, setup(cfg.train).device)
    metrics, _ = task.evaluate(task.model)
    assert metrics["val_action_gain"] == 0.0
    metrics, _ = task.evaluate(make_action_sensitive(task.model))
    assert metrics["val_action_gain"] != 0.0 and np.isfinite(metrics["val_action_gain"])


def test_noise_shift_moves_the_training_noise_levels_up(tiny_bundle, tmp_path):
    """--noise-shift adds to the mean of ln(sigma) of the training levels, from scratch and in a
    fine-tune (on top of the initial model's), and leaves the sampling levels alone."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig
    from worldsim.world_model import load_dynamics

    root = tiny_bundle.parent.parent
    tasks = {}
    for name, shift, init in (("plain", 0.0, None), ("shifted", 1.5, None),
                              ("fine-tune", 1.0, tiny_bundle)):
        cfg = TrainDynamicsConfig(data=root / "data", vae=root / "run-vae",
                                  out=tmp_path / name, dit=dit_tiny(), init_from=init,
                                  noise_shift=shift, train=tiny_train(2, 4))
        tasks[name] = DynamicsTask(cfg, setup(cfg.train).device)
    plain, shifted = (tasks[k].model.config.diffusion for k in ("plain", "shifted"))
    assert shifted.train_p_mean == pytest.approx(plain.train_p_mean + 1.5)
    assert shifted.sample_sigma_max == plain.sample_sigma_max
    generator = torch.Generator().manual_seed(0)
    medians = [tasks[k].model.training_noise_levels(4000, 2, generator)[0].log().median().item()
               for k in ("plain", "shifted")]
    assert medians[1] - medians[0] == pytest.approx(1.5, abs=0.1)
    initial = load_dynamics(tiny_bundle)[0].config.diffusion
    assert (tasks["fine-tune"].model.config.diffusion.train_p_mean
            == pytest.approx(initial.train_p_mean + 1.0))


def test_noise_shift_share_trains_on_a_mixture_of_shifted_and_default_levels(tiny_bundle,
                                                                              tmp_path):
    """--noise-shift-share moves only that share of the training levels; the rest keep the
    default log-normal. The mixture is stored with the model, resumes, and cannot be split
    again by a fine-tune."""
    from tiny_bundle import tiny_train

    from worldsim.diffusion.schedules import training_share_at_or_below
    from worldsim.training.loop import setup, train
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig
    from worldsim.world_model import load_dynamics

    root = tiny_bundle.parent.parent
    ctx = setup(tiny_train(2, 4))

    def config(name, **kwargs):
        return TrainDynamicsConfig(data=root / "data", vae=root / "run-vae", out=tmp_path / name,
                                   dit=dit_tiny(), train=tiny_train(2, 4), **kwargs)

    plain = DynamicsTask(config("plain"), "cpu").model.config.diffusion
    cfg = config("mixed", noise_shift=1.5, noise_shift_share=0.25)
    levels = DynamicsTask(cfg, "cpu").model.config.diffusion
    assert levels.train_p_mean == pytest.approx(plain.train_p_mean + 1.5)
    assert levels.train_second_share == pytest.approx(0.75)
    assert levels.train_second_p_mean == pytest.approx(plain.train_p_mean)
    train(DynamicsTask(cfg, "cpu"), cfg.train, cfg.out, ctx)
    model = load_dynamics(cfg.out)[0]
    assert model.config.diffusion == levels
    log_sigma = model.training_noise_levels(200, 50, torch.Generator().manual_seed(0))[0].log()
    median = plain.train_p_mean + 0.5
    expected = training_share_at_or_below(math.exp(median), p_mean=levels.train_p_mean,
                                          p_std=levels.train_p_std, second_share=0.75,
                                          second_p_mean=levels.train_second_p_mean)
    assert (log_sigma <= median).float().mean().item() == pytest.approx(expected, abs=0.02)
    shifted, default = (training_share_at_or_below(math.exp(median), p_mean=mean,
                                                   p_std=levels.train_p_std)
                        for mean in (levels.train_p_mean, plain.train_p_mean))
    assert expected == pytest.approx(0.25 * shifted + 0.75 * default) and shifted < default
    assert train(DynamicsTask(cfg, "cpu"), cfg.train, cfg.out, ctx).step == 2  # resumes
    with pytest.raises(ValueError, match="already are a mixture"):
        DynamicsTask(config("split", init_from=cfg.out, noise_shift=1.0,
                             noise_shift_share=0.5), "cpu")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        DynamicsTask(config("none", noise_shift=1.0, noise_shift_share=0.0), "cpu")


def test_round_trip_trains_on_the_latents_a_reencoding_dream_continues_from(tiny_bundle, tmp_path):
    """--round-trip replaces every training and validation window's latents by their VAE round
    trip (decode to uint8 frames, encode), the latents a re-encoding dream continues from;
    actions and rewards are those of the same windows."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig

    root = tiny_bundle.parent.parent
    tasks = {}
    for trip in (False, True):
        cfg = TrainDynamicsConfig(data=root / "data", vae=root / "run-vae",
                                  out=tmp_path / f"run-{trip}", dit=dit_tiny(), round_trip=trip,
                                  train=tiny_train(2, 4), eval_windows=2, eval_horizon=2,
                                  eval_context=2)
        tasks[trip] = DynamicsTask(cfg, setup(cfg.train).device)
    raw, tripped = (tasks[k].sample_batch(np.random.default_rng(0), 3) for k in (False, True))
    vae = tasks[True].vae
    expected = vae.encode_frames(vae.decode_frames(raw["latents"]))  # VAE.round_trip
    assert tripped["latents"].shape == raw["latents"].shape
    torch.testing.assert_close(tripped["latents"], expected)
    assert not torch.allclose(tripped["latents"], raw["latents"], atol=1e-3)  # a lossy trip
    torch.testing.assert_close(tripped["rewards"], raw["rewards"])
    val_raw, val_tripped = (tasks[k]._validation()["batch"]["latents"] for k in (False, True))
    torch.testing.assert_close(val_tripped, vae.encode_frames(vae.decode_frames(val_raw)))
    assert tasks[True].config()["round_trip"] is True
    loss, _ = tasks[True].loss(tasks[True].model, tripped)
    assert torch.isfinite(loss)


def test_context_noise_augmentation_and_the_change_from_the_seen_frame(tiny_bundle, tmp_path,
                                                                      monkeypatch):
    """--context-noise-max draws each context frame's training level log-uniform between the
    inference level and the maximum; --residual-from-seen takes the change from the frame as
    the network saw it, in training and in a rollout (an untrained model copies that frame).
    Both are stored with the model and resume; a maximum at or below the inference level is
    refused."""
    from tiny_bundle import tiny_train

    from worldsim.training.loop import setup, train
    from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig
    from worldsim.world_model import load_dynamics

    root = tiny_bundle.parent.parent
    ctx = setup(tiny_train(2, 4))

    def config(name, **kwargs):
        return TrainDynamicsConfig(data=root / "data", vae=root / "run-vae", out=tmp_path / name,
                                   dit=dit_tiny(), train=tiny_train(2, 4), **kwargs)

    plain = DynamicsTask(config("plain"), "cpu").model
    assert plain.training_context_levels(4, 3) is None
    assert "residual_from_seen" not in DynamicsTask(config("plain"), "cpu").config()["dynamics"]
    cfg = config("augmented", context_noise_max=0.5, residual_from_seen=True)
    train(DynamicsTask(cfg, "cpu"), cfg.train, cfg.out, ctx)
    model = load_dynamics(cfg.out)[0]
    assert model.config.residual_from_seen
    low = model.config.diffusion.context_sigma
    assert model.config.diffusion.train_context_sigma_max == 0.5
    levels = model.training_context_levels(200, 50, torch.Generator().manual_seed(0))
    assert levels.min() >= low and levels.max() <= 0.5
    median = math.sqrt(low * 0.5)  # log-uniform: half the levels below the geometric mean
    assert (levels <= median).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert train(DynamicsTask(cfg, "cpu"), cfg.train, cfg.out, ctx).step == 2  # resumes
    with pytest.raises(ValueError, match="must exceed the context noise level"):
        DynamicsTask(config("low", context_noise_max=low / 2), "cpu")
    with pytest.raises(ValueError, match="needs residual"):
        DynamicsConfig(residual=False, residual_from_seen=True)

    # A denoiser that predicts no change: the rollout lands on the frame the change is taken
    # from, the seen one (with its context noise) or the clean one.
    model = tiny_model()
    monkeypatch.setattr(DynamicsModel, "denoiser",
                        property(lambda self: lambda x, sigma, cond: torch.zeros_like(x)))
    context = torch.randn(2, 2, C, H, W, generator=torch.Generator().manual_seed(0))
    for from_seen in (False, True):
        model.config.residual_from_seen = from_seen
        state = model.start(context, {"action": torch.zeros(2, 1, dtype=torch.long)},
                            torch.Generator().manual_seed(1))
        clean, seen = state.last_latents.clone(), state.last_seen.clone()
        out = model.step(state, {"action": torch.zeros(2, dtype=torch.long)},
                         torch.Generator().manual_seed(2))
        torch.testing.assert_close(out.latents, seen if from_seen else clean)
        assert not torch.allclose(seen, clean, atol=0.01)
