import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.data.store import Episode, EpisodeStore
from worldsim.models.vae import VAE, VAEConfig
from worldsim.training.checkpoint import CheckpointError, load_checkpoint
from worldsim.training.loop import TrainConfig, Trainer, checkpoint_dirs, lr_at
from worldsim.training.train_vae import TrainVAEConfig, VAELossConfig, VAETask

TINY = VAEConfig(factor=4, latent_channels=3, channels=(8, 16), groups=4)
TINY_ARGS = ["--vae.channels", "8", "16", "--vae.groups", "4", "--vae.latent-channels", "3",
             "--eval-frames", "16", "--calibration-frames", "16", "--eval-batch", "16",
             "--train.batch-size", "4", "--train.no-progress", "--train.eval-every", "0",
             "--train.checkpoint-every-min", "0", "--train.threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small real Crafter dataset: 4 episodes of 24 random steps."""
    import crafter
    from gymnasium.spaces import Box, Discrete

    path = tmp_path_factory.mktemp("crafter")
    store = EpisodeStore.create(path, env_id="worldsim/Crafter-v0",
                                observation_space=Box(0, 255, (64, 64, 3), np.uint8),
                                action_space=Discrete(17))
    rng = np.random.default_rng(0)
    for e in range(4):
        env = crafter.Env(seed=e, length=24)
        frames, actions = [env.reset()], rng.integers(0, 17, 24)
        for a in actions:
            frames.append(env.step(int(a))[0])
        store.add(Episode(np.stack(frames), {"action": actions}, np.zeros(24, np.float32),
                          np.zeros(24, bool), np.arange(24) == 23), name=f"ep-{e}")
    assert store.split("val") and store.split("train")
    return path


def _task(data, out, steps, **train):
    cfg = TrainVAEConfig(data=data, out=out, vae=TINY, eval_frames=16, calibration_frames=16,
                         eval_batch=16,
                         train=TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=0,
                                           eval_every=0, checkpoint_every_min=0, log_every=1,
                                           progress=False, bf16=False, **train))
    torch.manual_seed(cfg.train.seed)
    return cfg, VAETask(cfg, torch.device("cpu"))


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    # with a time budget the decay follows whichever runs out first
    timed = TrainConfig(steps=100, lr=1.0, warmup_steps=0, min_lr_ratio=0.0, time_limit_min=1)
    assert lr_at(10, timed, elapsed_s=30.0) == pytest.approx(0.5)
    assert lr_at(50, timed, elapsed_s=6.0) == pytest.approx(0.5)


def test_tiny_training_run_loss_falls_and_writes_a_loadable_checkpoint(data, tmp_path):
    cfg, task = _task(data, tmp_path / "run", steps=40)
    trainer = Trainer(task, cfg.train, cfg.out)
    result = trainer.run()
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    # the run directory: one checkpoint with metrics, TensorBoard events, an image grid
    (ckpt,) = checkpoint_dirs(cfg.out)
    assert ckpt.name == "step-00000040" and result.checkpoint == ckpt
    config, tensors = load_checkpoint(ckpt)
    assert set(tensors) == {"model", "ema", "optimizer", "rng"}
    assert config["kind"] == "vae" and config["state"]["step"] == 40
    assert {"psnr", "ssim"} <= set(config["metrics"])
    assert config["data"]["fingerprint"] and config["versions"]["torch"] == torch.__version__
    assert list((cfg.out / "tb").iterdir()) and (cfg.out / "images/reconstructions.png").exists()
    assert json.loads((cfg.out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    # the EMA weights load as a calibrated VAE straight from the run directory
    vae = VAE.from_checkpoint(cfg.out)
    assert not torch.allclose(vae.latent_scale, torch.ones(3))
    assert torch.equal(vae.latent_scale, tensors["ema"]["latent_scale"])


def test_time_limit_stops_early_with_a_final_checkpoint(data, tmp_path):
    cfg, task = _task(data, tmp_path / "run", steps=10_000, time_limit_min=0.002)
    result = Trainer(task, cfg.train, cfg.out).run()
    assert 0 < result.step < 10_000 and result.elapsed_s >= 0.12
    assert checkpoint_dirs(cfg.out)[-1].name == f"step-{result.step:08d}"
    assert result.metrics["step"] == result.step
    # resuming a run whose time is spent does nothing
    cfg, task = _task(data, tmp_path / "run", steps=10_000, time_limit_min=0.002)
    assert Trainer(task, cfg.train, cfg.out).run().step == result.step


def test_resume_continues_exactly_and_refuses_other_settings(data, tmp_path):
    # uninterrupted: 12 steps; interrupted: 6 steps, then a new process-like Trainer to 12
    cfg, task = _task(data, tmp_path / "full", steps=12, lr_schedule="constant")
    Trainer(task, cfg.train, cfg.out).run()
    cfg, task = _task(data, tmp_path / "split", steps=6, lr_schedule="constant")
    Trainer(task, cfg.train, cfg.out).run()
    cfg, task = _task(data, tmp_path / "split", steps=12, lr_schedule="constant")
    trainer = Trainer(task, cfg.train, cfg.out)
    trainer.run()
    assert trainer.history[0]["step"] == 7  # it started from the checkpoint at step 6
    _, full = load_checkpoint(checkpoint_dirs(tmp_path / "full")[-1])
    _, split = load_checkpoint(checkpoint_dirs(tmp_path / "split")[-1])
    for group in ("model", "ema"):
        for key, value in full[group].items():
            torch.testing.assert_close(split[group][key], value, atol=1e-5, rtol=1e-4)

    # a different loss weight or batch size is not the same run
    cfg, task = _task(data, tmp_path / "split", steps=20, lr_schedule="constant")
    task.cfg.loss = VAELossConfig(kl=1e-3)
    with pytest.raises(CheckpointError, match=r"task\.loss\.kl: checkpoint 1e-06, now 0\.001"):
        Trainer(task, cfg.train, cfg.out).run()
    cfg, task = _task(data, tmp_path / "split", steps=20, lr_schedule="cosine")
    with pytest.raises(CheckpointError, match=r"train\.lr_schedule"):
        Trainer(task, cfg.train, cfg.out).run()


def _cli(data, out, steps, extra=()):
    return [sys.executable, "-m", "worldsim.cli", "train", "vae", "--data", str(data),
            "--out", str(out), "--train.steps", str(steps), *TINY_ARGS, *extra]


def test_resume_after_kill_9(data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "WORLDSIM_THREADS": "1"}
    proc = subprocess.Popen(_cli(data, out, 100_000, ["--train.checkpoint-every", "5"]),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint_dirs(out):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = int(checkpoint_dirs(out)[-1].name.split("-")[1])
    target = last + 7
    done = subprocess.run(_cli(data, out, target), env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"resuming from {checkpoint_dirs(out)[0].parent}" in done.stdout
    final = checkpoint_dirs(out)[-1]
    assert final.name == f"step-{target:08d}"
    config, _ = load_checkpoint(final)
    assert config["state"]["step"] == target and config["metrics"]["step"] == target
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_process_ddp_follows_single_process(data, tmp_path):
    """The same global batch (8) in one process and on 2 gloo processes: each rank draws its
    own frames, so the runs are not identical, but their losses must follow each other
    (tolerance: mean of the last 5 per-step losses within 25%); only rank 0 writes."""
    steps = 20
    cfg, task = _task(data, tmp_path / "one", steps=steps)
    cfg.train.batch_size = 8
    cfg.train.lr_schedule = "cosine"
    single = Trainer(task, cfg.train, cfg.out)
    single.run()
    env = {**os.environ, "WORLDSIM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    args = ["--train.batch-size", "8", "--train.log-every", "1", "--train.no-bf16",
            "--train.lr", "3e-3", "--train.warmup-steps", "0"]
    ddp = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2",
                          *_cli(data, tmp_path / "two", steps, args)[1:]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "two" / "tb"))
    acc.Reload()
    two = [e.value for e in acc.Scalars("train/loss")]
    one = [h["loss"] for h in single.history]
    assert len(one) == len(two) == steps
    assert np.mean(two[-5:]) < 0.8 * np.mean(two[:5])
    assert np.mean(two[-5:]) == pytest.approx(np.mean(one[-5:]), rel=0.25)
    assert len(list((tmp_path / "two" / "tb").iterdir())) == 1  # one writer: rank 0
    (ckpt,) = checkpoint_dirs(tmp_path / "two")
    config, _ = load_checkpoint(ckpt)
    assert config["state"]["world_size"] == 2 and config["state"]["step"] == steps


def test_decoder_refit_keeps_the_latent_space_and_learns_the_round_trip(data, tmp_path):
    """`--init-from VAE --decoder-only`: the encoder and statistics stay bit for bit, the
    result names the latent space of the VAE it came from (so models trained on those latents
    still load with it), the round-trip term falls, and a checkpoint whose encoder was changed
    after the fact is refused by name."""
    cfg, task = _task(data, tmp_path / "base", steps=30)
    Trainer(task, cfg.train, cfg.out).run()
    base = VAE.from_checkpoint(cfg.out)
    refit_cfg = TrainVAEConfig(
        data=data, out=tmp_path / "refit", init_from=cfg.out, decoder_only=True,
        latent_noise=0.1, loss=VAELossConfig(round_trip=1.0), round_trips=2, eval_frames=16,
        calibration_frames=16, eval_batch=16, round_trip_frames=8,
        train=TrainConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=0,
                          checkpoint_every_min=0, log_every=1, progress=False, bf16=False))
    trainer = Trainer(VAETask(refit_cfg, torch.device("cpu")), refit_cfg.train, refit_cfg.out)
    result = trainer.run()
    trips = [h["round_trip"] for h in trainer.history]
    assert np.mean(trips[-5:]) < np.mean(trips[:5])
    assert {"psnr_round_trip_1", "psnr_round_trip_10"} <= set(result.metrics)
    refit = VAE.from_checkpoint(refit_cfg.out)
    assert refit.fingerprint() != base.fingerprint()  # the decoder moved
    assert refit.encoder_fingerprint() == base.encoder_fingerprint()
    assert refit.latent_fingerprint() == base.latent_fingerprint() == base.fingerprint()
    frames = np.stack([EpisodeStore(data).load(n).frames[0] for n in EpisodeStore(data).names])
    assert torch.equal(refit.encode_frames(frames), base.encode_frames(frames))
    # saved standalone (as a bundle does) it still names the latent space it keeps
    refit.save(tmp_path / "standalone")
    assert VAE.from_checkpoint(tmp_path / "standalone").latent_fingerprint() == base.fingerprint()
    # an encoder changed after the fact no longer matches what the checkpoint claims
    with torch.no_grad():
        next(refit.encoder.parameters()).add_(0.01)
    refit.latent_space = None  # save() would record the new encoder; write the old claim
    config = {**refit.describe(), "latent_space": {"fingerprint": base.fingerprint(),
                                                   "encoder": base.encoder_fingerprint()}}
    from worldsim.training.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "tampered", config, {"model": refit.state_dict()})
    with pytest.raises(CheckpointError, match="encoder weights or latent statistics differ"):
        VAE.from_checkpoint(tmp_path / "tampered")
    with pytest.raises(ValueError, match="--init-from"):
        VAETask(TrainVAEConfig(data=data, out=tmp_path / "x", decoder_only=True),
                torch.device("cpu"))
