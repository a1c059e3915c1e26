"""WorldModelEnv on the tiny bundle trained in this test run: the Gymnasium API (check_env),
determinism, branching, prompting, rendering, wrappers, registration and error messages."""

import json
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers worldsim/*)
import worldsim
from envs.world_model_env import (
    DEFAULT_CHECKPOINT,
    DreamState,
    WorldModelEnv,
    make_crafter_dream,
)

ACTIONS = [3, 5, 1, 0, 16]


@pytest.fixture(scope="module")
def wm(tiny_bundle):
    return worldsim.load(tiny_bundle, device="cpu")


def rollout(env, seed, actions, options=None):
    obs, _ = env.reset(seed=seed, options=options)
    out = [obs]
    for a in actions:
        out.append(env.step(a)[0])
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_spaces_come_from_the_bundle(wm):
    env = WorldModelEnv(wm)
    assert env.action_space == wm.action_space == spaces.Discrete(17)
    assert env.observation_space == wm.observation_space
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == wm.observation_space.shape
    assert info["step"] == 0 and 0 <= info["context_index"] < wm.num_start_contexts
    assert env.context_length == wm.context_frames

    latent = WorldModelEnv(wm, obs_mode="latent")
    obs, _ = latent.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == wm.latent_shape
    assert obs in latent.observation_space
    obs, reward, terminated, truncated, info = latent.step(2)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert info["step"] == 1 and 0.0 <= info["termination_prob"] <= 1.0
    assert info["reward_probs"].shape == latent.reward_support.shape
    assert info["reward_probs"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("obs_mode", ["rgb", "latent"])
def test_gymnasium_check_env_passes_without_warnings(tiny_bundle, obs_mode):
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tiny_bundle), obs_mode=obs_mode,
                   render_mode="rgb_array", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


def test_same_seed_same_frames_and_other_seed_other_frames(wm):
    env = WorldModelEnv(wm)
    first = rollout(env, 7, ACTIONS)
    assert same(first, rollout(env, 7, ACTIONS))
    assert same(first, rollout(WorldModelEnv(wm), 7, ACTIONS))  # a fresh env too
    assert not same(first, rollout(env, 8, ACTIONS))


def test_rgb_and_latent_observations_show_the_same_frames(wm):
    rgb = rollout(WorldModelEnv(wm), 3, ACTIONS[:3])
    latent = rollout(WorldModelEnv(wm, obs_mode="latent"), 3, ACTIONS[:3])
    decoded = [wm.decode(torch.from_numpy(z)[None])[0].numpy() for z in latent]
    assert same(rgb[:1], decoded[:1])  # the reset: the start latent's decode
    if wm.reencode:
        # A step shows the decode of the sampled latent; the latent observation, which the
        # rollout continues from, is that frame's encoding.
        encoded = [wm.encode(torch.from_numpy(f)[None])[0].numpy() for f in rgb[1:]]
        np.testing.assert_allclose(np.stack(encoded), np.stack(latent[1:]), atol=1e-5)
        assert not same(rgb[1:], decoded[1:])  # not the decode of the re-encoded latent
    else:
        assert same(rgb, decoded)


def test_branching_replays_the_same_frames_and_diverges_with_other_actions(wm):
    env = WorldModelEnv(wm, obs_mode="latent")
    env.reset(seed=1)
    env.step(2)
    state = env.get_state()
    assert isinstance(state, DreamState)
    branch = [env.step(a)[0] for a in ACTIONS]
    assert env.set_state(state) is not None
    assert same(branch, [env.step(a)[0] for a in ACTIONS])
    env.set_state(state)  # the snapshot stays usable for any number of branches
    again = [env.step(a) for a in ACTIONS]
    assert same(branch, [s[0] for s in again])
    assert again[-1][4]["step"] == 1 + len(ACTIONS)
    env.set_state(state)
    other = [env.step(a)[0] for a in [4, 4, 4, 4, 4]]
    assert not any(np.array_equal(x, y) for x, y in zip(branch, other, strict=True))


def test_set_state_rejects_foreign_objects(wm):
    env = WorldModelEnv(wm)
    with pytest.raises(gym.error.ResetNeeded):
        env.get_state()
    env.reset(seed=0)
    with pytest.raises(TypeError, match="DreamState"):
        env.set_state({"not": "a state"})


def test_truncation_termination_and_reward_modes(wm):
    env = WorldModelEnv(wm, max_episode_steps=2)
    env.reset(seed=0)
    assert env.step(0)[3] is False
    assert env.step(0)[3] is True
    # termination is "probability above the threshold"; the extremes pin it down
    always = WorldModelEnv(wm, termination_threshold=0.0)
    always.reset(seed=0)
    assert always.step(1)[2] is True
    never = WorldModelEnv(wm, termination_threshold=1.0)
    never.reset(seed=0)
    assert never.step(1)[2] is False

    mean = WorldModelEnv(wm, reward_mode="mean")
    mean.reset(seed=0)
    _, reward, _, _, info = mean.step(5)
    assert reward == pytest.approx(float(info["reward_probs"] @ mean.reward_support), abs=1e-6)
    mode = WorldModelEnv(wm, reward_mode="mode")
    mode.reset(seed=0)
    _, reward, _, _, info = mode.step(5)
    assert reward == pytest.approx(float(mode.reward_support[info["reward_probs"].argmax()]))
    with pytest.raises(ValueError, match="reward_mode"):
        WorldModelEnv(wm, reward_mode="median")


def test_prompting_with_a_start_context_equals_starting_from_it(wm):
    env = WorldModelEnv(wm)
    _, info = env.reset(seed=5)
    i = info["context_index"]
    shipped = rollout(env, 5, ACTIONS)
    options = {"frames": wm.start_frames[i], "actions": wm.start_actions["action"][i]}
    prompted = rollout(env, 5, ACTIONS, options=options)
    assert same(shipped, prompted)
    _, info = env.reset(seed=5, options=options)
    assert info["context_index"] == -1
    # as a list of actions too
    listed = {"frames": wm.start_frames[i], "actions": list(wm.start_actions["action"][i])}
    assert same(shipped, rollout(env, 5, ACTIONS, options=listed))


def test_prompting_with_one_image_of_another_size(wm):
    env = WorldModelEnv(wm)
    image = np.ascontiguousarray(wm.start_frames[0, -1, ::2, ::2])  # (32, 32, 3)
    obs, _ = env.reset(seed=0, options={"frames": image})
    assert obs.shape == wm.observation_space.shape
    obs, *_ = env.step(1)
    assert obs in env.observation_space


def test_prompt_errors_say_what_is_wrong(wm):
    env = WorldModelEnv(wm)
    frames = wm.start_frames[0]
    with pytest.raises(ValueError, match="uint8"):
        env.reset(options={"frames": frames.astype(np.float32)})
    with pytest.raises(ValueError, match=r"\(K, H, W, 3\)"):
        env.reset(options={"frames": frames[..., 0]})
    if len(frames) > 1:
        with pytest.raises(ValueError, match="actions taken between them"):
            env.reset(options={"frames": frames})
        with pytest.raises(ValueError, match="shape"):
            env.reset(options={"frames": frames, "actions": np.zeros(len(frames) + 3, int)})
        with pytest.raises(ValueError, match=r"integer in \[0, 17\)"):
            env.reset(options={"frames": frames, "actions": np.full(len(frames) - 1, 99)})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"frame": frames})


def test_invalid_action_says_what_the_space_expects(wm):
    env = WorldModelEnv(wm)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    for bad in (17, -1, "left", np.array([1, 2])):
        with pytest.raises(ValueError, match=r"Discrete\(17\).*integer in \[0, 17\)"):
            env.step(bad)
    env.step(np.int64(3))  # numpy integers are fine


def test_missing_and_corrupt_checkpoints_name_the_file(tiny_bundle, tmp_path):
    from worldsim.world_model import CheckpointError

    with pytest.raises(CheckpointError, match="no-such-bundle"):
        WorldModelEnv(tmp_path / "no-such-bundle")
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        gym.make("worldsim/Dream-v0")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    weights = next((broken / "dynamics").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=weights.name):
        WorldModelEnv(broken)


def test_render_modes(wm):
    env = WorldModelEnv(wm, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert np.array_equal(frame, obs) and frame is not obs
    latent = WorldModelEnv(wm, obs_mode="latent", render_mode="rgb_array")
    z, _ = latent.reset(seed=0)
    assert np.array_equal(latent.render(), obs)  # the same start frame, decoded
    latent.step(1)
    assert latent.render().shape == wm.observation_space.shape
    human = WorldModelEnv(wm, render_mode="human", window_size=128)  # SDL's dummy driver
    human.reset(seed=0)
    human.step(1)
    assert human.render() is None
    human.close()
    assert env.metadata["render_fps"] > 0
    with pytest.raises(ValueError, match="render_mode"):
        WorldModelEnv(wm, render_mode="ascii")


def test_bf16_autocast_runs_and_is_deterministic(wm):
    env = WorldModelEnv(wm, obs_mode="latent", bf16=True)
    first = rollout(env, 2, ACTIONS[:2])
    assert same(first, rollout(env, 2, ACTIONS[:2]))
    assert all(o in env.observation_space for o in first)



def test_bf16_frames_runs_the_frame_networks_in_bf16_and_the_dit_in_fp32(wm):
    """bf16="frames": the VAE under bf16 autocast, the DiT outside it; a wrong value names
    the choices."""
    seen: dict[str, set] = {"vae": set(), "dit": set()}

    def record(name):
        return lambda module, args: seen[name].add(torch.is_autocast_enabled("cpu"))

    hooks = [wm.vae.decoder.register_forward_pre_hook(record("vae")),
             wm.dynamics.dit.register_forward_pre_hook(record("dit"))]
    try:
        env = WorldModelEnv(wm, bf16="frames")
        frames = rollout(env, 2, ACTIONS[:2])
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"vae": {True}, "dit": {False}}
    assert same(frames, rollout(env, 2, ACTIONS[:2]))
    assert all(o in env.observation_space for o in frames)
    with pytest.raises(ValueError, match="bf16 must be True, False or 'frames'"):
        WorldModelEnv(wm, bf16="yes")

def test_standard_wrappers(wm, tmp_path):
    from gymnasium.wrappers import FrameStackObservation, ResizeObservation, TimeLimit

    env = TimeLimit(WorldModelEnv(wm, max_episode_steps=None), max_episode_steps=3)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(3)] == [False, False, True]

    stacked = FrameStackObservation(WorldModelEnv(wm), stack_size=3)
    obs, _ = stacked.reset(seed=0)
    assert obs.shape == (3, *wm.observation_space.shape)
    obs, *_ = stacked.step(1)
    assert obs in stacked.observation_space

    pytest.importorskip("cv2", reason="gymnasium's ResizeObservation resizes with OpenCV")
    small = ResizeObservation(WorldModelEnv(wm), (32, 32))
    obs, _ = small.reset(seed=0)
    assert obs.shape == (32, 32, 3) and obs in small.observation_space
    assert small.step(2)[0].shape == (32, 32, 3)


def test_record_video(wm, tmp_path):
    pytest.importorskip("moviepy", reason="gymnasium's RecordVideo writes through moviepy")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(WorldModelEnv(wm, render_mode="rgb_array", max_episode_steps=4),
                      str(tmp_path / "videos"), episode_trigger=lambda e: True,
                      disable_logger=True)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done = terminated or truncated
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 0


def test_registration(tiny_bundle):
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tiny_bundle), obs_mode="latent",
                   max_episode_steps=5, device="cpu")
    assert isinstance(env.unwrapped, WorldModelEnv)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    # gym.make gives max_episode_steps to its TimeLimit wrapper
    assert [env.step(0)[3] for _ in range(5)] == [False] * 4 + [True]
    env.close()


def test_crafter_dream_needs_the_bundled_checkpoint():
    if (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the default Crafter world model is installed")
    with pytest.raises(FileNotFoundError, match=r'worldsim/Dream-v0", checkpoint=PATH'):
        gym.make("worldsim/CrafterDream-v0")
    with pytest.raises(FileNotFoundError, match="crafter-default"):
        make_crafter_dream()


def test_crafter_dream_runs_the_bundled_checkpoint():
    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the default Crafter world model is not installed in this checkout")
    env = gym.make("worldsim/CrafterDream-v0")
    assert env.action_space == gym.spaces.Discrete(17)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    for action in (1, 2, 3):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.shape == (64, 64, 3) and isinstance(reward, float)
        assert isinstance(terminated, bool)
    env.close()


def test_an_untrained_world_model_steps_as_an_env():
    """WorldModel.untrained (random weights, for speed measurements before training)."""
    from tiny_bundle import TINY_VAE

    from worldsim.models.dit import dit_tiny
    from worldsim.models.dynamics import DynamicsConfig
    from worldsim.world_model import WorldModel

    box = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    wm = WorldModel.untrained(box, spaces.MultiDiscrete([3, 2]),
                              vae_config=TINY_VAE,
                              dynamics_config=DynamicsConfig(dit=dit_tiny(in_channels=8)),
                              device="cpu")
    assert wm.dynamics.config.dit.in_channels == wm.vae.latent_channels  # made to match
    env = WorldModelEnv(wm, obs_mode="latent")
    obs, _ = env.reset(seed=0)
    assert obs.shape == wm.latent_shape == (4, 8, 8)
    obs, *_ = env.step(np.array([2, 1]))
    assert obs in env.observation_space
    with pytest.raises(ValueError, match=r"MultiDiscrete"):
        env.step(np.array([3, 0]))


def test_bundle_sampler_defaults(tiny_bundle, tmp_path):
    """A bundle carries its default sampler steps; steps with the default equal steps that
    ask for that number explicitly, and other numbers still can be asked for."""
    from worldsim.training.loop import resolve_checkpoint
    from worldsim.world_model import build_bundle

    root = tiny_bundle.parent.parent
    path = build_bundle(tmp_path / "b", vae_checkpoint=resolve_checkpoint(root / "run-vae"),
                        dynamics_checkpoint=resolve_checkpoint(root / "run-dyn"),
                        data=root / "data", num_contexts=2, context_frames=2, num_steps=2)
    wm2 = worldsim.load(path, device="cpu")
    assert wm2.num_steps == 2 and wm2.sampler == "euler"
    assert worldsim.load(tiny_bundle, device="cpu").num_steps == 4
    latents = wm2.encode(wm2.start_frames[:1])
    actions = {k: v[:1] for k, v in wm2.start_actions.items()}

    def step(**kwargs):
        g = torch.Generator().manual_seed(0)
        state = wm2.start(latents, actions, g)
        return wm2.step(state, {"action": np.array([3])}, g, **kwargs).latents

    assert torch.equal(step(), step(num_steps=2))
    assert not torch.equal(step(), step(num_steps=4))
    with pytest.raises(ValueError, match="unknown sampler"):
        build_bundle(tmp_path / "c", vae_checkpoint=resolve_checkpoint(root / "run-vae"),
                     dynamics_checkpoint=resolve_checkpoint(root / "run-dyn"),
                     data=root / "data", num_contexts=2, context_frames=2, sampler="ddpm")


def test_bundle_sets_where_the_sampling_schedule_ends(tiny_bundle, tmp_path):
    """`sigma_min` in a bundle moves the sampler's middle levels: its 2-step dreams equal the
    dynamics model's own 2-step schedule sampled with that sigma_min, and differ from the
    model's default schedule. Out-of-range values are refused, naming the range."""
    from worldsim.diffusion.schedules import karras_sigmas
    from worldsim.training.loop import resolve_checkpoint
    from worldsim.world_model import build_bundle

    root = tiny_bundle.parent.parent
    parts = dict(vae_checkpoint=resolve_checkpoint(root / "run-vae"),
                 dynamics_checkpoint=resolve_checkpoint(root / "run-dyn"),
                 data=root / "data", num_contexts=2, context_frames=2, num_steps=2)
    plain = worldsim.load(build_bundle(tmp_path / "plain", **parts), device="cpu")
    dcfg = plain.dynamics.config.diffusion
    sigma_min = dcfg.sample_sigma_max / 20
    moved = worldsim.load(build_bundle(tmp_path / "moved", sigma_min=sigma_min, **parts),
                          device="cpu")
    assert moved.config["sampling"]["sigma_min"] == sigma_min
    assert moved.dynamics.config.diffusion.sample_sigma_min == sigma_min
    mid = karras_sigmas(2, sigma_min, dcfg.sample_sigma_max, dcfg.rho)[1]
    assert mid > karras_sigmas(2, dcfg.sample_sigma_min, dcfg.sample_sigma_max, dcfg.rho)[1]

    def step(wm):
        g = torch.Generator().manual_seed(0)
        latents = wm.encode(wm.start_frames[:1])
        state = wm.start(latents, {k: v[:1] for k, v in wm.start_actions.items()}, g)
        return wm.step(state, {"action": np.array([3])}, g).latents

    assert not torch.equal(step(plain), step(moved))
    plain.dynamics.config.diffusion = moved.dynamics.config.diffusion
    assert torch.equal(step(plain), step(moved))
    with pytest.raises(ValueError, match=r"sigma_min must lie in \(0, "):
        build_bundle(tmp_path / "bad", sigma_min=dcfg.sample_sigma_max * 2, **parts)


def test_bundle_takes_a_refitted_decoder(tiny_bundle, tmp_path):
    """A VAE whose decoder was refitted (`worldsim train vae --init-from --decoder-only`)
    bundles with the dynamics model trained on the original VAE's latents, draws the
    refitted decoder's frames, and encodes as before; a VAE with another encoder is refused."""
    import torch as _torch

    from worldsim.models.vae import VAE
    from worldsim.training.checkpoint import CheckpointError
    from worldsim.training.loop import TrainConfig, resolve_checkpoint, setup, train
    from worldsim.training.train_vae import TrainVAEConfig, VAELossConfig, VAETask
    from worldsim.world_model import build_bundle

    root = tiny_bundle.parent.parent
    cfg = TrainVAEConfig(data=root / "data", out=tmp_path / "refit", init_from=root / "run-vae",
                         decoder_only=True, latent_noise=0.1,
                         loss=VAELossConfig(round_trip=1.0), eval_frames=8,
                         calibration_frames=8, round_trip_frames=4,
                         train=TrainConfig(steps=3, batch_size=4, warmup_steps=0, eval_every=0,
                                           checkpoint_every_min=0, progress=False, bf16=False))
    train(VAETask(cfg, _torch.device("cpu")), cfg.train, cfg.out, setup(cfg.train))
    parts = dict(dynamics_checkpoint=resolve_checkpoint(root / "run-dyn"), data=root / "data",
                 num_contexts=2, context_frames=2)
    wm = worldsim.load(build_bundle(tmp_path / "b", vae_checkpoint=tmp_path / "refit",
                                    **parts), device="cpu")
    original = worldsim.load(tiny_bundle, device="cpu")
    assert wm.vae.fingerprint() == VAE.from_checkpoint(tmp_path / "refit").fingerprint()
    assert wm.vae.fingerprint() != original.vae.fingerprint()
    frames = wm.start_frames[:1]
    assert _torch.equal(wm.encode(frames), original.encode(frames))
    assert not _torch.equal(wm.decode(wm.encode(frames)), original.decode(original.encode(frames)))
    other = VAE(original.vae.cfg)  # a fresh encoder: another latent space
    other.save(tmp_path / "other")
    with pytest.raises(CheckpointError, match="trained on latents of VAE"):
        build_bundle(tmp_path / "c", vae_checkpoint=tmp_path / "other", **parts)


def test_reencoding_continues_from_the_vae_round_trip(tiny_bundle, tmp_path):
    """With re-encoding a step returns the VAE round trip of the latent it would sample
    without it (same noise), the rollout continues from that latent, and the bundle records
    the setting (on by default; a step may override it)."""
    wm = worldsim.load(tiny_bundle, device="cpu")
    assert wm.reencode  # build_bundle's default
    latents = wm.encode(wm.start_frames[:2])
    actions = {k: v[:2] for k, v in wm.start_actions.items()}

    def rollout(reencode, steps):
        g = torch.Generator().manual_seed(0)
        state = wm.start(latents, actions, g)
        return [wm.step(state, {"action": np.array([3, 1])}, g, reencode=reencode).latents
                for _ in range(steps)]

    plain, reencoded = rollout(False, 2), rollout(True, 2)
    torch.testing.assert_close(reencoded[0], wm.round_trip(plain[0]))
    assert (reencoded[0] - plain[0]).abs().max() > 1e-3  # the round trip is not the identity
    # The second step started from another latent, so it is not the round trip of the plain one.
    assert (reencoded[1] - wm.round_trip(plain[1])).abs().max() > 1e-3
    wm.reencode = True
    g = torch.Generator().manual_seed(0)
    state = wm.start(latents, actions, g)
    torch.testing.assert_close(wm.step(state, {"action": np.array([3, 1])}, g).latents,
                               reencoded[0])
    # A bundle written before the setting existed keeps the rollouts it was evaluated with.
    old = shutil.copytree(tiny_bundle, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["sampling"]["reencode"]
    (old / "config.json").write_text(json.dumps(config))
    assert not worldsim.load(old, device="cpu").reencode
