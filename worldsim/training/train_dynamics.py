"""`worldsim train dynamics`: train the action-conditioned spacetime DiT (with its reward and
termination heads) on a dataset's latent cache, then assemble the checkpoint bundle.

    worldsim train dynamics --data DATASET --vae VAE_RUN --out RUN [--preset S] ...
    torchrun --nproc-per-node 2 -m worldsim.cli train dynamics --data DATASET --vae VAE_RUN --out RUN

The VAE's latent cache (`worldsim encode`) is written first if it is missing, so the encoder
never runs inside the training loop. A training example is a window of `window` consecutive
latent frames with the actions, rewards and terminations between them (never crossing an
episode's end). The reward support and the heads' class weights are measured on the training
split and saved in the config. Evaluation (EMA weights, fixed validation windows) reports the
validation loss, teacher-forced next-frame PSNR and open-loop PSNR after `eval_horizon` steps,
each beside the copy-last-frame baseline, and a strip of real vs dream frames.

At the end RUN/bundle/ holds the complete simulator (`worldsim.load(RUN/bundle)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from worldsim.data.store import EpisodeStore, WindowDataset, collate, oversampled_indices
from worldsim.diffusion.edm import DiffusionConfig, residual_diffusion_config, shifted_noise
from worldsim.evaluation.metrics import frame_metrics
from worldsim.models.dit import DiTConfig
from worldsim.models.dynamics import (
    TEACHER_FORCING_PROB,
    DynamicsConfig,
    DynamicsModel,
    HeadsConfig,
    reward_class_weights,
    reward_support_from_data,
    termination_pos_weight,
)
from worldsim.models.vae import VAE
from worldsim.runtime import autocast
from worldsim.spaces import space_to_json
from worldsim.training.checkpoint import dataset_fingerprint, recorded_path
from worldsim.training.encode import ensure_latents
from worldsim.training.loop import TrainConfig, TrainingTask, setup, train


def _default_train() -> TrainConfig:
    return TrainConfig(steps=20_000, batch_size=16, lr=3e-4, warmup_steps=500,
                       eval_every=2000, ema_decay=0.999, weight_decay=0.01)


@dataclass
class TrainDynamicsConfig:
    """Train the dynamics model on a dataset's latents."""

    data: Path
    """Episode store directory."""
    vae: Path
    """VAE checkpoint, or a `worldsim train vae` run directory (its newest checkpoint)."""
    out: Path
    """Run directory: checkpoints, TensorBoard logs, metrics.jsonl, bundle/; resumed if it
    exists."""
    dit: DiTConfig = field(default_factory=DiTConfig)
    """Shape of the DiT (in_channels is taken from the VAE)."""
    window: int = 0
    """Frames per training window (0 = the DiT's attention window)."""
    teacher_forcing_prob: float = TEACHER_FORCING_PROB
    """Share of windows in the teacher-forcing layout (every frame noisy, attending to nearly
    clean earlier frames, as at inference); the rest use Diffusion Forcing."""
    residual: bool = True
    """Diffuse each frame's change from the previous frame (noise levels scaled to the changes'
    standard deviation, measured on the training split); off: diffuse whole frames."""
    init_from: Path | None = None
    """Fine-tune: start from the (EMA) weights of another dynamics checkpoint, run directory or
    bundle, keeping its model config (architecture, noise levels, reward support) so that the
    weights fit; the optimizer and the step count start afresh. The data may differ (e.g. grown
    by `worldsim loop`); the VAE must be the same. `--dit.*` and `--residual` are ignored
    (but see `--init-window`)."""
    init_window: int = 0
    """Fine-tune only: the attention window of the fine-tuned model (0: the initial model's).
    Positions in time are rotary, so the same weights attend over a longer window; the new,
    farther frame offsets are what the fine-tune has to learn (e.g. a window of 4 widened to 10,
    so a walk of 4 steps out and 4 back still sees where it started). Training cost grows
    with the window: 5 s per batch of 32 at window 10 against 1.3 s at 4, on 2 CPU cores."""
    event_share: float = 0.0
    """Share of each batch drawn from windows with an event (a nonzero reward or the episode's
    end) in one of their transitions; 0: windows as they come (events are ~1% of Crafter's
    transitions). Drawing them more often teaches the model to draw what an event changes
    (Crafter's inventory and health), at the price of a dream that sees events more often
    than the game would."""
    revisit_share: float = 0.0
    """Share of each batch drawn from windows in which the view comes back to one seen a few
    frames before (`WindowDataset.revisits`; ~6% of Crafter's sticky-play windows): the
    windows from which a model can learn to redraw what is in its window instead of inventing
    it (the out-and-back consistency of `worldsim eval`; 60 minutes of it at share 0.25 did not
    move that measure, docs/DESIGN-NOTES.md). Not with `event_share`."""
    hud_fraction: float = 0.0
    """Bottom share of the frame's height whose latent rows get `hud_weight` in the denoising
    loss: a status bar whose small changes carry the rewards (Crafter's inventory and health
    take the bottom 2/9). 0: every position weighs the same."""
    hud_weight: float = 1.0
    """Loss weight of the `hud_fraction` rows relative to the rest of the frame."""
    action_dropout: float = 0.0
    """Share of training frames that see the learned "no action" in place of their action, so
    the model learns the unconditional prediction that classifier-free guidance on the action
    needs (`--guidance` when sampling). Applies to a fine-tuned model too."""
    noise_shift: float = 0.0
    """Added to the mean of ln(sigma) of the training noise levels (log-normal; 0 keeps the
    EDM/DIAMOND median of 1.35 sigma_data). Positive values train more at the high levels,
    where the next frame's layout, and so the action's effect, is decided: a 1-step sampler
    evaluates the network only at the first sampling level (10 sigma_data), which the default
    draws for 5% of training frames and a shift of 1.5 for 25%. Stored in the model config;
    a fine-tune shifts the initial model's levels."""
    noise_shift_share: float = 1.0
    """Share of training frames (chosen independently) whose levels `noise_shift` moves; the
    rest keep the unshifted levels. Below 1 the levels are a mixture of the two log-normals:
    the shift's high levels, where the first sampler step decides the layout and the action's
    effect, without giving up the low ones, where the last step draws the texture (a shift of
    1.5 on every frame leaves 14% of the levels at or below the second sampling level of the
    shipped sampler, 0.36, against 57% unshifted; at share 0.5, 36%)."""
    context_noise_max: float = 0.0
    """Context-noise augmentation: the context frames of every training window are noised at
    a level drawn per frame, log-uniform between the inference level (0.07) and this, instead
    of at the inference level, and the network is told the level (GameNGen's remedy against
    drift). 0: off. Stored in the model config; applies to a fine-tune too."""
    residual_from_seen: bool = False
    """Take each frame's change from the previous frame as the network saw it (with its
    context noise) rather than from the clean frame, so that the prediction also removes
    that noise; with --context-noise-max the model learns to repair a corrupted last frame.
    Stored in the model config (inference takes the change from the same frame); applies to a
    fine-tune too."""
    round_trip: bool = False
    """Train on the latents a re-encoding dream continues from: every window's latents pass
    once through the VAE's decoder and encoder (uint8 frames between, as
    `WorldModel.round_trip`) before the loss, context and target alike. With a refitted
    decoder (`worldsim train vae --decoder-only`, which keeps the latent cache) the DiT then
    learns the game as that decoder's round trip draws it, e.g. its flat nights. Costs a VAE
    decode and encode of every batch (about 5% of a training step of the shipped DiT on 2 CPU
    cores, in bf16). Measured: it did not keep long dreams in distribution
    (docs/DESIGN-NOTES.md, round-tripped latents)."""
    train: TrainConfig = field(default_factory=_default_train)
    eval_windows: int = 32
    """Validation windows used by each evaluation."""
    eval_horizon: int = 8
    """Open-loop steps rolled out from each validation window's first frames in evaluation."""
    eval_context: int = 4
    """Real context frames given before the open-loop rollout in evaluation."""
    bundle_contexts: int = 128
    """Real start contexts (from validation episodes) shipped in the bundle."""
    bundle: bool = True
    """Write RUN/bundle at the end of training."""
    bundle_sample_steps: int | None = None
    """Sampler steps per generated frame the bundle uses by default (None: the model's, 4);
    `worldsim eval` reports quality at 1-16 steps to choose it."""


def windows_to_device(device: torch.device | str, batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch of latent windows (`WindowDataset`) as the tensors `DynamicsModel.loss`
    takes: latents (B, W, C, h, w), actions {key: (B, W-1, ...)}, rewards and terminated
    (B, W-1)."""
    return {
        "latents": torch.from_numpy(batch["observations"]).to(device).float(),
        "actions": {k: torch.from_numpy(v).to(device) for k, v in batch["actions"].items()},
        "rewards": torch.from_numpy(batch["rewards"]).to(device).float(),
        "terminated": torch.from_numpy(batch["terminated"]).to(device),
    }


def _with_window(model: DynamicsModel, window: int) -> DynamicsModel:
    """The same weights in a model whose attention window is `window` frames. The window sets
    no parameter's shape (time positions are rotary), so every tensor loads strictly."""
    if window < 1:
        raise ValueError(f"--init-window must be at least 1 frame, got {window}")
    dit = dataclasses.replace(model.config.dit, window=window)
    config = dataclasses.replace(model.config, dit=dit)
    widened = DynamicsModel(config, model.action_space).to(model.device)
    widened.load_state_dict(model.state_dict(), strict=True)
    return widened


class DynamicsTask(TrainingTask):
    """Next-latent prediction on a latent cache (see `TrainingTask`)."""

    kind = "dynamics"

    def __init__(self, cfg: TrainDynamicsConfig, device: torch.device, is_main: bool = True):
        self.cfg, self.device = cfg, torch.device(device)
        self.store = EpisodeStore(cfg.data)
        self.vae = VAE.from_checkpoint(cfg.vae, device=self.device)
        self.tag = ensure_latents(self.vae, self.store, cfg.vae, is_main)
        initial = None if cfg.init_from is None else self._initial_model(cfg.init_from)
        if cfg.init_window and initial is None:
            raise ValueError("--init-window widens the window of a fine-tuned model: it needs "
                             "--init-from")
        model_window = (cfg.dit.window if initial is None else
                        cfg.init_window or initial.config.dit.window)
        window = cfg.window or model_window
        self.train_set = WindowDataset(self.store, "train", length=window, latents=self.tag)
        self.val_set = WindowDataset(self.store, "val", length=max(window, cfg.eval_context
                                                                   + cfg.eval_horizon),
                                     latents=self.tag)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(f"{cfg.data} needs episodes of at least {window} frames in both "
                             f"splits (train windows: {len(self.train_set)}, validation windows: "
                             f"{len(self.val_set)}); collect more data or lower --window")
        self.window = window
        if not 0 <= cfg.event_share < 1 or not 0 <= cfg.hud_fraction <= 1 or cfg.hud_weight <= 0:
            raise ValueError("event_share must be in [0, 1), hud_fraction in [0, 1] and "
                             "hud_weight positive")
        if not 0 <= cfg.action_dropout < 1:
            raise ValueError(f"action_dropout must be in [0, 1), got {cfg.action_dropout}")
        if not 0 <= cfg.revisit_share < 1 or (cfg.revisit_share and cfg.event_share):
            raise ValueError("revisit_share must be in [0, 1), and not with event_share")
        # The windows drawn more often (events or revisits): only searched (one pass over every
        # window) when one of them is oversampled.
        self.oversample_share = cfg.event_share or cfg.revisit_share
        marked = (self.train_set.transition_events().any(1) if cfg.event_share > 0 else
                  self.train_set.revisits() if cfg.revisit_share > 0 else np.zeros(0, bool))
        self.train_oversampled, self.train_others = np.flatnonzero(marked), np.flatnonzero(~marked)
        if self.oversample_share > 0 and (len(self.train_oversampled) == 0 or
                                          len(self.train_others) == 0):
            option, what = (("--event-share", "events") if cfg.event_share else
                            ("--revisit-share", "revisits"))
            raise ValueError(f"{option} needs training windows with and without {what}; "
                             f"{cfg.data} has {len(self.train_oversampled)} and "
                             f"{len(self.train_others)}")
        self.position_weight = self._position_weight()
        if initial is not None:
            if cfg.init_window:
                initial = _with_window(initial, cfg.init_window)
            if initial.config.dit.window < window:
                raise ValueError(f"cannot fine-tune {cfg.init_from} (window "
                                 f"{initial.config.dit.window}) on windows of {window} frames; "
                                 "lower --window")
            # a training setting, not part of the architecture: the fine-tune's own
            initial.config = dataclasses.replace(
                initial.config, action_dropout=cfg.action_dropout,
                residual_from_seen=cfg.residual_from_seen or initial.config.residual_from_seen,
                diffusion=self._with_context_noise(shifted_noise(
                    initial.config.diffusion, cfg.noise_shift, cfg.noise_shift_share)))
            self.model, self.dynamics_config = initial, initial.config
        else:
            heads = self._heads_config()
            dit = dataclasses.replace(cfg.dit, in_channels=self.vae.latent_channels)
            diffusion = shifted_noise(residual_diffusion_config(self._change_std())
                                      if cfg.residual else DiffusionConfig(), cfg.noise_shift,
                                      cfg.noise_shift_share)
            self.dynamics_config = DynamicsConfig(dit=dit,
                                                  diffusion=self._with_context_noise(diffusion),
                                                  heads=heads,
                                                  teacher_forcing_prob=cfg.teacher_forcing_prob,
                                                  residual=cfg.residual,
                                                  action_dropout=cfg.action_dropout,
                                                  residual_from_seen=cfg.residual_from_seen)
            self.model = DynamicsModel(self.dynamics_config, self.store.action_space)
        self.model = self.model.to(self.device).train()
        self._eval_windows: dict[str, Any] | None = None

    def _with_context_noise(self, diffusion: DiffusionConfig) -> DiffusionConfig:
        """`diffusion` with this run's context-noise augmentation (`--context-noise-max`; a
        fine-tune keeps the initial model's when the option is not given)."""
        if not self.cfg.context_noise_max:
            return diffusion
        if self.cfg.context_noise_max <= diffusion.context_sigma:
            raise ValueError(f"--context-noise-max {self.cfg.context_noise_max} must exceed the "
                             f"context noise level of inference, {diffusion.context_sigma}")
        return dataclasses.replace(diffusion, train_context_sigma_max=self.cfg.context_noise_max)

    def _initial_model(self, source: Path) -> DynamicsModel:
        """The model of `init_from` (see its help), checked against this run's VAE and data."""
        from worldsim.training.checkpoint import CheckpointError
        from worldsim.world_model import load_dynamics

        try:
            model, _ = load_dynamics(source, vae_fingerprint=self.vae.latent_fingerprint())
        except CheckpointError as e:
            raise CheckpointError(f"cannot fine-tune {source}: {e}") from e
        if space_to_json(model.action_space) != space_to_json(self.store.action_space):
            raise CheckpointError(f"cannot fine-tune {source}: its action space "
                                  f"{model.action_space} is not the data's "
                                  f"{self.store.action_space}")
        return model

    def _position_weight(self) -> torch.Tensor | None:
        """(h, w) loss weights of the latent positions: `hud_weight` on the bottom
        `hud_fraction` of the rows, 1 elsewhere; None when they would all be equal."""
        cfg = self.cfg
        h, w = self.vae.latent_shape(*self.store.frame_shape()[:2])[1:]
        rows = int(np.ceil(cfg.hud_fraction * h))
        if rows == 0 or cfg.hud_weight == 1:
            return None
        weight = torch.ones(h, w, device=self.device)
        weight[h - rows:] = cfg.hud_weight
        return weight

    def _change_std(self, max_episodes: int = 200) -> float:
        """Standard deviation of frame-to-frame latent changes on (up to `max_episodes`
        evenly chosen) training episodes: sigma_data of residual diffusion. The same episodes
        on every rank, so every process builds the same config."""
        names = self.train_set.names
        names = [names[i] for i in np.unique(np.linspace(0, len(names) - 1,
                                                         min(max_episodes, len(names))).astype(int))]
        total, squares, count = 0.0, 0.0, 0
        for name in names:
            z = np.asarray(self.store.load_latents(self.tag, name), dtype=np.float64)
            change = z[1:] - z[:-1]
            total, squares, count = total + change.sum(), squares + (change**2).sum(), count + change.size
        if count == 0:
            raise ValueError(f"{self.cfg.data}: no training episode has two frames")
        mean = total / count
        return float(np.sqrt(max(squares / count - mean**2, 1e-8)))

    def _heads_config(self) -> HeadsConfig:
        """Reward support and loss weights measured on the training split."""
        rewards, terminated = [], []
        for name in self.train_set.names:
            ep = self.store.load(name)
            rewards.append(np.asarray(ep.rewards))
            terminated.append(np.asarray(ep.terminated))
        r = torch.from_numpy(np.concatenate(rewards)).float()
        d = torch.from_numpy(np.concatenate(terminated))
        support = reward_support_from_data(r)
        return HeadsConfig(reward_support=support,
                           reward_class_weights=tuple(reward_class_weights(r, support)),
                           termination_pos_weight=termination_pos_weight(d))

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        c = self.cfg
        # init_from only when fine-tuning, so runs from before the option still resume
        fine_tuning = {} if c.init_from is None else {"init_from": str(c.init_from)}
        if c.init_window:
            fine_tuning["init_window"] = c.init_window
        # the sampling and weighting options likewise only when they are in use
        emphasis = {k: getattr(c, k) for k, default in
                    (("event_share", 0.0), ("revisit_share", 0.0), ("hud_fraction", 0.0),
                     ("hud_weight", 1.0),
                     ("action_dropout", 0.0), ("round_trip", False))
                    if getattr(c, k) != default}
        if c.round_trip:  # the latent space is the encoder's; the round trip is the decoder's too
            emphasis["round_trip_vae_fingerprint"] = self.vae.fingerprint()
        # Settings added later are left out while they hold the values older runs had, so
        # that those runs still resume.
        dynamics = self.dynamics_config.to_dict()
        later = DiffusionConfig.ADDED_LATER
        dynamics["diffusion"] = {k: v for k, v in dynamics["diffusion"].items()
                                 if k not in later or v != later[k]}
        if not dynamics["residual_from_seen"]:
            del dynamics["residual_from_seen"]
        return {"dynamics": dynamics, "window": self.window, **fine_tuning,
                **emphasis,
                "vae_fingerprint": self.vae.latent_fingerprint(), "latent_tag": self.tag,
                "eval_windows": c.eval_windows, "eval_horizon": c.eval_horizon,
                "eval_context": c.eval_context}

    def data_info(self) -> dict[str, Any]:
        s = self.store
        return {"path": recorded_path(self.cfg.data), "env_id": s.env_id,
                "fingerprint": dataset_fingerprint(s), "episodes": len(s),
                "frames": s.num_frames, "train_windows": len(self.train_set),
                "train_episodes": len(self.train_set.names),
                "val_episodes": len(self.val_set.names), "frame_shape": list(s.frame_shape())}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"kind": self.kind, "dynamics": self.dynamics_config.to_dict(),
                "action_space": space_to_json(self.store.action_space),
                "observation_space": space_to_json(self.store.observation_space),
                "env_id": self.store.env_id, "vae_path": recorded_path(self.cfg.vae)}

    # ------------------------------------------------------------------ training
    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Any]:
        """latents (B, W, C, h, w), actions {key: (B, W-1, ...)}, rewards/terminated (B, W-1).
        A share `event_share` of the windows has an event, or `revisit_share` a revisit (see
        their help)."""
        if self.oversample_share == 0:
            windows = self.train_set.sample(batch_size, rng)
        else:
            index, _ = oversampled_indices(rng, batch_size, self.oversample_share,
                                           self.train_oversampled, self.train_others)
            windows = self.train_set.take(index)
        return self._as_dreamed(windows_to_device(self.device, windows))

    def _as_dreamed(self, batch: dict[str, Any]) -> dict[str, Any]:
        """With `round_trip`, the batch's latents (B, W, C, h, w) replaced by their VAE round
        trip, under bf16 autocast when training runs in bf16 (2.4x faster than fp32 on a CPU
        with AMX; play runs the frame networks so too, the evaluation's dreams in fp32)."""
        if self.cfg.round_trip:
            with autocast(self.device, self.cfg.train.bf16):
                batch["latents"] = self.vae.round_trip(batch["latents"]).float()
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        # `model` is the DistributedDataParallel wrapper under torchrun: call it, so gradients
        # are synchronised (DynamicsModel.forward is its training loss).
        return model(batch["latents"], batch["actions"], batch["rewards"], batch["terminated"],
                     position_weight=self.position_weight)

    # ------------------------------------------------------------------ evaluation
    def _validation(self) -> dict[str, Any]:
        if self._eval_windows is None:
            n = len(self.val_set)
            idx = np.unique(np.linspace(0, n - 1, min(self.cfg.eval_windows, n)).astype(int))
            items = [self.val_set[i] for i in idx]
            batch = collate(items)
            # real frames of the same windows (same split and length: same index), for
            # pixel-space metrics
            frame_set = WindowDataset(self.store, "val", length=self.val_set.length)
            frames = np.stack([frame_set[i]["observations"] for i in idx])
            self._eval_windows = {"batch": self._as_dreamed(windows_to_device(self.device, batch)),
                                  "frames": frames}
        return self._eval_windows

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        val = self._validation()
        batch, frames = val["batch"], val["frames"]  # frames uint8 (B, L, H, W, 3)
        g = torch.Generator(self.device).manual_seed(0)
        W = self.window
        window = (batch["latents"][:, :W], {k: v[:, :W - 1] for k, v in batch["actions"].items()},
                  batch["rewards"][:, :W - 1], batch["terminated"][:, :W - 1])
        with autocast(self.device, self.cfg.train.bf16):
            loss, scalars = model.loss(*window, generator=g)
            action_gain = model.action_gain(*window)
        metrics = {f"val_{k}": v for k, v in scalars.items()}
        metrics["val_action_gain"] = action_gain
        K, Hn = self.cfg.eval_context, self.cfg.eval_horizon
        latents, actions = batch["latents"], batch["actions"]
        real = torch.from_numpy(frames)
        with autocast(self.device, self.cfg.train.bf16):
            # open loop: K real frames, then Hn imagined steps with the recorded actions
            state = model.start(latents[:, :K], {k: v[:, :K - 1] for k, v in actions.items()}, g)
            dream = []
            for t in range(K - 1, K - 1 + Hn):
                out = model.step(state, {k: v[:, t] for k, v in actions.items()}, g)
                dream.append(out.latents)
            dream_frames = self.vae.decode_frames(torch.stack(dream, 1)).cpu()  # (B, Hn, H, W, 3)
            # teacher-forced: every step from real context (the open loop's first step is one)
        target = real[:, K:K + Hn]
        ours = frame_metrics(rearrange(target, "b t h w c -> (b t) h w c"),
                             rearrange(dream_frames, "b t h w c -> (b t) h w c"))
        copy = frame_metrics(rearrange(target, "b t h w c -> (b t) h w c"),
                             rearrange(real[:, K - 1:K].expand_as(target),
                                       "b t h w c -> (b t) h w c"))
        psnr = ours["psnr"].view(len(target), Hn)
        copy_psnr = copy["psnr"].view(len(target), Hn)
        metrics.update({
            "psnr_step1": psnr[:, 0].mean().item(),
            "copy_last_psnr_step1": copy_psnr[:, 0].mean().item(),
            f"psnr_step{Hn}": psnr[:, -1].mean().item(),
            f"copy_last_psnr_step{Hn}": copy_psnr[:, -1].mean().item(),
            "psnr_open_loop_mean": psnr.mean().item(),
        })
        rows = min(4, len(target))
        strip = np.concatenate([
            np.concatenate([rearrange(target[i].numpy(), "t h w c -> h (t w) c"),
                            rearrange(dream_frames[i].numpy(), "t h w c -> h (t w) c")], 0)
            for i in range(rows)], 0)
        return metrics, {"real_vs_dream": strip.repeat(2, 0).repeat(2, 1)}


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.training.distributed import shutdown_distributed
    from worldsim.training.loop import resolve_checkpoint
    from worldsim.world_model import build_bundle

    cfg = tyro.cli(TrainDynamicsConfig, args=argv)
    ctx = setup(cfg.train)
    task = DynamicsTask(cfg, ctx.device, is_main=ctx.is_main)
    if ctx.is_main:
        params = sum(p.numel() for p in task.model.parameters())
        info = task.data_info()
        print(f"dynamics {params / 1e6:.2f}M parameters, window {task.window}, latents "
              f"{task.vae.latent_shape(*info['frame_shape'][:2])}; data {info['frames']} frames, "
              f"{info['train_windows']} training windows ({info['train_episodes']} train / "
              f"{info['val_episodes']} val episodes); {ctx.world_size} process(es) on "
              f"{ctx.device}", flush=True)
        if task.oversample_share:
            what = "an event" if cfg.event_share else "a revisit"
            print(f"{len(task.train_oversampled)} training windows with {what} "
                  f"({len(task.train_oversampled) / len(task.train_set):.1%}), drawn as "
                  f"{task.oversample_share:.0%} of each batch", flush=True)
    result = train(task, cfg.train, cfg.out, ctx)
    if ctx.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"done: step {result.step}, {result.elapsed_s / 60:.1f} min of training; {shown}",
              flush=True)
        if cfg.bundle:
            bundle = build_bundle(Path(cfg.out) / "bundle", vae_checkpoint=resolve_checkpoint(cfg.vae),
                                  dynamics_checkpoint=result.checkpoint, data=cfg.data,
                                  num_contexts=cfg.bundle_contexts, metrics=result.metrics,
                                  num_steps=cfg.bundle_sample_steps)
            print(f"bundle: {bundle}", flush=True)
    shutdown_distributed(ctx)
