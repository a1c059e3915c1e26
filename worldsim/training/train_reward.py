"""`worldsim train reward`: train the companion reward and termination model
(worldsim.models.reward_model) on a dataset's latent cache.

    worldsim train reward --data DATASET --vae VAE_RUN --out RUN [--dynamics RUN_OR_BUNDLE]

A training example is one transition (z_t, a_t, z_{t+1}, reward, terminated). A share
`event_share` of every batch is drawn from the rare transitions with a nonzero reward or a
termination; the model's logits are corrected for that share (see the model's docstring).

With `--dynamics`, evaluation also reads the next frames as the dynamics model samples them
from the `context` real frames before each transition (what the model reads in the
simulator), and `--predicted-share` > 0 trains on a share of such frames too. By default it
does not: a model trained on sampled frames learns to guess rewards the frame does not show
(measured: "do" was worth 0.08 in every dream state, and agents farmed it).

Evaluation (EMA weights): weighted precision / recall of nonzero rewards (the most likely
support value) and of terminations (probability above 0.5) on every held-out event transition
and a sample of the others, on recorded next latents and, with `--dynamics`, on sampled ones.
The run's newest checkpoint goes into a bundle with `worldsim bundle --reward RUN`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldsim.data.store import EpisodeStore, WindowDataset, oversampled_indices
from worldsim.evaluation.fidelity import precision_recall
from worldsim.models.dynamics import reward_support_from_data
from worldsim.models.reward_model import (
    RewardModel,
    RewardModelConfig,
    event_shares,
)
from worldsim.models.vae import VAE
from worldsim.runtime import autocast
from worldsim.spaces import space_to_json
from worldsim.training.checkpoint import dataset_fingerprint, recorded_path
from worldsim.training.encode import ensure_latents
from worldsim.training.loop import TrainConfig, TrainingTask, setup, train
from worldsim.world_model import load_dynamics


def _default_train() -> TrainConfig:
    return TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=500,
                       ema_decay=0.99, weight_decay=0.01)


@dataclass
class TrainRewardConfig:
    """Train the reward and termination model on a dataset's latents."""

    data: Path
    """Episode store directory."""
    vae: Path
    """VAE checkpoint, a `worldsim train vae` run directory, or a bundle (its VAE)."""
    out: Path
    """Run directory (checkpoints, TensorBoard logs, metrics.jsonl); resumed if it exists."""
    dynamics: Path | None = None
    """Dynamics checkpoint, run directory or bundle whose sampled next frames a share of each
    batch is trained on (see `predicted_share`); None: recorded frames only."""
    predicted_share: float = 0.0
    """Share of each batch whose next latent is sampled by `dynamics` (0: `dynamics` is only
    used to evaluate on sampled frames). Training on sampled frames teaches the model to guess
    a reward the frame does not show, which an agent in imagination can farm."""
    action_input: bool = False
    """The model also reads the action (see `RewardModelConfig.action_input`)."""
    next_frame_input: bool = True
    """The model reads frame t + 1; `--no-next-frame-input --action-input`: frame t and the
    action only (see `RewardModelConfig.next_frame_input`)."""
    sampling_steps: int = 1
    """Sampler steps of `dynamics` for those frames (the shipped bundle's default)."""
    context: int = 3
    """Real frames the dynamics model sees before the transition."""
    event_share: float = 0.5
    """Share of each batch drawn from transitions with a nonzero reward or a termination."""
    achievements: bool = False
    """Also learn which achievement a transition unlocks, from the dataset's labels
    (`worldsim data label-achievements`), so that the simulator pays each once per episode
    (see `RewardModelConfig.achievements`)."""
    width: int = 128
    """Channels of the model's convolutional trunk."""
    train: TrainConfig = field(default_factory=_default_train)
    eval_plain: int = 2048
    """Held-out transitions without an event sampled for each evaluation (all event ones are
    used)."""


def _vae_path(path: Path) -> Path:
    return path / "vae" if (path / "vae" / "config.json").exists() else path


class RewardTask(TrainingTask):
    """Transition -> reward and termination on a latent cache (see `TrainingTask`)."""

    kind = "reward"

    def __init__(self, cfg: TrainRewardConfig, device: torch.device, is_main: bool = True):
        if not 0 <= cfg.event_share < 1 or not 0 <= cfg.predicted_share <= 1:
            raise ValueError("event_share must be in [0, 1) and predicted_share in [0, 1]")
        self.cfg, self.device = cfg, torch.device(device)
        self.store = EpisodeStore(cfg.data)
        self.vae = VAE.from_checkpoint(_vae_path(Path(cfg.vae)), device=self.device)
        self.tag = ensure_latents(self.vae, self.store, cfg.vae, is_main)
        self.dynamics = None if cfg.dynamics is None else load_dynamics(
            cfg.dynamics, device=self.device, vae_fingerprint=self.vae.latent_fingerprint())[0]
        length = cfg.context + 1 if self.dynamics is not None else 2
        self.train_set = WindowDataset(self.store, "train", length=length, latents=self.tag)
        self.val_set = WindowDataset(self.store, "val", length=length, latents=self.tag)
        events = self.train_set.last_transition_events()
        self.train_events, self.train_plain = np.flatnonzero(events), np.flatnonzero(~events)
        if len(self.train_events) == 0 or len(self.train_plain) == 0:
            raise ValueError(f"{cfg.data}: the training split needs transitions with and "
                             f"without a reward or termination")
        self.achievement_names: tuple[str, ...] = ()
        self._labels: dict[str, list[np.ndarray]] = {}
        if cfg.achievements:
            from worldsim.data.achievements import achievement_names, load_labels

            names = achievement_names(self.store)
            if not names:
                raise SystemExit(f"{cfg.data} has no achievement labels; run `worldsim data "
                                 f"label-achievements {cfg.data}` first")
            self.achievement_names = tuple(names)
            self._labels = {split: [load_labels(self.store, n) for n in ds.names]
                            for split, ds in (("train", self.train_set), ("val", self.val_set))}
        rewards, terminated = self._split_events("train")
        event = (rewards != 0) | terminated  # the transitions oversampled
        labels = None
        if self._labels:
            labels = np.concatenate(self._labels["train"]).astype(np.float32)
            rewards = rewards - labels.sum(1)  # the reward head learns the rest (health)
        support = reward_support_from_data(torch.from_numpy(rewards))
        shares = event_shares(torch.from_numpy(rewards), torch.from_numpy(terminated), support,
                              cfg.event_share, event=torch.from_numpy(event),
                              achievements=None if labels is None else torch.from_numpy(labels))
        h, w = self.vae.latent_shape(*self.store.frame_shape()[:2])[1:]
        self.model_config = RewardModelConfig(latent_channels=self.vae.latent_channels,
                                              latent_size=(h, w), width=cfg.width,
                                              action_input=cfg.action_input,
                                              next_frame_input=cfg.next_frame_input,
                                              reward_support=support,
                                              achievements=self.achievement_names, **shares)
        self.model = RewardModel(self.model_config, self.store.action_space).to(self.device)
        self._eval: dict[str, Any] | None = None
        self._pool: dict[str, Any] | None = None  # cached sampled next frames

    def _split_events(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All rewards and terminations of a split's episodes (those of its windows), flat."""
        dataset = self.train_set if split == "train" else self.val_set
        eps = [self.store.load(n) for n in dataset.names]
        return (np.concatenate([np.asarray(e.rewards, np.float32) for e in eps]),
                np.concatenate([np.asarray(e.terminated, bool) for e in eps]))

    def config(self) -> dict[str, Any]:
        c = self.cfg
        return {"reward_model": self.model_config.to_dict(), "event_share": c.event_share,
                "dynamics": None if c.dynamics is None else recorded_path(c.dynamics),
                "predicted_share": c.predicted_share, "sampling_steps": c.sampling_steps,
                "context": c.context, "vae_fingerprint": self.vae.latent_fingerprint()}

    def data_info(self) -> dict[str, Any]:
        s = self.store
        return {"path": recorded_path(self.cfg.data), "env_id": s.env_id,
                "fingerprint": dataset_fingerprint(s), "episodes": len(s),
                "frames": s.num_frames, "train_transitions": len(self.train_set),
                "train_events": len(self.train_events)}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"kind": self.kind, "reward_model": self.model_config.to_dict(),
                "action_space": space_to_json(self.store.action_space),
                "observation_space": space_to_json(self.store.observation_space),
                "env_id": self.store.env_id, "vae_fingerprint": self.vae.latent_fingerprint()}

    # ------------------------------------------------------------------ batches
    def _sampled_next(self, dataset: WindowDataset, index: np.ndarray, seed: int,
                      what: str) -> torch.Tensor:
        """The dynamics model's sample of the last frame of each window at `index` from the
        real frames before it: (N, C, h, w), on the CPU. Sampling costs about 10 ms a
        transition here, so it is done once per run, not per batch."""
        from tqdm.auto import tqdm

        g = torch.Generator(self.device).manual_seed(seed)
        out = []
        chunks = range(0, len(index), 128)
        for i in tqdm(chunks, desc=f"sampling {what} next frames", disable=len(chunks) < 4):
            windows = dataset.take(index[i:i + 128])
            z = torch.from_numpy(windows["observations"]).to(self.device).float()
            actions = {k: torch.from_numpy(v).to(self.device) for k, v in windows["actions"].items()}
            with torch.no_grad(), autocast(self.device, self.cfg.train.bf16):
                state = self.dynamics.start(z[:, :-1], {k: v[:, :-1] for k, v in actions.items()}, g)
                step = self.dynamics.step(state, {k: v[:, -1] for k, v in actions.items()}, g,
                                          num_steps=self.cfg.sampling_steps)
            out.append(step.latents.float().cpu())
        return torch.cat(out)

    def _sampled_pool(self, rng: np.random.Generator) -> dict[str, Any]:
        """Training windows whose sampled next frame is cached: every event window and as many
        others (chosen with `rng`)."""
        plain = np.sort(rng.choice(self.train_plain, min(len(self.train_plain),
                                                         len(self.train_events)), replace=False))
        index = np.concatenate([self.train_events, plain])
        first_plain = len(self.train_events)
        return {"index": index, "events": np.arange(first_plain),
                "plain": np.arange(first_plain, len(index)),
                "latents": self._sampled_next(self.train_set, index, seed=1, what="training")}

    def _transitions(self, split: str, index: np.ndarray, sampled: torch.Tensor | None = None,
                     rows: np.ndarray | None = None) -> dict[str, Any]:
        """The last transition of each window at `index` of a split. With `sampled`
        (n, C, h, w), those next latents replace the recorded ones of `rows` ((B,) bool with
        n set; default all). With achievement labels, "achievements" (B, A) holds them and
        "rewards" the rest of each reward."""
        dataset = self.train_set if split == "train" else self.val_set
        windows = dataset.take(index)
        z = torch.from_numpy(windows["observations"][:, -2:]).to(self.device).float()
        nxt = z[:, 1].clone()
        if sampled is not None:
            where = slice(None) if rows is None else torch.from_numpy(rows).to(self.device)
            nxt[where] = sampled.to(self.device)
        out = {"previous": z[:, 0], "latents": nxt,
               "actions": {k: torch.from_numpy(v[:, -1]).to(self.device)
                           for k, v in windows["actions"].items()},
               "rewards": torch.from_numpy(windows["rewards"][:, -1]).to(self.device).float(),
               "terminated": torch.from_numpy(windows["terminated"][:, -1]).to(self.device)}
        if self._labels:
            episodes, steps = dataset.last_transitions(index)
            labels = np.stack([self._labels[split][e][t] for e, t in zip(episodes, steps,
                                                                         strict=True)])
            out["achievements"] = torch.from_numpy(labels).to(self.device).float()
            out["total_rewards"] = out["rewards"]
            out["rewards"] = out["rewards"] - out["achievements"].sum(-1)
        return out

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Any]:
        """previous, latents (B, C, h, w), actions {key: (B, ...)}, rewards, terminated (B,)."""
        index, events = oversampled_indices(rng, batch_size, self.cfg.event_share,
                                            self.train_events, self.train_plain)
        if self.dynamics is None or self.cfg.predicted_share == 0:
            return self._transitions("train", index)
        if self._pool is None:
            self._pool = self._sampled_pool(np.random.default_rng(self.cfg.train.seed))
        pool = self._pool
        use = rng.random(batch_size) < self.cfg.predicted_share
        picks = np.where(events, rng.choice(pool["events"], batch_size),
                         rng.choice(pool["plain"], batch_size))[use]
        index[use] = pool["index"][picks]
        return self._transitions("train", index, pool["latents"][picks], use)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        inner = getattr(model, "module", model)
        return inner.loss(batch["previous"], batch["actions"], batch["latents"],
                          batch["rewards"], batch["terminated"], batch.get("achievements"))

    # ------------------------------------------------------------------ evaluation
    def _validation(self) -> dict[str, Any]:
        """Every held-out event transition and `eval_plain` others, with weights that make
        weighted counts estimates over all held-out transitions (and their sampled next
        frames, with `dynamics`)."""
        if self._eval is None:
            events = self.val_set.last_transition_events()
            plain = np.flatnonzero(~events)
            take = min(len(plain), self.cfg.eval_plain)
            chosen = np.sort(np.random.default_rng(0).choice(plain, take, replace=False))
            index = np.concatenate([np.flatnonzero(events), chosen])
            weights = np.concatenate([np.ones(int(events.sum())),
                                      np.full(take, len(plain) / max(take, 1))])
            self._eval = {"index": index, "weights": weights}
            if self.dynamics is not None:
                self._eval["sampled"] = self._sampled_next(self.val_set, index, seed=0,
                                                           what="held-out")
        return self._eval

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        val = self._validation()
        index, w = val["index"], val["weights"]
        kinds = {"recorded": None, **({"sampled": val["sampled"]} if "sampled" in val else {})}
        metrics: dict[str, float] = {}
        for name, sampled in kinds.items():
            rewards, expected, terms, true_r, true_d = [], [], [], [], []
            for i in range(0, len(index), 512):
                b = self._transitions("val", index[i:i + 512],
                                      None if sampled is None else sampled[i:i + 512])
                # Achievements are paid as at an episode's start (nothing unlocked before).
                pred = model.predict(b["previous"], b["actions"], b["latents"], "mode")
                reward, mean = pred.reward, pred.reward_probs @ model.support
                if pred.achievement_reward is not None:
                    mean = mean + pred.achievement_reward
                rewards.append(reward.cpu().numpy())
                expected.append(mean.cpu().numpy())
                terms.append(pred.termination_prob.cpu().numpy())
                true_r.append(b.get("total_rewards", b["rewards"]).cpu().numpy())
                true_d.append(b["terminated"].cpu().numpy().astype(bool))
            reward, term = np.concatenate(rewards), np.concatenate(terms)
            r, d = np.concatenate(true_r), np.concatenate(true_d)
            for label, pr in (("reward", precision_recall(reward != 0, r != 0, w)),
                              ("reward_positive", precision_recall(reward > 0, r > 0, w)),
                              ("termination", precision_recall(term > 0.5, d, w))):
                metrics[f"{name}_{label}_precision"] = pr["precision"]
                metrics[f"{name}_{label}_recall"] = pr["recall"]
            # What an agent trained on expected rewards sees: their mean where the data has a
            # +1 (an achievement) and where it has nothing.
            expected_reward = np.concatenate(expected)
            for label, rows in (("achievement", r >= 0.5), ("plain", (r == 0) & ~d)):
                metrics[f"{name}_expected_reward_{label}"] = float(
                    (w[rows] * expected_reward[rows]).sum() / max(w[rows].sum(), 1e-9))
        return metrics, {}


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.training.distributed import shutdown_distributed

    cfg = tyro.cli(TrainRewardConfig, args=argv)
    ctx = setup(cfg.train)
    task = RewardTask(cfg, ctx.device, is_main=ctx.is_main)
    if ctx.is_main:
        params = sum(p.numel() for p in task.model.parameters())
        print(f"reward model {params / 1e6:.2f}M parameters; {len(task.train_set)} training "
              f"transitions, {len(task.train_events)} with a reward or termination; reward "
              f"support {task.model_config.reward_support}", flush=True)
    result = train(task, cfg.train, cfg.out, ctx)
    if ctx.is_main:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items())
        print(f"done: step {result.step}; {shown}", flush=True)
    shutdown_distributed(ctx)
