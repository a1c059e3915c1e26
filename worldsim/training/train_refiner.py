"""`worldsim train refiner`: train the frame refiner (worldsim.models.refiner) on frames a
bundle's DiT dreams.

    worldsim train refiner --data DATASET --checkpoint BUNDLE --out RUN

A training example is two imagined steps after a real context: from the `context` real
frames up to t the bundle's DiT samples z_{t+1} (with the recorded a_t), and from the real
frames up to t+1 it samples z_{t+2}. The refiner draws frame t+1 from (D(z_{t+1}), real x_t,
D(z_t)) and then frame t+2 from (D(z_{t+2}), its own frame t+1, D(z_{t+1})), as it does in a
rollout; the loss is the mean squared error of both against the real frames. The second step
teaches it to read its own output, which is what it reads at every step after a reset.

Sampling costs a DiT pass per frame, so `pool` training windows are sampled once, decoded to
uint8 and kept in RUN/pool/ (a checkpoint directory, reused on resume). Evaluation runs the
same two steps on `val_pool` held-out windows: PSNR of the refined frames beside the plain
decode and copy-last, over the transitions whose frame changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from worldsim.data.store import EpisodeStore, WindowDataset
from worldsim.evaluation.fidelity import pair_metrics
from worldsim.models.refiner import FrameRefiner, RefinerConfig, RefinerParts
from worldsim.models.vae import frames_to_images, images_to_frames
from worldsim.runtime import autocast
from worldsim.training.checkpoint import (
    CheckpointError,
    dataset_fingerprint,
    load_checkpoint,
    recorded_path,
    save_checkpoint,
)
from worldsim.training.encode import ensure_latents
from worldsim.training.loop import TrainConfig, TrainingTask, setup, train

# log(MSE + eps) of frames in [-1, 1]: eps = 1e-5 caps a frame's PSNR term near 56 dB, so an
# exact copy does not earn an unbounded reward.
LOG_MSE_EPS = 1e-5

# Sources whose mean absolute error at a pixel is within this of the best source's (frames in
# [-1, 1]: one grey level is 2/255) count as equally right in `RefinerTask.gate_loss`.
GATE_TIE = 2 / 255

# The six frames of a pool example, each uint8 (N, H, W, 3).
POOL_FRAMES = ("frame_t", "decoded_t", "decoded_t1", "frame_t1", "decoded_t2", "frame_t2")


def _default_train() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=500,
                       ema_decay=0.995, weight_decay=0.0)


@dataclass
class TrainRefinerConfig:
    """Train the frame refiner on frames the bundle's dynamics model dreams."""

    data: Path
    """Episode store directory (the bundle's training data)."""
    checkpoint: Path
    """The bundle whose VAE decodes and whose DiT dreams the training frames."""
    out: Path
    """Run directory (checkpoints, TensorBoard logs, metrics.jsonl, pool/); resumed if it
    exists."""
    context: int = 3
    """Real frames the DiT sees before each imagined step."""
    sampling_steps: int | None = None
    """Sampler steps per dreamt frame (None: the bundle's default)."""
    pool: int = 12000
    """Training windows whose dreamt frames are sampled once and trained on."""
    val_pool: int = 1024
    """Held-out windows evaluated."""
    width: int = RefinerConfig.width
    """Channels of the refiner's trunk."""
    blocks: int = RefinerConfig.blocks
    """ResBlocks in the trunk."""
    copy_shift: int = RefinerConfig.copy_shift
    """Also offer the previous frame displaced by this many pixels in each direction as copy
    sources (Crafter: 7, one tile: a move scrolls the map by exactly that); 0: off."""
    loss: Literal["log_mse", "mse"] = "log_mse"
    """log_mse: the mean over frames of log(MSE + 1e-5), i.e. mean PSNR up to sign and scale,
    so the many frames that barely change count as much as the few that change a lot; mse:
    the mean squared error over all pixels (dominated by frames that change a lot)."""
    drawn_weight: float = 1.0
    """Weight of a loss term on the drawn frame alone (the decode plus the residual, before
    the blend with the copies). Without it (0) the blend can settle on copying the previous
    frame everywhere: the drawn branch then gets no gradient and never catches up (two
    refiners trained on 4,000 dreams of the guided DiT did exactly that)."""
    gate_weight: float = 1.0
    """Weight of a cross-entropy term that teaches the blend, per pixel, which source is
    closest to the real frame (the copies and the drawn frame; ties shared). The blend's
    softmax saturates on whichever source wins early, and then the loss of the blended frame
    no longer moves it; this term does (0: off)."""
    train: TrainConfig = field(default_factory=_default_train)


class RefinerTask(TrainingTask):
    """(dreamt decode, previous frame, previous decode) -> next frame (see `TrainingTask`)."""

    kind = "refiner"

    def __init__(self, cfg: TrainRefinerConfig, device: torch.device, is_main: bool = True):
        from worldsim.world_model import WorldModel

        if cfg.context < 1 or cfg.pool < 1 or cfg.val_pool < 1:
            raise ValueError("context, pool and val_pool must be at least 1")
        self.cfg, self.device = cfg, torch.device(device)
        self.store = EpisodeStore(cfg.data)
        self.wm = WorldModel.load(cfg.checkpoint, device=self.device)
        self.tag = ensure_latents(self.wm.vae, self.store, Path(cfg.checkpoint) / "vae", is_main)
        self.num_steps = int(cfg.sampling_steps or self.wm.num_steps)
        if cfg.copy_shift < 0:
            raise ValueError(f"copy_shift must be 0 (off) or a number of pixels, got "
                             f"{cfg.copy_shift}")
        self.model_config = RefinerConfig(width=cfg.width, blocks=cfg.blocks,
                                          copy_shift=cfg.copy_shift)
        self.model = FrameRefiner(self.model_config).to(self.device)
        self._train_pool: dict[str, torch.Tensor] | None = None
        self._val_pool: dict[str, torch.Tensor] | None = None

    def config(self) -> dict[str, Any]:
        c = self.cfg
        return {"refiner": self.model_config.to_dict(), "loss": c.loss, **self.pool_config()}

    def pool_config(self) -> dict[str, Any]:
        """The settings the sampled pools depend on."""
        c = self.cfg
        return {"context": c.context, "sampling_steps": self.num_steps, "pool": c.pool,
                "val_pool": c.val_pool, "bundle": recorded_path(c.checkpoint),
                "vae_fingerprint": self.wm.vae.latent_fingerprint()}

    def data_info(self) -> dict[str, Any]:
        s = self.store
        return {"path": recorded_path(self.cfg.data), "env_id": s.env_id,
                "fingerprint": dataset_fingerprint(s), "episodes": len(s),
                "frames": s.num_frames}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"kind": self.kind, "refiner": self.model_config.to_dict(),
                "vae_fingerprint": self.wm.vae.latent_fingerprint()}

    # ------------------------------------------------------------------ pools
    def _sample_pool(self, split: str, size: int, seed: int) -> dict[str, torch.Tensor]:
        """`size` windows of `split` (seeded): real frames t, t+1, t+2 and the plain decodes
        of the real z_t and of the dreamt z_{t+1}, z_{t+2}, each uint8 (N, H, W, 3)."""
        from tqdm.auto import tqdm

        K = self.cfg.context
        latents = WindowDataset(self.store, split, length=K + 2, latents=self.tag)
        frames = WindowDataset(self.store, split, length=K + 2)
        if len(latents) == 0:
            raise ValueError(f"{self.cfg.data}: no {split} episode has {K + 2} frames")
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(len(latents), min(size, len(latents)), replace=False))
        g = torch.Generator(self.device).manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in POOL_FRAMES}
        wm = self.wm
        chunks = range(0, len(index), 64)
        for i in tqdm(chunks, desc=f"dreaming {split} frames", disable=len(chunks) < 4):
            rows = index[i:i + 64]
            z = torch.from_numpy(latents.take(rows)["observations"]).to(self.device).float()
            window = frames.take(rows)
            x = torch.from_numpy(window["observations"])  # (B, K+2, H, W, 3)
            actions = window["actions"]                    # {key: (B, K+1, ...)}
            dreamt = []
            for shift in (0, 1):  # real frames up to t (then t+1) -> z_{t+1} (then z_{t+2})
                ctx = {k: v[:, shift:shift + K - 1] for k, v in actions.items()}
                step = {k: v[:, shift + K - 1] for k, v in actions.items()}
                with autocast(self.device, self.cfg.train.bf16):
                    state = wm.start(z[:, shift:shift + K], ctx, g)
                    dreamt.append(wm.step(state, step, g, num_steps=self.num_steps).latents)
            with autocast(self.device, self.cfg.train.bf16):
                decoded = wm.decode(torch.stack([z[:, K - 1], *dreamt], 1)).cpu()
            for name, value in zip(POOL_FRAMES, (x[:, K - 1], decoded[:, 0], decoded[:, 1],
                                                 x[:, K], decoded[:, 2], x[:, K + 1]),
                                   strict=True):
                parts[name].append(value)
        return {name: torch.cat(v) for name, v in parts.items()}

    def _pool(self, split: str) -> dict[str, torch.Tensor]:
        """The pool of `split`, sampled on first use and kept in OUT/pool/ (or loaded)."""
        cached = self._train_pool if split == "train" else self._val_pool
        if cached is not None:
            return cached
        directory = Path(self.cfg.out) / "pool"
        identity = {"kind": "refiner-pool", "task": self.pool_config(),
                    "data": dataset_fingerprint(self.store)}
        pool = None
        if (directory / "config.json").exists():
            config, tensors = load_checkpoint(directory)
            if {k: config.get(k) for k in identity} != identity:
                raise CheckpointError(f"{directory} was sampled with other settings or data "
                                      f"than this run's; delete it to sample again")
            pool = {split_: {k[len(split_) + 1:]: v for k, v in tensors["pool"].items()
                             if k.startswith(split_ + ".")} for split_ in ("train", "val")}
        if pool is None:
            pool = {"train": self._sample_pool("train", self.cfg.pool, seed=1),
                    "val": self._sample_pool("val", self.cfg.val_pool, seed=0)}
            save_checkpoint(directory, identity, {"pool": {
                f"{s}.{k}": v for s, p in pool.items() for k, v in p.items()}})
        self._train_pool, self._val_pool = pool["train"], pool["val"]
        return pool[split]

    # ------------------------------------------------------------------ batches
    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Any]:
        """The six frames (see POOL_FRAMES) of `batch_size` pool examples, float (B, 3, H, W)."""
        pool = self._pool("train")
        rows = torch.from_numpy(rng.integers(0, len(pool["frame_t"]), batch_size))
        return {name: frames_to_images(pool[name][rows].to(self.device)) for name in POOL_FRAMES}

    @staticmethod
    def unroll(model: nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[RefinerParts, RefinerParts]:
        """Frames t+1 and t+2 as the refiner draws them in a rollout, as the blends' parts
        (`RefinerParts`; `.shown` is the frame). The module is called, so that a
        DistributedDataParallel wrapper synchronises gradients."""
        first = model(batch["decoded_t1"], batch["frame_t"], batch["decoded_t"], with_parts=True)
        second = model(batch["decoded_t2"], first.shown, batch["decoded_t1"], with_parts=True)
        return first, second

    def _frame_loss(self, frames: torch.Tensor, target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of (B, 3, H, W) frames against the target, and their per-frame MSE (B,)."""
        mse = (frames - target).pow(2).mean((1, 2, 3))
        if self.cfg.loss == "log_mse":
            return torch.log(mse + LOG_MSE_EPS).mean(), mse
        return mse.mean(), mse

    @staticmethod
    def gate_loss(parts: RefinerParts, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the blend's logits (B, S + 1, H, W) against the sources closest to
        `target` (B, 3, H, W) at each pixel: every source within GATE_TIE of the best shares
        the target probability (a flat field matches its displaced copies too)."""
        with torch.no_grad():
            sources = torch.cat([parts.copies, parts.drawn[:, None]], 1)  # (B, S + 1, 3, H, W)
            error = (sources - target[:, None]).abs().mean(2)              # (B, S + 1, H, W)
            close = (error <= error.min(1, keepdim=True).values + GATE_TIE).float()
            wanted = close / close.sum(1, keepdim=True)
        return -(wanted * parts.logits.log_softmax(1)).sum(1).mean()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        total, metrics = 0.0, {}
        for i, parts in enumerate(self.unroll(model, batch), start=1):
            target = batch[f"frame_t{i}"]
            loss, mse = self._frame_loss(parts.shown, target)
            total = total + loss
            metrics[f"mse_step{i}"] = float(mse.detach().mean())
            if self.cfg.drawn_weight > 0:
                drawn_loss, drawn_mse = self._frame_loss(parts.drawn, target)
                total = total + self.cfg.drawn_weight * drawn_loss
                metrics[f"drawn_mse_step{i}"] = float(drawn_mse.detach().mean())
            if self.cfg.gate_weight > 0:
                gate = self.gate_loss(parts, target)
                total = total + self.cfg.gate_weight * gate
                metrics[f"gate_loss_step{i}"] = float(gate.detach())
        return total, metrics

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        pool = self._pool("val")
        out: dict[str, list[np.ndarray]] = {f"{kind}{i}": [] for kind in ("shown", "drawn")
                                            for i in (1, 2)}
        for i in range(0, len(pool["frame_t"]), 256):
            batch = {k: frames_to_images(v[i:i + 256].to(self.device)) for k, v in pool.items()}
            for step, parts in enumerate(self.unroll(model, batch), start=1):
                out[f"shown{step}"].append(images_to_frames(parts.shown).cpu().numpy())
                out[f"drawn{step}"].append(images_to_frames(parts.drawn).cpu().numpy())
        frames = {k: np.concatenate(v) for k, v in out.items()}
        metrics: dict[str, float] = {}
        for step, (target, decoded, previous) in {
                1: ("frame_t1", "decoded_t1", "frame_t"),
                2: ("frame_t2", "decoded_t2", "frame_t1")}.items():
            real = pool[target].numpy()
            changed = (real != pool[previous].numpy()).reshape(len(real), -1).any(1)
            # refined: the blend shown; drawn: its drawn frame alone (decode + residual)
            for name, fake in (("refined", frames[f"shown{step}"]),
                               ("drawn", frames[f"drawn{step}"]),
                               ("decoded", pool[decoded].numpy()),
                               ("copy_last", pool[previous].numpy())):
                metrics[f"step{step}_psnr_changed_{name}"] = float(
                    pair_metrics(real[changed], fake[changed])["psnr"].mean())
        n = 8  # image: rows of (previous, plain decode, refined, real) at step 1
        grid = np.concatenate([pool["frame_t"][:n].numpy(), pool["decoded_t1"][:n].numpy(),
                               frames["shown1"][:n], pool["frame_t1"][:n].numpy()], 2)
        return metrics, {"previous_decoded_refined_real": grid.reshape(-1, *grid.shape[2:])}


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.training.distributed import shutdown_distributed

    cfg = tyro.cli(TrainRefinerConfig, args=argv)
    ctx = setup(cfg.train)
    task = RefinerTask(cfg, ctx.device, is_main=ctx.is_main)
    if ctx.is_main:
        params = sum(p.numel() for p in task.model.parameters())
        print(f"frame refiner {params / 1e6:.2f}M parameters; {cfg.pool} training windows "
              f"dreamt with {task.num_steps} sampler steps", flush=True)
        task._pool("train")  # sample (or load) the pools before the loop's clock starts
    result = train(task, cfg.train, cfg.out, ctx)
    if ctx.is_main:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items())
        print(f"done: step {result.step}; {shown}", flush=True)
    shutdown_distributed(ctx)
