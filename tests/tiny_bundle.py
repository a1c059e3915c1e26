"""A tiny but real world model, trained inside the test run in seconds: real Crafter play ->
a small VAE -> its latent cache -> a tiny DiT -> a checkpoint bundle. Tests of everything that
consumes a bundle (world model, envs, play, eval, agents) build on it through the
`tiny_bundle` fixture in conftest.py."""

from __future__ import annotations

from pathlib import Path

from worldsim.data.collect import collect
from worldsim.models.dit import dit_tiny
from worldsim.models.vae import VAEConfig
from worldsim.training.loop import TrainConfig, setup, train
from worldsim.training.train_dynamics import DynamicsTask, TrainDynamicsConfig
from worldsim.training.train_vae import TrainVAEConfig, VAETask
from worldsim.world_model import build_bundle

TINY_VAE = VAEConfig(factor=4, latent_channels=4, channels=(16, 32), stem_factor=2, groups=4)


def tiny_train(steps: int, batch_size: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, warmup_steps=5,
                       eval_every=0, checkpoint_every_min=0, progress=False, bf16=False,
                       threads=1, log_every=10)


def make_tiny_dataset(root: Path, steps: int = 480) -> Path:
    data = root / "data"
    collect("worldsim/Crafter-v0", steps=steps, out=data, num_envs=1, seed=0, progress=False,
            max_episode_steps=60)
    return data


def make_tiny_bundle(root: Path, data: Path | None = None, dynamics_steps: int = 30) -> Path:
    """Returns the bundle directory root/run-dyn/bundle (plus root/data, root/run-vae)."""
    data = data or make_tiny_dataset(root)
    vae_cfg = TrainVAEConfig(data=data, out=root / "run-vae", vae=TINY_VAE,
                             train=tiny_train(30, 16), eval_frames=32, calibration_frames=64,
                             grid_frames=2)
    ctx = setup(vae_cfg.train)
    train(VAETask(vae_cfg, ctx.device), vae_cfg.train, vae_cfg.out, ctx)
    dyn_cfg = TrainDynamicsConfig(data=data, vae=root / "run-vae", out=root / "run-dyn",
                                  dit=dit_tiny(), train=tiny_train(dynamics_steps, 4),
                                  eval_windows=4, eval_horizon=2, eval_context=2,
                                  bundle_contexts=6)
    result = train(DynamicsTask(dyn_cfg, ctx.device), dyn_cfg.train, dyn_cfg.out, ctx)
    return build_bundle(root / "run-dyn" / "bundle", vae_checkpoint=root / "run-vae",
                        dynamics_checkpoint=result.checkpoint, data=data, num_contexts=6,
                        context_frames=2)


def make_labelled_dataset(bundle: Path, out: Path) -> Path:
    """A copy of the tiny bundle's dataset (real Crafter play, `make_tiny_bundle`) at `out`,
    with achievement labels recovered by replaying it."""
    import shutil

    from worldsim.data.achievements import label_achievements
    from worldsim.data.store import EpisodeStore

    shutil.copytree(bundle.parent.parent / "data", out)
    counts = label_achievements(out, progress=False)
    assert counts["failed"] == 0 and counts["labelled"] == len(EpisodeStore(out))
    return out


def make_pay_once_bundle(bundle: Path, labelled: Path, root: Path):
    """The tiny bundle's VAE and DiT with a reward model that pays each achievement once per
    episode (a tiny `worldsim train reward --achievements`, reading frame t and the action),
    bundled at root/bundle. Returns (bundle directory, the reward task, its training result)."""
    from worldsim.training.train_reward import RewardTask, TrainRewardConfig

    cfg = TrainRewardConfig(data=labelled, vae=bundle, out=root / "run-reward", width=16,
                            eval_plain=32, achievements=True, action_input=True,
                            next_frame_input=False, train=tiny_train(12, 8))
    ctx = setup(cfg.train)
    task = RewardTask(cfg, ctx.device)
    result = train(task, cfg.train, cfg.out, ctx)
    out = build_bundle(root / "bundle", vae_checkpoint=bundle.parent.parent / "run-vae",
                       dynamics_checkpoint=bundle / "dynamics", data=labelled, num_contexts=6,
                       context_frames=2, reward_checkpoint=cfg.out)
    return out, task, result
