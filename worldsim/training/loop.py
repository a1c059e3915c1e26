"""The training loop shared by every model (VAE, dynamics, heads).

A model contributes a `TrainingTask`; the loop supplies everything else:

    task = MyTask(...)                      # builds task.model, owns data and loss
    result = train(task, TrainConfig(steps=10_000, batch_size=64), out_dir)

What the loop does, in order, for step = start .. cfg.steps - 1:
  1. learning rate: linear warm-up, then cosine decay to `min_lr_ratio * lr` (or constant)
     over `steps`, or over `time_limit_min` of training time if that runs out first
  2. batch = task.sample_batch(rng, per_rank_batch), with rng = default_rng((seed, rank, step))
     and torch reseeded from the same triple, so the data and noise of a step depend only on
     (seed, rank, step): a resumed run draws exactly what the uninterrupted run would have
  3. loss, scalars = task.loss(model, batch) under bf16 autocast (if cfg.bf16); `model` is
     the DistributedDataParallel wrapper under torchrun, so tasks must call `model(...)`
  4. backward, gradient clipping, AdamW step, EMA update
  5. every `log_every` steps: scalars averaged over ranks -> tqdm postfix and TensorBoard
  6. every `eval_every` steps (and at the end): task.evaluate(ema_model) on rank 0 ->
     printed, TensorBoard scalars + image grids, OUT/metrics.jsonl
  7. every `checkpoint_every_min` minutes / `checkpoint_every` steps (and at the end):
     task.before_save(ema_model) (e.g. VAE latent calibration), then a checkpoint
     OUT/checkpoints/step-XXXXXXXX/ written atomically by rank 0, keeping the last
     `keep_checkpoints`

Run directory OUT:
    checkpoints/step-00001000/config.json     task.describe() + "task", "train", "data",
                                              "versions", "metrics", "state" (step, optimizer
                                              param groups, elapsed time)
    checkpoints/step-00001000/{model,ema,optimizer,rng}.safetensors
    tb/                                       TensorBoard event files
    metrics.jsonl                             one line per evaluation
    images/<name>.png                         the latest image grids

Resume: when OUT already holds checkpoints, the loop continues from the newest one (model,
EMA, optimizer, step, RNG state). The saved "task" and "data" entries and the optimisation
settings of "train" must equal the current ones, otherwise a CheckpointError names every
differing key; run-control settings (`RESUMABLE_FIELDS`, e.g. `steps`) may change.

The `TrainingTask` contract (override the methods marked abstract):
    model: nn.Module                                     the module being trained
    kind: str                                            written as config["kind"]
    config() -> dict                                     model + loss + data settings
    data_info() -> dict                                  path, fingerprint, sizes
    sample_batch(rng, batch_size) -> batch               already on task.device
    loss(model, batch) -> (loss tensor, {name: float})
    evaluate(ema_model) -> ({metric: float}, {name: uint8 (H, W, 3) image})
    before_save(ema_model) -> None                       optional
    describe(ema_model) -> dict                          extra top-level config entries
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from worldsim.runtime import autocast
from worldsim.training.checkpoint import (
    CheckpointError,
    flatten_optimizer_state,
    json_default,
    load_checkpoint,
    load_state_dict_strict,
    read_config,
    save_checkpoint,
    unflatten_optimizer_state,
    versions,
)
from worldsim.training.distributed import DistributedContext, init_distributed
from worldsim.training.ema import EMA

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainConfig:
    """Optimisation and run-control settings shared by every training command."""

    steps: int = 10_000
    """Total optimiser steps; a resumed run continues up to this count."""
    batch_size: int = 64
    """Global batch size, split evenly across DistributedDataParallel ranks."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: cosine decay to min_lr_ratio * lr at `steps`, or constant."""
    min_lr_ratio: float = 0.05
    """Final learning rate of the cosine schedule, relative to `lr`."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to weight matrices and kernels only (not to biases or
    normalisation gains)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (evaluated and shipped)."""
    bf16: bool = True
    """bf16 autocast for the training forward pass (CPU and CUDA)."""
    seed: int = 0
    """Seed of the data order, the noise and the initial weights."""
    log_every: int = 25
    """Steps between scalar logs (progress bar and TensorBoard)."""
    eval_every: int = 1000
    """Steps between evaluations on the validation split (0 = only at the end)."""
    checkpoint_every_min: float = 5.0
    """Minutes between checkpoints (0 = off)."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0 = off); both triggers may be set."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    time_limit_min: float = 0.0
    """Stop (with a final evaluation and checkpoint) after this much training time in
    minutes, counted over all resumed segments and excluding evaluation and checkpointing
    (0 = no limit). The cosine schedule then also decays over this time."""
    device: str | None = None
    """Device ("cpu", "cuda", "cuda:1"); default: CUDA if available, else CPU."""
    threads: int | None = None
    """torch intra-op threads (default: $WORLDSIM_THREADS or torch's choice). On a CPU that
    other jobs also use, 1 thread can be several times faster than 2: a thread that loses
    its core stalls the other at every parallel region."""
    compile: bool = False
    """torch.compile the model (worth it on GPU)."""
    resume: bool = True
    """Continue from the newest checkpoint in the output directory if there is one."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""


# Settings that may differ between a checkpoint and the run resuming from it.
RESUMABLE_FIELDS = frozenset({
    "steps", "log_every", "eval_every", "checkpoint_every_min", "checkpoint_every",
    "keep_checkpoints", "time_limit_min", "device", "threads", "compile", "resume", "progress",
})


class TrainingTask(abc.ABC):
    """What a model brings to the shared loop (see the module docstring)."""

    kind: str = "model"
    model: nn.Module
    device: torch.device

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Every model / loss / data setting; must match on resume."""

    @abc.abstractmethod
    def data_info(self) -> dict[str, Any]:
        """{"path", "fingerprint", ...}: the data trained on; the fingerprint must match on
        resume."""

    @abc.abstractmethod
    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        """A batch of `batch_size` training examples drawn with `rng`, on self.device."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and scalars to log. Call `model(...)` (it may be DDP)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Validation metrics and uint8 (H, W, 3) images of the (EMA) model."""

    def before_save(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Called with the EMA model before each checkpoint."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Top-level config.json entries that let the model load on its own."""
        return {"kind": self.kind}


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    checkpoint: Path | None
    elapsed_s: float


# ---------------------------------------------------------------------- helpers
def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Learning rate of `step`: linear warm-up, then cosine or constant. With a time limit
    the cosine follows whichever runs out first, the steps or the time, so a run cut short
    by its time budget (or slowed by a busy machine) still ends at the low learning rate."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.time_limit_min > 0:
        progress = max(progress, min(1.0, elapsed_s / (60 * cfg.time_limit_min)))
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))


def checkpoint_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first (atomic writes mean every
    `step-*` directory with a config.json is complete)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "config.json").exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself, or the newest checkpoint of a run directory."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise FileNotFoundError(f"{path} is neither a checkpoint (no config.json) nor a "
                                f"training run with checkpoints under {path / CHECKPOINT_DIR}")
    return found[-1]


def read_model_checkpoint(path: str | os.PathLike, kind: str, keys: tuple[str, ...] = (),
                          weights: str | None = None, name: str | None = None,
                          vae_fingerprint: str | None = None
                          ) -> tuple[Path, dict[str, Any], str, dict[str, torch.Tensor]]:
    """What every model loader reads first: the checkpoint directory of `path` (a checkpoint,
    or a run's newest), its config (which must say `kind` and hold `keys`), and one group of
    weights, `weights` or else "ema" if saved, else "model". `name` names the model in errors
    (default "<kind> model"). With `vae_fingerprint`, a model that records the VAE whose
    latents it was trained on (in its training task or its own config) must name that one.
    Returns (directory, config, group, tensors of that group)."""
    directory = resolve_checkpoint(path)
    meta = read_config(directory)
    if meta.get("kind") != kind or any(k not in meta for k in keys):
        raise CheckpointError(f"{directory}/config.json does not describe a "
                              f"{name or kind + ' model'} (kind={meta.get('kind')!r})")
    saved_vae = meta.get("task", {}).get("vae_fingerprint") or meta.get("vae_fingerprint")
    if vae_fingerprint is not None and saved_vae not in (None, vae_fingerprint):
        raise CheckpointError(f"{directory} was trained on latents of VAE {saved_vae}, not on "
                              f"those of VAE {vae_fingerprint}")
    group = weights or ("ema" if "ema" in meta["checkpoint"]["files"] else "model")
    _, tensors = load_checkpoint(directory, groups=[group])
    return directory, meta, group, tensors[group]


def _plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples -> lists, Paths -> str)."""
    return json.loads(json.dumps(value, default=json_default))


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in sorted(set(expected) | set(found)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in found:
                out.append(f"{name} missing in checkpoint")
            elif key not in expected:
                out.append(f"{name} unexpected in checkpoint")
            else:
                out += _differences(expected[key], found[key], name)
        return out
    return [] if expected == found else [f"{prefix}: checkpoint {found!r}, now {expected!r}"]


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only tensors with 2+ dims (weights, kernels), as in GPT-2 / nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0}]


def _seed_everything(seed: int, rank: int, step: int) -> np.random.Generator:
    rng = np.random.default_rng((seed, rank, step))
    torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return rng


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the loop
class Trainer:
    """Runs `task` under `cfg`, writing to `out_dir`. Use `train(...)` unless you need to
    reach into the pieces (tests do)."""

    def __init__(self, task: TrainingTask, cfg: TrainConfig, out_dir: str | os.PathLike,
                 ctx: DistributedContext | None = None):
        self.task, self.cfg, self.out_dir = task, cfg, Path(out_dir)
        self.ctx = ctx or DistributedContext(device=task.device)
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(f"batch size {cfg.batch_size} does not split evenly over "
                             f"{self.ctx.world_size} ranks")
        self.batch_per_rank = cfg.batch_size // self.ctx.world_size
        self.model = task.model
        self.ema = EMA(self.model, cfg.ema_decay)
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2))
        self.step = 0
        self.elapsed_s = 0.0  # training time over all segments of a resumed run
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []  # the logged training scalars, per log
        self.writer = None
        self._last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ config
    def run_config(self) -> dict[str, Any]:
        return {"task": self.task.config(), "train": dataclasses.asdict(self.cfg),
                "data": self.task.data_info()}

    def check_resumable(self, saved: dict[str, Any], where: Path) -> None:
        """Raise a CheckpointError naming every setting that differs from `saved`."""
        now = _plain(self.run_config())
        problems = _differences(now["task"], saved.get("task"), "task")
        problems += _differences(now["data"].get("fingerprint"),
                                 saved.get("data", {}).get("fingerprint"), "data.fingerprint")
        train_now = {k: v for k, v in now["train"].items() if k not in RESUMABLE_FIELDS}
        train_saved = {k: v for k, v in saved.get("train", {}).items()
                       if k not in RESUMABLE_FIELDS}
        problems += _differences(train_now, train_saved, "train")
        if problems:
            raise CheckpointError(
                f"cannot resume from {where}: its settings differ from this run's: "
                + "; ".join(problems) + ". Use another output directory, or the same settings.")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write OUT/checkpoints/step-XXXXXXXX (rank 0 only) and prune old ones."""
        self.task.before_save(self.ema.model)
        opt_tensors, opt_rest = flatten_optimizer_state(self.optimizer.state_dict())
        config = {
            **self.task.describe(self.ema.model),
            **self.run_config(),
            "versions": versions(),
            "metrics": self.metrics,
            "state": {"step": self.step, "ema_updates": self.ema.updates,
                      "elapsed_s": round(self.elapsed_s, 3), "optimizer": opt_rest,
                      "world_size": self.ctx.world_size},
        }
        tensors = {"model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
                   "optimizer": opt_tensors, "rng": {"torch": torch.get_rng_state()}}
        path = self.out_dir / CHECKPOINT_DIR / f"step-{self.step:08d}"
        save_checkpoint(path, config, tensors)
        for old in checkpoint_dirs(self.out_dir)[:-max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        self._last_checkpoint = path
        return path

    def load(self, directory: Path) -> None:
        """Restore model, EMA, optimizer, step and RNG from a checkpoint of this loop."""
        config, tensors = load_checkpoint(directory, device="cpu")
        self.check_resumable(config, directory)
        load_state_dict_strict(self.model, tensors["model"], f"{directory}/model.safetensors")
        load_state_dict_strict(self.ema.model, tensors["ema"], f"{directory}/ema.safetensors")
        state = config["state"]
        self.optimizer.load_state_dict(
            unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
        torch.set_rng_state(tensors["rng"]["torch"])
        self.step, self.ema.updates = int(state["step"]), int(state["ema_updates"])
        self.elapsed_s = float(state["elapsed_s"])
        self.metrics = config.get("metrics", {})
        self._last_checkpoint = directory

    # ------------------------------------------------------------------ logging
    def _log_scalars(self, values: dict[str, float], prefix: str) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, self.step)

    def evaluate(self) -> dict[str, float]:
        """Run the task's evaluation on the EMA model (rank 0), record and return it."""
        self.ema.model.eval()
        metrics, images = self.task.evaluate(self.ema.model)
        self.metrics = {**metrics, "step": self.step}
        self._log_scalars(metrics, "eval")
        for name, image in images.items():
            if self.writer is not None:
                self.writer.add_image(f"eval/{name}", image, self.step, dataformats="HWC")
            _save_png(self.out_dir / "images" / f"{name}.png", image)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "elapsed_s": round(self.elapsed_s, 1),
                                **metrics}) + "\n")
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[eval] step {self.step}  {shown}", flush=True)
        return self.metrics

    # ------------------------------------------------------------------ run
    def _time_is_up(self) -> bool:
        """Whether `time_limit_min` of training time is spent. Under DDP rank 0's clock is
        broadcast first, so every rank uses the same elapsed time (for the learning rate
        too) and all stop at the same step."""
        if self.cfg.time_limit_min <= 0:
            return False
        if self.ctx.enabled:
            self.elapsed_s = self.ctx.broadcast_object(self.elapsed_s)
        return self.elapsed_s >= 60 * self.cfg.time_limit_min

    def run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        existing = checkpoint_dirs(self.out_dir)
        if existing and not cfg.resume:
            raise FileExistsError(f"{self.out_dir} already holds checkpoints; resume (the "
                                  "default) or choose another output directory")
        if existing:
            self.load(existing[-1])
            if ctx.is_main:
                print(f"resuming from {existing[-1]} at step {self.step}", flush=True)
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # leftovers of a writer killed mid-checkpoint (never complete checkpoints)
            for pattern in (".tmp-*", ".old-*"):
                for stale in (self.out_dir / CHECKPOINT_DIR).glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        model: nn.Module = self.model
        if cfg.compile:
            model = torch.compile(model)
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
        progress = None
        if ctx.is_main and cfg.progress and self.step < cfg.steps:
            from tqdm import tqdm

            progress = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
                            mininterval=1.0 if sys.stderr.isatty() else 30.0)
        last_save = time.monotonic()
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.monotonic()
        start_step = self.step
        try:
            while self.step < cfg.steps and not self._time_is_up():
                t0 = time.monotonic()
                lr = lr_at(self.step, cfg, self.elapsed_s)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                rng = _seed_everything(cfg.seed, ctx.rank, self.step)
                batch = self.task.sample_batch(rng, self.batch_per_rank)
                self.model.train()
                with autocast(ctx.device, cfg.bf16):
                    loss, scalars = self.task.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    scalars["grad_norm"] = float(norm)
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                self.elapsed_s += time.monotonic() - t0

                scalars = {"loss": float(loss.detach()), **scalars}
                for k, v in scalars.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    averaged = ctx.mean({k: v / window_steps for k, v in window.items()})
                    rate = window_steps / max(1e-9, time.monotonic() - window_start)
                    averaged.update(lr=lr, steps_per_s=rate,
                                    samples_per_s=rate * cfg.batch_size)
                    self._log_scalars(averaged, "train")
                    self.history.append({"step": self.step, **averaged})
                    if progress is not None:
                        progress.set_postfix(loss=f"{averaged['loss']:.4g}", refresh=False)
                    window, window_steps, window_start = {}, 0, time.monotonic()
                if progress is not None:
                    progress.update(1)

                if self.step == cfg.steps:
                    break  # the final evaluation and checkpoint follow the loop
                if ctx.is_main and cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate()
                due = ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or
                       (cfg.checkpoint_every_min and
                        time.monotonic() - last_save >= 60 * cfg.checkpoint_every_min))
                if ctx.is_main and due:
                    self.save()
                    last_save = time.monotonic()
            if self.step > start_step and ctx.is_main:
                if self.step < cfg.steps:
                    print(f"time limit of {cfg.time_limit_min} min reached at step {self.step}",
                          flush=True)
                self.evaluate()
                self.save()
        finally:
            if progress is not None:
                progress.close()
            if self.writer is not None:
                self.writer.close()
        ctx.barrier()
        return TrainResult(self.step, self.metrics, self._last_checkpoint, self.elapsed_s)


def train(task: TrainingTask, cfg: TrainConfig, out_dir: str | os.PathLike,
          ctx: DistributedContext | None = None) -> TrainResult:
    """Train `task` to `cfg.steps` (resuming from OUT's newest checkpoint); see module doc."""
    return Trainer(task, cfg, out_dir, ctx).run()


def setup(cfg: TrainConfig) -> DistributedContext:
    """Process set-up for a training command: threads and malloc (runtime.configure), the
    process group under torchrun, and the initial-weights seed. Call before building the
    task so every rank starts from the same weights."""
    from worldsim.runtime import configure

    configure(cfg.threads)
    ctx = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    return ctx
