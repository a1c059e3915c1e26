"""`worldsim train vae`: train the frame VAE on an episode store.

    worldsim train vae --data DATASET --out RUN [--vae.factor 8] [--train.steps N] ...
    torchrun --nproc-per-node 2 -m worldsim.cli train vae --data DATASET --out RUN

Frames are sampled uniformly from the training split's episodes (one frame = one example);
evaluation reconstructs a fixed, evenly spaced set of validation-split frames and reports
PSNR / SSIM (mean over frames) into RUN/metrics.jsonl and each checkpoint's config.json.
Before each checkpoint the EMA model's latent shift and scale are re-measured on a fixed set
of training frames. The result loads with `VAE.from_checkpoint(RUN)`.

Reference (Crafter 64x64, 150,849 frames of random play, 2-core CPU shared with other jobs,
`--train.threads 1`, bf16): the default model (factor 4, C=4, one 128-wide level, 0.72M
parameters) at batch 8 reached 29.7 dB PSNR on held-out episodes after 3.8 min of training,
32.8 dB after 6.2 min and 35.1 dB / SSIM 0.948 after 13 min (8,000 steps). bf16 autocast
trained 1.5-1.8x faster than fp32 with the same PSNR (28.24 vs 28.28 dB after 2,000 steps).

Loss (per element means; images in [-1, 1]):
    l1 * |x - x̂| + l2 * (x - x̂)^2 + kl * KL(q(z|x) || N(0, I)) [+ grad * |∇x - ∇x̂|]
L2 is what PSNR measures; L1 keeps pushing on the small residuals that L2 stops caring
about, which is what keeps flat-coloured pixel art flat and edges crisp. KL is tiny (1e-6):
it only keeps the posterior a proper distribution with bounded latents for the diffusion
model, not a prior to sample from, so the VAE behaves almost like a plain autoencoder; the
latent scale is then fixed by calibration, not by the KL. The optional image-gradient term
(finite differences along H and W) is off by default: L1 + L2 alone passed 30 dB on
Crafter well within budget.

Refitting the decoder (`--init-from VAE --decoder-only`): the encoder and the latent
statistics stay frozen, so the latents, and every model trained on them, stay valid (the
result records the latent space it keeps, `VAE.latent_space`). Two terms make the decoder
fit for a simulator that re-encodes every frame it draws (decode -> encode -> continue):
    round_trip * ||E(D(z + n)) - z||^2     with n ~ N(0, s^2), s ~ U(0, latent_noise) per frame
and the pixel loss on D(z + n) against the frame. A decoder trained on clean latents alone
is no projection: D(z) re-encodes to a latent a little off z, and a rollout repeats the
round trip every step, so the error compounds (Crafter's shipped VAE: trees turn red and
stone dark within 50 round trips of a real frame, with no dynamics model at all). The
evaluation reports the frames after 1 and 10 round trips (`psnr_round_trip_*`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from worldsim.data.store import EpisodeStore, WindowDataset
from worldsim.evaluation.metrics import frame_metrics
from worldsim.models.vae import VAE, VAEConfig
from worldsim.runtime import autocast
from worldsim.training.checkpoint import dataset_fingerprint, recorded_path
from worldsim.training.loop import TrainConfig, TrainingTask, setup, train


@dataclass
class VAELossConfig:
    """Weights of the VAE's loss terms (see the module docstring)."""

    l1: float = 1.0
    """Weight of the mean absolute pixel error."""
    l2: float = 1.0
    """Weight of the mean squared pixel error."""
    kl: float = 1e-6
    """Weight of the mean KL divergence per latent element."""
    grad: float = 0.0
    """Weight of the L1 error of horizontal and vertical image gradients."""
    round_trip: float = 0.0
    """Weight of the mean squared error between the latents of a reconstruction and the
    latents it was decoded from (scaled latents: unit variance per channel); 0: off."""


def _default_train() -> TrainConfig:
    # Small batches: on Crafter, batch 8 reached a lower loss than 16, and 16 than 32, for the
    # same number of frames seen (and about the same frames/s on 2 CPU cores).
    return TrainConfig(steps=10_000, batch_size=8, lr=2e-3, warmup_steps=200,
                       eval_every=2000, ema_decay=0.999)


@dataclass
class TrainVAEConfig:
    """Train the frame VAE."""

    data: Path
    """Episode store directory (from `worldsim collect` / `worldsim import`)."""
    out: Path
    """Run directory: checkpoints, TensorBoard logs, metrics.jsonl; resumed if it exists."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    train: TrainConfig = field(default_factory=_default_train)
    eval_frames: int = 1024
    """Validation frames reconstructed at each evaluation (evenly spaced over the split)."""
    eval_batch: int = 128
    """Frames per forward pass during evaluation and calibration."""
    calibration_frames: int = 4096
    """Training frames used to measure the latent shift and scale."""
    grid_frames: int = 8
    """Validation frames shown in the reconstruction image grid."""
    init_from: Path | None = None
    """Start from this VAE (a checkpoint or run directory), keeping its architecture
    (`--vae.*` is ignored)."""
    decoder_only: bool = False
    """Train the decoder alone (needs `init_from`): the encoder and latent statistics stay as
    they are, so the latent space, and the models trained on it, stay valid."""
    latent_noise: float = 0.0
    """With `decoder_only`: the decoder reads the frame's latents plus Gaussian noise of a
    standard deviation drawn per frame from U(0, latent_noise) (scaled latents) and must still
    draw the frame, as it must for a dynamics model's slightly-off latents."""
    round_trips: int = 1
    """Round trips unrolled in the `loss.round_trip` term (decode, encode, decode, ...), so
    that the loss sees the error a re-encoding rollout compounds; each later decode's pixel
    loss counts 1/round_trips."""
    round_trip_frames: int = 128
    """Validation frames whose repeated round trips (decode, encode) are evaluated."""


def _evenly_spaced(dataset: WindowDataset, count: int) -> np.ndarray:
    """uint8 (N, H, W, 3): `count` frames spread evenly over a length-1 window dataset."""
    if len(dataset) == 0:
        raise ValueError("no frames in this split")
    idx = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int))
    return np.stack([dataset[i]["observations"][0] for i in idx])


@torch.no_grad()
def round_trips(vae: VAE, frames: np.ndarray, counts: tuple[int, ...], batch: int = 128
                ) -> dict[int, np.ndarray]:
    """The frames (uint8 (N, H, W, 3)) drawn after encoding them and then repeating the
    round trip decode -> encode, as a simulator that re-encodes its frames does, `count`
    times for each of `counts` (1: the plain reconstruction). {count: uint8 (N, H, W, 3)}"""
    out: dict[int, list[np.ndarray]] = {c: [] for c in counts}
    for i in range(0, len(frames), batch):
        z = vae.encode_frames(frames[i:i + batch])
        for trip in range(1, max(counts) + 1):
            drawn = vae.decode_frames(z)
            if trip in out:
                out[trip].append(drawn.cpu().numpy())
            z = vae.encode_frames(drawn)
    return {c: np.concatenate(v) for c, v in out.items()}


def reconstruction_grid(real: np.ndarray, fake: np.ndarray, zoom: int = 2) -> np.ndarray:
    """Originals (top row) over reconstructions (bottom row), uint8 (2 H z, N W z, 3)."""
    grid = rearrange(np.stack([real, fake]), "r n h w k -> (r h) (n w) k")
    return grid.repeat(zoom, axis=0).repeat(zoom, axis=1)


class VAETask(TrainingTask):
    """Frame reconstruction on an episode store (see `TrainingTask`)."""

    kind = "vae"

    def __init__(self, cfg: TrainVAEConfig, device: torch.device):
        self.cfg, self.device = cfg, torch.device(device)
        self.store = EpisodeStore(cfg.data)
        H, W, K = self.store.frame_shape()
        if K != 3:
            raise ValueError(f"{cfg.data}: the VAE needs RGB frames (H, W, 3), the dataset's "
                             f"observations are {(H, W, K)}")
        if cfg.decoder_only and cfg.init_from is None:
            raise ValueError("--decoder-only refits the decoder of an existing VAE: give it "
                             "with --init-from")
        if cfg.decoder_only and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--decoder-only runs in one process (its loss calls the decoder "
                             "directly, which DistributedDataParallel would not synchronise)")
        if cfg.round_trips < 1:
            raise ValueError(f"round_trips must be at least 1, got {cfg.round_trips}")
        if cfg.latent_noise and not cfg.decoder_only:
            raise ValueError("--latent-noise is for --decoder-only (the noised latents are "
                             "the frozen encoder's)")
        if cfg.init_from is None:
            self.model = VAE(cfg.vae)
        else:
            self.model = VAE.from_checkpoint(cfg.init_from).train()
        self.model = self.model.to(self.device)
        if cfg.decoder_only:
            self.model.latent_space = self.model.latent_fingerprint()
            for param in self.model.encoder.parameters():
                param.requires_grad_(False)
        self.model.latent_shape(H, W)  # raises if the factor does not divide the frame size
        self.train_set = WindowDataset(self.store, "train", length=1)
        self.val_set = WindowDataset(self.store, "val", length=1)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(f"{cfg.data} needs episodes in both splits to train and validate "
                             f"a VAE (train: {len(self.train_set.names)} episodes, val: "
                             f"{len(self.val_set.names)}); collect more episodes")
        self._eval_frames: np.ndarray | None = None

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        c = self.cfg
        out = {"vae": dataclasses.asdict(self.model.cfg), "loss": dataclasses.asdict(c.loss),
               "eval_frames": c.eval_frames, "calibration_frames": c.calibration_frames}
        if c.init_from is not None:  # only when set, so runs from before the options resume
            out.update(init_from=str(c.init_from), decoder_only=c.decoder_only,
                       latent_noise=c.latent_noise)
        if c.round_trips != 1:
            out["round_trips"] = c.round_trips
        return out

    def data_info(self) -> dict[str, Any]:
        s = self.store
        return {"path": recorded_path(self.cfg.data), "env_id": s.env_id,
                "fingerprint": dataset_fingerprint(s), "episodes": len(s),
                "frames": s.num_frames, "train_episodes": len(self.train_set.names),
                "val_episodes": len(self.val_set.names), "frame_shape": list(s.frame_shape())}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return model.describe()

    # ------------------------------------------------------------------ training
    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1]: random training frames."""
        idx = rng.integers(0, len(self.train_set), batch_size)
        frames = np.stack([self.train_set[i]["observations"][0] for i in idx])
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        return rearrange(x, "b h w k -> b k h w").float() / 127.5 - 1.0

    def loss(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.cfg.loss
        vae = getattr(model, "module", model)  # under DistributedDataParallel
        if self.cfg.decoder_only:
            with torch.no_grad():
                z = vae.scale(vae.posterior(x).mean.float())  # (B, C, h, w), unit variance
            z_in = z
            if self.cfg.latent_noise:
                s = torch.rand(len(z), 1, 1, 1, device=z.device) * self.cfg.latent_noise
                z_in = z + s * torch.randn_like(z)
            recon = vae.decode(z_in)
            kl = torch.zeros((), device=x.device)
        else:
            recon, posterior = model(x)
            z = vae.scale(posterior.mean.float()).detach()
            kl = posterior.kl().float().mean()
        err = recon.float() - x
        l1, l2 = err.abs().mean(), err.pow(2).mean()

        def pixel(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
            return w.l1 * l1 + w.l2 * l2

        total = pixel(l1, l2) + w.kl * kl
        scalars = {"l1": l1.item(), "l2": l2.item(), "kl": kl.item(),
                   # PSNR of [0, 1] images from the MSE of [-1, 1] images (range 2)
                   "psnr": float(10 * np.log10(4.0 / max(l2.item(), 1e-10)))}
        if w.grad:
            grad = ((err[..., 1:, :] - err[..., :-1, :]).abs().mean()
                    + (err[..., :, 1:] - err[..., :, :-1]).abs().mean())
            total = total + w.grad * grad
            scalars["grad"] = grad.item()
        if w.round_trip:
            # Round trips as a re-encoding rollout makes them, with gradients reaching the
            # decoder through the (frozen or training) encoder: each decode must re-encode to
            # the frame's latents, and the later decodes must still draw the frame.
            trips = []
            for trip in range(self.cfg.round_trips):
                back = vae.encode(recon.float().clamp(-1, 1))
                trips.append((back.float() - z).pow(2).mean())
                if trip + 1 < self.cfg.round_trips:
                    recon = vae.decode(back)
                    later = recon.float() - x
                    total = total + pixel(later.abs().mean(), later.pow(2).mean()
                                          ) / self.cfg.round_trips
            round_trip = torch.stack(trips).mean()
            total = total + w.round_trip * round_trip
            scalars["round_trip"] = round_trip.item()
            scalars["round_trip_last"] = trips[-1].item()
        return total, scalars

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def reconstruct(self, model: VAE, frames: np.ndarray, bf16: bool = False) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.cfg.eval_batch):
            with autocast(self.device, bf16):
                z = model.encode_frames(frames[i:i + self.cfg.eval_batch])
                out.append(model.decode_frames(z).cpu().numpy())
        return np.concatenate(out)

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        if self._eval_frames is None:
            self._eval_frames = _evenly_spaced(self.val_set, self.cfg.eval_frames)
        real = self._eval_frames
        fake = self.reconstruct(model, real)
        m = frame_metrics(torch.from_numpy(real), torch.from_numpy(fake))
        metrics = {"psnr": m["psnr"].mean().item(), "ssim": m["ssim"].mean().item(),
                   "psnr_p05": m["psnr"].quantile(0.05).item()}
        n = min(self.cfg.round_trip_frames, len(real))
        for trips, frames in round_trips(model, real[:n], (1, 10), self.cfg.eval_batch).items():
            metrics[f"psnr_round_trip_{trips}"] = frame_metrics(
                torch.from_numpy(real[:n]), torch.from_numpy(frames))["psnr"].mean().item()
        if self.cfg.train.bf16:
            fake16 = self.reconstruct(model, real, bf16=True)
            metrics["psnr_bf16"] = frame_metrics(torch.from_numpy(real),
                                                 torch.from_numpy(fake16))["psnr"].mean().item()
        n = min(self.cfg.grid_frames, len(real))
        pick = np.linspace(0, len(real) - 1, n).astype(int)
        return metrics, {"reconstructions": reconstruction_grid(real[pick], fake[pick])}

    def before_save(self, model: nn.Module) -> None:
        if self.cfg.decoder_only:
            return  # the latent statistics belong to the kept latent space
        frames = _evenly_spaced(self.train_set, self.cfg.calibration_frames)
        model.calibrate(frames, batch_size=self.cfg.eval_batch)
        # The training copy carries the same statistics, so EMA updates (which copy buffers
        # from it) keep them.
        self.model.latent_shift.copy_(model.latent_shift)
        self.model.latent_scale.copy_(model.latent_scale)


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(TrainVAEConfig, args=argv)
    ctx = setup(cfg.train)
    task = VAETask(cfg, ctx.device)
    if ctx.is_main:
        params = sum(p.numel() for p in task.model.parameters())
        info = task.data_info()
        print(f"VAE {params / 1e6:.2f}M parameters, latents {task.model.latent_shape(*info['frame_shape'][:2])}"
              f"; data {info['frames']} frames in {info['episodes']} episodes "
              f"({info['train_episodes']} train / {info['val_episodes']} val); "
              f"{ctx.world_size} process(es) on {ctx.device}", flush=True)
    result = train(task, cfg.train, cfg.out, ctx)
    if ctx.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"done: step {result.step}, {result.elapsed_s / 60:.1f} min of training; "
              f"{shown}; checkpoint {result.checkpoint}", flush=True)
    from worldsim.training.distributed import shutdown_distributed

    shutdown_distributed(ctx)
