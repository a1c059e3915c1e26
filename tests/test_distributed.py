"""Dynamics training under torchrun: 2 gloo processes follow a 1-process run with the same
global batch, and a killed-and-restarted DDP run resumes where its last checkpoint stopped.
(The VAE's DDP test is in test_training_loop.py.)"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from worldsim.training.checkpoint import load_checkpoint
from worldsim.training.loop import checkpoint_dirs

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")

ENV = {**os.environ, "WORLDSIM_THREADS": "1", "OMP_NUM_THREADS": "1"}
TINY_DIT = ["--dit.width", "32", "--dit.depth", "1", "--dit.heads", "2", "--dit.window", "3"]


def _args(root, out, steps, batch=8):
    return ["-m", "worldsim.cli", "train", "dynamics", "--data", str(root / "data"),
            "--vae", str(root / "run-vae"), "--out", str(out), *TINY_DIT,
            "--train.steps", str(steps), "--train.batch-size", str(batch),
            "--train.lr", "3e-3", "--train.warmup-steps", "0", "--train.log-every", "1",
            "--train.eval-every", "10", "--train.checkpoint-every-min", "0",
            "--train.no-progress", "--train.no-bf16", "--no-bundle",
            "--eval-windows", "16", "--eval-horizon", "1", "--eval-context", "2"]


def _run(args, processes):
    launcher = ([sys.executable] if processes == 1 else
                ["torchrun", "--standalone", "--nproc-per-node", str(processes)])
    done = subprocess.run([*launcher, *args], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _losses(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def _validation_losses(out):
    """Validation diffusion loss at each evaluation: fixed windows and noise, so unlike the
    training losses (batches of 8 at random noise levels, which vary 5x from step to step) it
    compares two runs' weights rather than their draws. (The reward head's validation loss
    is left out: on this tiny dataset its few rare rewards make it rise as the head overfits.)"""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["val_diffusion_loss"] for line in lines]


def test_two_process_dynamics_follows_one_and_resumes(tiny_bundle, tmp_path):
    """Tolerance: each rank draws its own windows and noise, so the runs differ step by step;
    both validation diffusion losses must fall from step 10 to step 30 and agree within 10%
    there (measured: 1.032 vs 1.041). Then the DDP run is extended by 5 steps: it resumes from its checkpoint at step 30
    (world size 2) and only rank 0 writes."""
    root = tiny_bundle.parent.parent
    steps = 30
    _run(_args(root, tmp_path / "one", steps), 1)
    stdout = _run(_args(root, tmp_path / "two", steps), 2)
    assert "2 process(es)" in stdout
    assert len(_losses(tmp_path / "one")) == len(_losses(tmp_path / "two")) == steps
    one, two = _validation_losses(tmp_path / "one"), _validation_losses(tmp_path / "two")
    assert len(one) == len(two) == 3  # steps 10, 20, 30
    assert one[-1] < one[0] and two[-1] < two[0]
    assert two[-1] == pytest.approx(one[-1], rel=0.1)
    assert len(list((tmp_path / "two" / "tb").iterdir())) == 1  # one writer: rank 0

    (stopped,) = checkpoint_dirs(tmp_path / "two")
    stdout = _run(_args(root, tmp_path / "two", steps + 5), 2)
    assert f"resuming from {stopped} at step {steps}" in stdout
    final = checkpoint_dirs(tmp_path / "two")[-1]
    config, _ = load_checkpoint(final)
    assert config["state"]["step"] == steps + 5 and config["state"]["world_size"] == 2
    assert len(_losses(tmp_path / "two")) == steps + 5
