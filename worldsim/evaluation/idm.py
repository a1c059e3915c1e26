"""An inverse-dynamics model (IDM) for measuring controllability: a small CNN that reads two
consecutive frames and names the action taken between them.

The protocol (MineWorld, Guo et al. 2025): train the IDM once on real transitions of the
training split; then label real validation transitions and the world model's dream
transitions (the next frame imagined from a real frame and the recorded action) with it. If
the dream shows what the action does, the IDM recovers the action from the dream about as
often as from the real game. Only Discrete action spaces are handled.

    idm, info = load_or_train_idm(store, cache_root, IDMConfig(), device)
    predicted = idm.predict(frames, next_frames)          # uint8 (N, H, W, 3) each -> (N,)
    table = accuracy_table(predicted, actions, num_actions, action_names)

The trained IDM is cached as a checkpoint directory (config.json + model.safetensors) named
by a key of the training data's fingerprint and the IDM's settings, so every evaluation of
every model on one dataset uses the same IDM, and it is trained only once.

Tensor letters: B batch, K channels, H W frame size, A actions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from gymnasium import spaces
from torch import nn

from worldsim.data.store import EpisodeStore
from worldsim.spaces import space_to_json

IDM_KIND = "idm"
# GroupNorm groups of the CNN's blocks (each block's width must be divisible by it).
NORM_GROUPS = 8
# The pooled grid before the classifier: the position of a change (the player is drawn in the
# middle of Crafter's view; what moved where tells the direction) survives pooling at 4x4,
# and the same weights run at any frame size.
POOLED = 4


@dataclass
class IDMConfig:
    """Architecture and training of the inverse-dynamics model."""

    channels: tuple[int, ...] = (32, 64, 128, 128)
    """Widths of the stride-2 conv blocks (each halves the frame size)."""
    hidden: int = 256
    """Width of the classifier's hidden layer."""
    steps: int = 3000
    """Training steps."""
    batch_size: int = 64
    """Transitions per training step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, cosine decay to 5% after a short warm-up)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initial weights and of the training batches."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IDMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"IDM config: unknown settings {sorted(set(data) - names)}, "
                             f"missing {sorted(names - set(data))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def num_discrete_actions(space: spaces.Space) -> int:
    """The number of actions of a Discrete space (starting at `space.start`); any other space
    raises ValueError naming it (the IDM is a classifier over one discrete choice)."""
    if not isinstance(space, spaces.Discrete):
        raise ValueError(f"the inverse-dynamics model needs a Discrete action space, "
                         f"got {space}")
    return int(space.n)


class ConvBlock(nn.Module):
    """3x3 conv with stride 2, GroupNorm, SiLU: (B, K_in, H, W) -> (B, K_out, H/2, W/2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout % NORM_GROUPS:
            raise ValueError(f"IDM block width {cout} is not divisible by {NORM_GROUPS} groups")
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(NORM_GROUPS, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class InverseDynamicsModel(nn.Module):
    """(frame_t, frame_t+1) -> logits over the A actions.

    The input stacks both frames and their difference (9 channels): the difference makes
    small changes, such as the player turning to face another way, visible to the first
    layer instead of something two separate images must be compared for.
    """

    def __init__(self, num_actions: int, config: IDMConfig | None = None):
        super().__init__()
        self.config = config = config or IDMConfig()
        self.num_actions = num_actions
        widths = (9, *config.channels)
        self.blocks = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                      strict=True)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * POOLED**2, config.hidden),
                                  nn.SiLU(), nn.Linear(config.hidden, num_actions))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, frames: torch.Tensor, next_frames: torch.Tensor) -> torch.Tensor:
        """frames, next_frames: uint8 (B, H, W, 3) -> logits (B, A)."""
        if frames.shape != next_frames.shape or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected two uint8 frame batches (B, H, W, 3) of one shape, got "
                             f"{tuple(frames.shape)} and {tuple(next_frames.shape)}")
        a = rearrange(frames, "b h w k -> b k h w").float() / 127.5 - 1.0
        b = rearrange(next_frames, "b h w k -> b k h w").float() / 127.5 - 1.0
        x = self.blocks(torch.cat([a, b, b - a], dim=1))
        return self.head(F.adaptive_avg_pool2d(x, POOLED))

    @torch.no_grad()
    def predict(self, frames: np.ndarray | torch.Tensor, next_frames: np.ndarray | torch.Tensor,
                batch_size: int = 256) -> np.ndarray:
        """The most likely action of each transition: uint8 (N, H, W, 3) twice -> int64 (N,)."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(frames), batch_size):
            a = torch.as_tensor(np.asarray(frames[i:i + batch_size])).to(self.device)
            b = torch.as_tensor(np.asarray(next_frames[i:i + batch_size])).to(self.device)
            out.append(self(a, b).argmax(-1).cpu())
        self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------- data
class Transitions:
    """The transitions (frame t, action t, frame t+1) of some episodes of a store, memory-mapped.
    Actions come out as class indices 0..A-1 (the Discrete space's `start` subtracted).

    index: int64 (N, 2) rows of (episode number in `names`, t)."""

    def __init__(self, store: EpisodeStore, names: Sequence[str]):
        try:
            num_discrete_actions(store.action_space)
        except ValueError as e:
            raise ValueError(f"{store.root}: {e}") from None
        self.offset = int(store.action_space.start)
        self.store, self.names = store, list(names)
        self.episodes = [store.load(n) for n in self.names]
        lengths = [ep.length for ep in self.episodes]
        self.index = np.concatenate(
            [np.stack([np.full(n, e), np.arange(n)], 1) for e, n in enumerate(lengths)]
        ).astype(np.int64) if self.episodes else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames t (N, H, W, 3), frames t+1 (N, H, W, 3), actions (N,) of index rows."""
        picks = self.index[np.asarray(rows, dtype=np.int64)]
        a = np.stack([self.episodes[e].frames[t] for e, t in picks])
        b = np.stack([self.episodes[e].frames[t + 1] for e, t in picks])
        actions = np.array([self.episodes[e].actions["action"][t] for e, t in picks],
                           dtype=np.int64) - self.offset
        return a, b, actions

    def sample(self, rng: np.random.Generator, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.gather(rng.integers(0, len(self), batch_size))


def train_idm(data: Transitions, num_actions: int, config: IDMConfig,
              device: torch.device | str = "cpu",
              log: Callable[[str], None] | None = print) -> tuple[InverseDynamicsModel, dict]:
    """Train an IDM on random batches of `data` (cross-entropy, AdamW, cosine schedule).
    Returns the model (eval mode) and training statistics."""
    if len(data) == 0:
        raise ValueError("no transitions to train the inverse-dynamics model on")
    torch.manual_seed(config.seed)
    model = InverseDynamicsModel(num_actions, config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, min(100, config.steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, config.steps - warmup)
        return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = np.random.default_rng(config.seed)
    model.train()
    start, running_loss, running_acc = time.perf_counter(), 0.0, 0.0
    every = max(1, config.steps // 10)
    for step in range(config.steps):
        a, b, y = data.sample(rng, config.batch_size)
        a, b = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        y = torch.from_numpy(y).to(device)
        logits = model(a, b)
        loss = F.cross_entropy(logits, y)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # exponential moving averages of the training loss and accuracy, for the log
        running_loss = 0.98 * running_loss + 0.02 * loss.item() if step else loss.item()
        acc = (logits.argmax(-1) == y).float().mean().item()
        running_acc = 0.98 * running_acc + 0.02 * acc if step else acc
        if log is not None and ((step + 1) % every == 0 or step + 1 == config.steps):
            log(f"  idm step {step + 1}/{config.steps}: loss {running_loss:.3f}, "
                f"train accuracy {running_acc:.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return model, {"train_seconds": time.perf_counter() - start, "final_train_loss": running_loss,
                   "final_train_accuracy": running_acc, "train_transitions": len(data)}


# ---------------------------------------------------------------------- cache
def idm_cache_key(store: EpisodeStore, names: Sequence[str], config: IDMConfig) -> str:
    """16 hex digits naming an IDM: the training episodes' fingerprint, the action and
    observation spaces and the IDM's settings."""
    from worldsim.training.checkpoint import dataset_fingerprint

    desc = {"data": dataset_fingerprint(store, list(names)), "config": config.to_dict(),
            "action_space": space_to_json(store.action_space),
            "observation_space": space_to_json(store.observation_space)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def load_idm(directory: str | os.PathLike, device: torch.device | str = "cpu"
             ) -> tuple[InverseDynamicsModel, dict]:
    """An IDM checkpoint directory -> (model in eval mode, its config.json). Strict."""
    from worldsim.training.checkpoint import (
        CheckpointError,
        load_checkpoint,
        load_state_dict_strict,
    )

    meta, tensors = load_checkpoint(directory, groups=["model"])
    if meta.get("kind") != IDM_KIND:
        raise CheckpointError(f"{directory}/config.json does not describe an inverse-dynamics "
                              f"model (kind={meta.get('kind')!r})")
    try:
        config = IDMConfig.from_dict(meta["idm"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from e
    model = InverseDynamicsModel(int(meta["num_actions"]), config)
    load_state_dict_strict(model, tensors["model"], f"{directory}/model.safetensors")
    return model.to(device).eval(), meta


def default_cache_root(data: str | os.PathLike, fallback: str | os.PathLike) -> Path:
    """DATA/idm beside the dataset when it can be written to (so every evaluation on that
    dataset shares one IDM), else `fallback`."""
    data = Path(data)
    root = data / "idm"
    if os.access(root if root.exists() else data, os.W_OK):
        return root
    return Path(fallback)


def load_or_train_idm(store: EpisodeStore, cache_root: str | os.PathLike,
                      config: IDMConfig | None = None, device: torch.device | str = "cpu",
                      log: Callable[[str], None] | None = print,
                      names: Sequence[str] | None = None) -> tuple[InverseDynamicsModel, dict]:
    """The IDM of `store`'s training split (or `names`) from the cache under `cache_root`,
    trained and saved there first if it is missing. Returns (model, info) where info holds
    the cache path, whether it was trained now, and the training statistics."""
    from worldsim.training.checkpoint import save_checkpoint, versions

    config = config or IDMConfig()
    num_actions = num_discrete_actions(store.action_space)
    names = list(store.split("train") if names is None else names)
    key = idm_cache_key(store, names, config)
    directory = Path(cache_root) / f"idm-{key}"
    if (directory / "config.json").exists():
        model, meta = load_idm(directory, device)
        if log is not None:
            log(f"inverse-dynamics model: cached {directory}")
        return model, {"path": str(directory), "trained_now": False, **meta.get("metrics", {})}
    if log is not None:
        log(f"inverse-dynamics model: training on {len(names)} episodes ({config.steps} steps), "
            f"cached as {directory}")
    data = Transitions(store, names)
    model, stats = train_idm(data, num_actions, config, device, log)
    meta = {"kind": IDM_KIND, "idm": config.to_dict(), "num_actions": num_actions,
            "action_space": space_to_json(store.action_space),
            "observation_space": space_to_json(store.observation_space),
            "data": {"path": str(Path(store.root).resolve()), "episodes": len(names),
                     "key": key},
            "versions": versions(), "metrics": stats}
    save_checkpoint(directory, meta, {"model": model.state_dict()})
    return model, {"path": str(directory), "trained_now": True, **stats}


# ---------------------------------------------------------------------- scoring
def accuracy_table(predicted: np.ndarray, target: np.ndarray, num_actions: int,
                   action_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy overall and per true action: {"accuracy", "count", "per_action": {name:
    {"count", "accuracy"}}} (accuracy NaN where an action never occurs), plus the macro
    average over the actions that occur."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape:
        raise ValueError(f"{predicted.shape} predictions for {target.shape} targets")
    names = list(action_names) if action_names is not None else [str(a)
                                                                 for a in range(num_actions)]
    right = (predicted == target).astype(np.float64)
    per = {}
    for a in range(num_actions):
        mask = target == a
        per[names[a]] = {"count": int(mask.sum()),
                         "accuracy": float(right[mask].mean()) if mask.any() else float("nan")}
    present = [v["accuracy"] for v in per.values() if v["count"]]
    return {"accuracy": float(right.mean()) if len(right) else float("nan"),
            "count": int(len(right)),
            "macro_accuracy": float(np.mean(present)) if present else float("nan"),
            "per_action": per}
