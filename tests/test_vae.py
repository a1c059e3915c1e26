import json

import numpy as np
import pytest
import torch

from worldsim.data.store import Episode, EpisodeStore, WindowDataset
from worldsim.models.vae import VAE, VAEConfig
from worldsim.training.encode import encode_dataset, latent_tag
from worldsim.training.encode import main as encode_main

CONFIGS = {
    "f4-stem2": VAEConfig(factor=4, latent_channels=4, channels=(8, 16), groups=4),
    "f4-stem1": VAEConfig(factor=4, latent_channels=4, channels=(8, 8, 16), groups=4),
    "f4-stem4": VAEConfig(factor=4, latent_channels=4, channels=(16,), groups=4),
    "f8-stem2": VAEConfig(factor=8, latent_channels=8, channels=(8, 16, 16), groups=4),
    "f8-stem8": VAEConfig(factor=8, latent_channels=4, channels=(16,), groups=4),
}


def crafter_store(path, episodes=3, steps=24):
    """A small real Crafter dataset (random actions)."""
    import crafter
    from gymnasium.spaces import Box, Discrete

    store = EpisodeStore.create(path, env_id="worldsim/Crafter-v0",
                                observation_space=Box(0, 255, (64, 64, 3), np.uint8),
                                action_space=Discrete(17))
    rng = np.random.default_rng(0)
    for e in range(episodes):
        env = crafter.Env(seed=e, length=steps)
        frames, actions = [env.reset()], rng.integers(0, 17, steps)
        for a in actions:
            frames.append(env.step(int(a))[0])
        T = len(frames) - 1
        store.add(Episode(np.stack(frames), {"action": actions[:T]}, np.zeros(T, np.float32),
                          np.zeros(T, bool), np.arange(T) == T - 1), name=f"ep-{e}")
    return store


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_round_trip_shapes(name, size):
    cfg = CONFIGS[name]
    vae = VAE(cfg).eval()
    H, W = size
    frames = torch.randint(0, 256, (2, 3, H, W, 3), dtype=torch.uint8)
    z = vae.encode_frames(frames)
    C, h, w = vae.latent_shape(H, W)
    assert z.shape == (2, 3, C, h, w) == (2, 3, cfg.latent_channels, H // cfg.factor,
                                          W // cfg.factor)
    assert z.dtype == torch.float32
    out = vae.decode_frames(z)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    # the float API and the training pass agree on shapes too
    x = torch.rand(2, 3, H, W) * 2 - 1
    recon, posterior = vae(x)
    assert recon.shape == x.shape and posterior.mean.shape == (2, C, h, w)
    assert vae.decode(vae.encode(x)).shape == x.shape


def test_bad_sizes_and_inputs_are_named():
    vae = VAE(CONFIGS["f8-stem2"])
    with pytest.raises(ValueError, match="60x64 is not divisible by the VAE's spatial factor 8"):
        vae.encode_frames(torch.zeros(1, 60, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected uint8 frames"):
        vae.encode_frames(torch.zeros(1, 64, 64, 3))
    with pytest.raises(ValueError, match="expected latents"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="factor 4 allows 1 to 3 levels"):
        VAEConfig(factor=4, channels=(8, 16, 16, 16))
    with pytest.raises(ValueError, match="power of 2"):
        VAEConfig(factor=6)
    assert [VAEConfig(factor=8, channels=c).stem_factor for c in [(8,), (8, 8), (8, 8, 8, 8)]] \
        == [8, 4, 1]
    with pytest.raises(ValueError, match="stem_factor 2 disagrees"):
        VAEConfig(factor=4, channels=(16,), stem_factor=2)


def test_calibration_gives_unit_variance_latents():
    torch.manual_seed(0)
    vae = VAE(CONFIGS["f4-stem2"]).eval()
    frames = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    stats = vae.calibrate(frames.numpy(), batch_size=5)
    assert len(stats["latent_std"]) == 4
    z = vae.encode_frames(frames)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    # scaling is invertible: decoding scaled latents equals decoding the raw posterior mean
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(vae.decode(vae.encode(x)), vae.decoder(vae.posterior(x).mean),
                          atol=1e-5)


def test_encode_writes_latents_of_the_right_shape(tmp_path):
    store = crafter_store(tmp_path / "data", episodes=2, steps=10)
    torch.manual_seed(0)
    vae = VAE(CONFIGS["f4-stem2"]).eval()
    vae.calibrate(store.load("ep-0").frames)
    vae.save(tmp_path / "vae")
    encode_main(["--vae", str(tmp_path / "vae"), "--data", str(tmp_path / "data"),
                 "--batch", "4", "--threads", "1"])
    tag = latent_tag(vae)
    for name in store.names:
        latents = store.load_latents(tag, name)
        assert latents.dtype == np.float16
        assert latents.shape == (store.length(name) + 1, 4, 16, 16)
        expected = vae.encode_frames(store.load(name).frames).numpy()
        np.testing.assert_allclose(latents, expected, atol=2e-2, rtol=1e-2)
    meta = json.loads((store.latent_dir(tag) / "vae.json").read_text())
    assert meta["latent_shape"] == [4, 16, 16] and meta["fingerprint"].startswith(tag)
    assert meta["latent_scale"] == pytest.approx(vae.latent_scale.tolist())
    # the cache feeds the window dataset, and a second run skips what is done
    window = WindowDataset(store, "all", length=4, latents=tag)[0]
    assert window["observations"].shape == (4, 4, 16, 16)
    summary = encode_dataset(vae, store, batch=4, progress=False)
    assert summary["episodes"] == 0 and summary["skipped"] == 2
