"""Achievement labels of recorded Crafter play: which achievement each transition unlocked.

Crafter pays +1 the first time in an episode that each of its 22 achievements is unlocked, but
the episode store keeps only the reward, not which achievement earned it. A reward model that
knows the achievement can pay it once per episode in the dream (`RewardModelConfig.
achievements`), instead of paying `do` on a sapling again and again. The labels are recovered
by replaying each episode in the real game: reset with the episode's recorded seed, step its
recorded actions, and read `info["achievements"]` (counts per achievement) after every step.
The replayed frames are checked against the recorded ones, so a label never comes from a
different game than the one recorded.

Layout (beside the latent cache)::

    DIR/labels/achievements/names.json     the achievement names, in label column order
    DIR/labels/achievements/<name>.npy     bool (T, A): transition t unlocked achievement a

    worldsim data label-achievements DIR   (resumable: labelled episodes are skipped)
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from worldsim.data.store import Episode, EpisodeStore, write_json_atomic
from worldsim.spaces import unstack_action

LABEL_DIR = Path("labels") / "achievements"


class ReplayError(RuntimeError):
    """An episode that cannot be replayed to recover its labels. The message names it."""


def label_dir(store: EpisodeStore) -> Path:
    return store.root / LABEL_DIR


def achievement_names(store: EpisodeStore) -> list[str] | None:
    """The label columns' achievement names, or None if the dataset has no labels."""
    path = label_dir(store) / "names.json"
    return json.loads(path.read_text()) if path.exists() else None


def has_labels(store: EpisodeStore, name: str) -> bool:
    return (label_dir(store) / f"{name}.npy").exists()


def load_labels(store: EpisodeStore, name: str) -> np.ndarray:
    """bool (T, A): which achievements transition t of episode `name` unlocked."""
    path = label_dir(store) / f"{name}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no achievement labels for episode {name} under "
                                f"{path.parent}; run `worldsim data label-achievements "
                                f"{store.root}` first")
    labels = np.load(path)
    names = achievement_names(store) or []
    if labels.shape != (store.length(name), len(names)) or labels.dtype != bool:
        raise ValueError(f"{path} holds {labels.dtype} {labels.shape}, expected bool "
                         f"{(store.length(name), len(names))}")
    return labels


def unlocked_before(labels: np.ndarray, t: int) -> np.ndarray:
    """bool (A,): the achievements unlocked by the transitions before frame t."""
    return labels[:t].any(axis=0)


def replay_labels(env, episode: Episode, names: list[str], episode_name: str = "") -> np.ndarray:
    """Replay `episode` in `env` (the real game) from its recorded reset seed and return its
    labels, bool (T, len(names)). Raises ReplayError if it cannot be replayed or the replayed
    frames differ from the recorded ones."""
    seed = episode.info.get("seed")
    if seed is None:
        raise ReplayError(f"episode {episode_name}: its info holds no reset seed")
    obs, info = env.reset(seed=int(seed))
    if not np.array_equal(obs, episode.frames[0]):
        raise ReplayError(f"episode {episode_name}: the reset with seed {seed} does not "
                          "show the recorded first frame")
    column = {n: i for i, n in enumerate(names)}
    labels = np.zeros((episode.length, len(names)), dtype=bool)
    before = {n: 0 for n in names}
    for t in range(episode.length):
        obs, _, _, _, info = env.step(unstack_action(env.action_space, episode.actions, t))
        counts = info.get("achievements")
        if not isinstance(counts, dict):
            raise ReplayError(f"episode {episode_name}: the env's info has no achievement "
                              "counts")
        for n, c in counts.items():
            if c > 0 and before.get(n, 0) == 0:
                if n not in column:
                    raise ReplayError(f"episode {episode_name}: unknown achievement {n!r}")
                labels[t, column[n]] = True
        before = dict(counts)
        if not np.array_equal(obs, episode.frames[t + 1]):
            raise ReplayError(f"episode {episode_name}: replaying the recorded actions from "
                              f"seed {seed} departs from the recorded frames at step {t + 1}")
    return labels


def _write_labels(path: Path, labels: np.ndarray) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, labels)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def label_achievements(root: str | os.PathLike, progress: bool = True) -> dict[str, int | str]:
    """Label every episode of the dataset at `root` that has no labels yet. Returns counts of
    labelled, skipped (already labelled) and failed episodes (each failure is also reported
    by name in "failures")."""
    from tqdm import tqdm

    from worldsim.data.collect import make_env

    store = EpisodeStore(root)
    env = make_env(store.env_id, store.frame_shape()[:2], store.meta.get("env_kwargs") or {},
                   max_episode_steps=10**9)
    names = list(getattr(env.unwrapped, "achievement_names", ()))
    if not names:
        raise SystemExit(f"{store.env_id} does not name achievements: nothing to label")
    out = label_dir(store)
    out.mkdir(parents=True, exist_ok=True)
    known = achievement_names(store)
    if known is not None and known != names:
        raise SystemExit(f"{out} holds labels for the achievements {known}, the env names {names}")
    write_json_atomic(out / "names.json", names)
    counts: dict[str, int | str] = {"labelled": 0, "skipped": 0, "failed": 0}
    failures = []
    for name in tqdm(store.names, desc="label", unit="episode", disable=not progress or None):
        if has_labels(store, name):
            counts["skipped"] += 1
            continue
        try:
            labels = replay_labels(env, store.load(name), names, name)
        except ReplayError as e:
            failures.append(str(e))
            counts["failed"] += 1
            continue
        _write_labels(out / f"{name}.npy", labels)
        counts["labelled"] += 1
    env.close()
    if failures:
        counts["failures"] = "; ".join(failures[:10]) + (" ..." if len(failures) > 10 else "")
    return counts


@dataclass
class LabelConfig:
    """Recover which achievement each transition unlocked by replaying the episodes in the
    real game from their recorded seeds (Crafter). Resumable."""

    dir: Annotated[Path, tyro.conf.Positional]
    """The dataset (episode store) directory."""
    progress: bool = True


def main(argv: list[str] | None = None) -> None:
    cfg = tyro.cli(LabelConfig, args=argv, prog="worldsim data label-achievements")
    counts = label_achievements(cfg.dir, cfg.progress)
    print(json.dumps(counts))
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} episode(s) could not be labelled")
