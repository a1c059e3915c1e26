"""`worldsim data info DIR`: what a dataset holds (episodes, frames, split, lengths, actions,
rewards, terminations, bytes on disk, corrupt episodes) and a PNG contact sheet of sample
frames. `worldsim data verify DIR`: check every file against its CRC-32. `worldsim data merge
--out DIR SRC...`: gather several stores of one env (and their latent caches) into one.

`info` reads through memory maps and checks each file's size and shape but not its checksum
(that reads every byte); `verify` does.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro
from gymnasium import spaces

from worldsim.data.minecraft_actions import CAMERA_KEY, VPT_CAMERA
from worldsim.data.store import (
    CorruptEpisodeError,
    EpisodeStore,
    merge_stores,
    write_json_atomic,
)

CRAFTER_ENV_ID = "worldsim/Crafter-v0"
MAX_DISTINCT_REWARDS = 16  # more distinct reward values than this are binned
REWARD_BINS = 10
BAR_WIDTH = 30


@dataclass
class InfoConfig:
    """Summarise a dataset and write a contact sheet of sample frames."""

    dir: Annotated[Path, tyro.conf.Positional]
    """The dataset (episode store) directory."""
    out: Path | None = None
    """Where to write the contact sheet PNG (default: DIR/contact_sheet.png)."""
    sheet: bool = True
    """Write the contact sheet."""
    grid: int = 8
    """The contact sheet shows up to grid x grid frames."""
    split: Literal["all", "train", "val"] = "all"
    """Which episodes to summarise."""
    json: Path | None = None
    """Also write the summary as JSON to this file."""
    seed: int = 0
    """Seed for choosing the contact sheet's frames."""


@dataclass
class VerifyConfig:
    """Check every episode file of a dataset against its size, shape and CRC-32."""

    dir: Annotated[Path, tyro.conf.Positional]
    """The dataset (episode store) directory."""


@dataclass
class MergeConfig:
    """Gather the episodes of several datasets of one env, with their latent caches, into one
    dataset (hard links where the file system allows, so no bytes are copied): e.g. play from
    the default start with play at every hour of the day, for one model to learn from both.
    Episodes keep their names and so their train/validation split. Run it again to resume."""

    sources: Annotated[tuple[Path, ...], tyro.conf.Positional]
    """The datasets to merge (same env id, observation and action spaces)."""
    out: Path
    """The merged dataset's directory (created, or extended if it is a dataset already)."""


# ---------------------------------------------------------------------- statistics
def action_names(store: EpisodeStore) -> list[str] | None:
    """Names of a Discrete action space's actions: from dataset.json ("action_names") if the
    collector stored them, else those `known_action_names` knows for its env."""
    if store.meta.get("action_names"):
        return list(store.meta["action_names"])
    return known_action_names(store.env_id)


def known_action_names(env_id: str) -> list[str] | None:
    """Crafter's action names for worldsim/Crafter-v0 (None if crafter is not installed or for
    any other env)."""
    if env_id == CRAFTER_ENV_ID:
        try:
            import crafter.constants
        except ImportError:
            return None
        return list(crafter.constants.actions)
    return None


def action_histogram(space: spaces.Space, values: np.ndarray,
                     names: list[str] | None = None) -> dict[str, Any]:
    """Summary of one stored action array (T, *space.shape) of one (sub)space."""
    T = len(values)
    if isinstance(space, spaces.Discrete):
        counts = np.bincount(values.reshape(T) - space.start, minlength=space.n)
        out: dict[str, Any] = {"type": "Discrete", "counts": counts.tolist()}
        if names and len(names) == space.n:
            out["names"] = names
        return out
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "pressed": values.reshape(T, -1).sum(0).tolist()}
    if isinstance(space, spaces.MultiDiscrete):
        flat_n = space.nvec.reshape(-1)
        flat_v = (values - space.start).reshape(T, -1)
        return {"type": "MultiDiscrete",
                "counts": [np.bincount(flat_v[:, i], minlength=n).tolist()
                           for i, n in enumerate(flat_n)]}
    if isinstance(space, spaces.Box):
        flat = values.reshape(T, -1).astype(np.float64)
        out = {"type": "Box", "mean": flat.mean(0).tolist() if T else [],
               "std": flat.std(0).tolist() if T else [],
               "min": flat.min(0).tolist() if T else [], "max": flat.max(0).tolist() if T else [],
               "nonzero": (flat != 0).sum(0).tolist()}
        return out
    raise TypeError(f"no histogram for a {type(space).__name__} action space")


def describe_space(space: spaces.Space) -> str:
    """A one-line description; a Dict's sub-spaces are grouped ("23 x Discrete(2), ...")."""
    if not isinstance(space, spaces.Dict):
        return str(space)
    groups = Counter(str(sub) for sub in space.spaces.values())
    return f"Dict of {len(space.spaces)} keys: " + ", ".join(
        f"{n} x {desc}" for desc, n in groups.items())


def reward_histogram(rewards: np.ndarray) -> dict[str, Any]:
    """Counts of each distinct reward value, or of REWARD_BINS equal bins if there are many."""
    values, counts = np.unique(rewards, return_counts=True)
    if len(values) <= MAX_DISTINCT_REWARDS:
        return {"values": values.tolist(), "counts": counts.tolist()}
    counts, edges = np.histogram(rewards, bins=REWARD_BINS)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def summarise(store: EpisodeStore, split: str = "all") -> dict[str, Any]:
    """Every number `worldsim data info` prints, as a JSON-serialisable dict."""
    names = store.split(split)
    corrupt = dict(store.corrupt)
    lengths, rewards, terminated, truncated = [], [], [], []
    actions: dict[str, list[np.ndarray]] = {k: [] for k in store.action_keys}
    ends = Counter()
    episode_bytes = 0
    good = []
    for name in names:
        try:
            ep = store.load(name)
        except CorruptEpisodeError as e:
            corrupt[name] = str(e)
            continue
        good.append(name)
        lengths.append(ep.length)
        rewards.append(np.asarray(ep.rewards, np.float64))
        terminated.append(np.asarray(ep.terminated))
        truncated.append(np.asarray(ep.truncated))
        for k in store.action_keys:
            actions[k].append(np.asarray(ep.actions[k]))
        if ep.length:
            ends["terminated" if ep.terminated[-1] else
                 "truncated" if ep.truncated[-1] else "open"] += 1
        episode_bytes += sum(f.stat().st_size for f in (store.root / "episodes" / name).iterdir())
    val = set(store.split("val"))
    all_rewards = np.concatenate(rewards) if rewards else np.zeros(0)
    lengths_arr = np.asarray(lengths)
    frames = int(lengths_arr.sum() + len(lengths_arr))
    latent_dir = store.root / "latents"
    latent_bytes = sum(f.stat().st_size for f in latent_dir.rglob("*") if f.is_file()) \
        if latent_dir.exists() else 0

    space = store.action_space
    if isinstance(space, spaces.Dict):
        subspaces = dict(space.spaces)
    else:
        subspaces = {"action": space}
    names_ = action_names(store)
    action_summary = {}
    for key, sub in subspaces.items():
        values = np.concatenate(actions[key]) if actions[key] else np.zeros((0, *sub.shape),
                                                                           sub.dtype)
        action_summary[key] = action_histogram(sub, values, names_ if key == "action" else None)
        if key == CAMERA_KEY and isinstance(sub, spaces.Box) and sub.shape == (2,):
            bins = VPT_CAMERA.to_bins(values)
            action_summary[key]["vpt_bins"] = [
                np.bincount(bins[:, i], minlength=VPT_CAMERA.n_bins).tolist() for i in range(2)]

    return {
        "dir": str(store.root),
        "env_id": store.env_id,
        "observation_shape": list(store.observation_space.shape),
        "action_space": str(space),
        "action_space_summary": describe_space(space),
        "split": split,
        "episodes": len(good),
        "train_episodes": sum(n not in val for n in good),
        "val_episodes": sum(n in val for n in good),
        "frames": frames,
        "transitions": int(lengths_arr.sum()),
        "episode_length": ({"min": int(lengths_arr.min()), "mean": float(lengths_arr.mean()),
                            "median": float(np.median(lengths_arr)),
                            "max": int(lengths_arr.max())} if len(lengths_arr) else None),
        "terminated_transitions": int(sum(t.sum() for t in terminated)),
        "truncated_transitions": int(sum(t.sum() for t in truncated)),
        "episode_ends": dict(ends),
        "rewards": {
            "sum": float(all_rewards.sum()),
            "mean_per_episode": float(all_rewards.sum() / len(good)) if good else 0.0,
            "nonzero": int(np.count_nonzero(all_rewards)),
            "min": float(all_rewards.min()) if len(all_rewards) else 0.0,
            "max": float(all_rewards.max()) if len(all_rewards) else 0.0,
            "histogram": reward_histogram(all_rewards),
        },
        "actions": action_summary,
        "bytes": {"episodes": episode_bytes, "latents": latent_bytes,
                  "per_frame": episode_bytes / frames if frames else 0.0},
        "corrupt": corrupt,
    }


# ---------------------------------------------------------------------- printing
def _bar(count: int, total: int, peak: int) -> str:
    """Count, its share of `total`, and a bar scaled so the group's largest count `peak`
    fills BAR_WIDTH."""
    share = count / total if total else 0.0
    return f"{count:>9,d} {100 * share:5.1f}% {'#' * round(BAR_WIDTH * count / max(peak, 1))}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def format_summary(s: dict[str, Any]) -> str:
    """The summary as the text `worldsim data info` prints."""
    lines = [f"dataset {s['dir']}",
             f"  env {s['env_id']}   observations uint8 {tuple(s['observation_shape'])}",
             f"  actions {s['action_space_summary']}",
             f"  split {s['split']}: {s['episodes']} episodes "
             f"(train {s['train_episodes']}, val {s['val_episodes']}), "
             f"{s['frames']:,d} frames, {s['transitions']:,d} transitions"]
    if s["episode_length"]:
        L = s["episode_length"]
        lines.append(f"  episode length: min {L['min']}, mean {L['mean']:.1f}, "
                     f"median {L['median']:.0f}, max {L['max']}")
    ends = s["episode_ends"]
    lines.append(f"  terminated transitions: {s['terminated_transitions']}; episodes ending "
                 f"terminated {ends.get('terminated', 0)}, truncated {ends.get('truncated', 0)}"
                 f", open {ends.get('open', 0)}")
    r = s["rewards"]
    lines.append(f"  rewards: sum {r['sum']:.3g}, per episode {r['mean_per_episode']:.3g}, "
                 f"nonzero {r['nonzero']:,d} of {s['transitions']:,d}, "
                 f"range [{r['min']:.3g}, {r['max']:.3g}]")
    h = r["histogram"]
    labels = ([f"{v:.3g}" for v in h["values"]] if "values" in h else
              [f"[{a:.3g}, {b:.3g})" for a, b in zip(h["edges"][:-1], h["edges"][1:], strict=True)])
    for label, count in zip(labels, h["counts"], strict=True):
        lines.append(f"    {label:>18} {_bar(count, s['transitions'], max(h['counts']))}")
    lines.append("  actions:")
    T = s["transitions"]
    buttons = {k: a["counts"][1] for k, a in s["actions"].items()
               if a["type"] == "Discrete" and len(a["counts"]) == 2 and k != "action"}
    for key, a in s["actions"].items():
        if key in buttons:
            lines.append(f"    {key:<18} pressed {_bar(buttons[key], T, max(buttons.values()))}")
        elif a["type"] == "Discrete":
            if key != "action":
                lines.append(f"    {key}:")
            names = a.get("names") or [str(i) for i in range(len(a["counts"]))]
            for n, c in zip(names, a["counts"], strict=True):
                lines.append(f"    {'  ' if key != 'action' else ''}{n:<18} "
                             f"{_bar(c, T, max(a['counts']))}")
        elif a["type"] == "MultiBinary":
            for i, c in enumerate(a["pressed"]):
                lines.append(f"    {key}[{i}]{'':<10} pressed {_bar(c, T, max(a['pressed']))}")
        elif a["type"] == "MultiDiscrete":
            for i, counts in enumerate(a["counts"]):
                lines.append(f"    {key}[{i}]: " + " ".join(f"{v}:{c}" for v, c in
                                                            enumerate(counts)))
        else:
            for i in range(len(a["mean"])):
                lines.append(f"    {key}[{i}] mean {a['mean'][i]:.3g} std {a['std'][i]:.3g} "
                             f"range [{a['min'][i]:.3g}, {a['max'][i]:.3g}] "
                             f"nonzero {a['nonzero'][i]:,d}")
            for i, counts in enumerate(a.get("vpt_bins", [])):
                axis = ("pitch", "yaw")[i]
                lines.append(f"    {key} {axis} VPT bins: " + " ".join(map(str, counts)))
    b = s["bytes"]
    lines.append(f"  on disk: {_size(b['episodes'])} of episodes "
                 f"({b['per_frame']:,.0f} bytes per frame), {_size(b['latents'])} of latents")
    if s["corrupt"]:
        lines.append(f"  CORRUPT episodes ({len(s['corrupt'])}):")
        lines += [f"    {name}: {reason}" for name, reason in s["corrupt"].items()]
    else:
        lines.append("  corrupt episodes: none found (sizes and shapes; "
                     "`worldsim data verify` checks checksums)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- contact sheet
def sample_frames(store: EpisodeStore, names: list[str], count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Up to `count` frames drawn uniformly from all frames of `names`, in dataset order.
    Returns uint8 (N, H, W, 3)."""
    sizes = np.asarray([store.length(n) + 1 for n in names], np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros((0, *store.frame_shape()), np.uint8)
    picks = np.sort(rng.choice(total, size=min(count, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    episode = np.searchsorted(starts, picks, side="right") - 1
    out = []
    for e in np.unique(episode):
        frames = store.load(names[e]).frames
        out += [np.asarray(frames[p - starts[e]]) for p in picks[episode == e]]
    return np.stack(out)


def contact_sheet(frames: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Tile frames (N, H, W, 3) into a grid `columns` wide with `gap` dark pixels between
    them. Returns uint8 (rows*(H+gap)-gap, columns*(W+gap)-gap, 3)."""
    N, H, W, C = frames.shape
    rows = max(1, -(-N // columns))
    sheet = np.full((rows * (H + gap) - gap, columns * (W + gap) - gap, C), 32, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = frame
    return sheet


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write an RGB image to a temporary PNG beside `path`, then rename it over `path`."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- commands
def _open_store(path: Path, command: str) -> EpisodeStore:
    try:
        return EpisodeStore(path)
    except (FileNotFoundError, CorruptEpisodeError, ValueError, KeyError) as e:
        sys.exit(f"worldsim data {command}: {e}")


def main_info(argv: list[str]) -> None:
    cfg = tyro.cli(InfoConfig, args=argv, prog="worldsim data info")
    store = _open_store(cfg.dir, "info")
    summary = summarise(store, cfg.split)
    print(format_summary(summary))
    if cfg.sheet:
        good = [n for n in store.split(cfg.split) if n not in summary["corrupt"]]
        frames = sample_frames(store, good, cfg.grid * cfg.grid, np.random.default_rng(cfg.seed))
        if len(frames):
            out = cfg.out or cfg.dir / "contact_sheet.png"
            write_png_atomic(out, contact_sheet(frames, cfg.grid))
            summary["contact_sheet"] = str(out)
            print(f"  contact sheet: {out} ({len(frames)} frames from {len(good)} episodes)")
        else:
            print("  contact sheet: no frames to show")
    if cfg.json:
        write_json_atomic(cfg.json, summary)


def main_verify(argv: list[str]) -> None:
    cfg = tyro.cli(VerifyConfig, args=argv, prog="worldsim data verify")
    store = _open_store(cfg.dir, "verify")
    from tqdm import tqdm

    bad = dict(store.corrupt)
    files = checked = 0
    for name in tqdm(store.names, desc="verify", unit="episode", disable=None):
        meta = store.episode_meta(name)
        try:
            store.load(name, verify=True)
        except CorruptEpisodeError as e:
            bad[name] = str(e)
            continue
        files += len(meta["files"])
        checked += sum(spec["bytes"] for spec in meta["files"].values())
    good = len(store.names) - len(bad.keys() & set(store.names))
    print(f"{cfg.dir}: {good} episodes good ({files} files, {_size(checked)} checked)")
    if bad:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in bad.items())
        sys.exit(f"worldsim data verify: {len(bad)} corrupt episodes:\n{lines}")


def main_merge(argv: list[str]) -> None:
    cfg = tyro.cli(MergeConfig, args=argv, prog="worldsim data merge")
    try:
        merged = merge_stores(cfg.out, list(cfg.sources))
    except (FileNotFoundError, CorruptEpisodeError, ValueError, KeyError) as e:
        sys.exit(f"worldsim data merge: {e}")
    tags = sorted(p.name for p in (cfg.out / "latents").glob("*") if p.is_dir())
    print(f"{cfg.out}: {len(merged)} episodes, {merged.num_frames} frames "
          f"({len(merged.split('train'))} train / {len(merged.split('val'))} val) from "
          f"{len(cfg.sources)} datasets; latent caches: {', '.join(tags) or 'none'}")
