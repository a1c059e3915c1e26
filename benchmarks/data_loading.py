"""How fast training can read windows of frames from the episode store, beside references.

    python benchmarks/data_loading.py                      # builds 20k Crafter frames
    python benchmarks/data_loading.py --source random      # random frames (faster to build)
    python benchmarks/data_loading.py --data DIR           # an existing dataset

Prints one JSON object: windows/s and frames/s for random batches of windows of T
consecutive frames, and bytes on disk per frame, for

- store:     `WindowDataset.sample` over the memory-mapped episode store (what training
             uses: frames + actions + rewards + terminated, stacked into a batch);
- in_memory: the same frames as one numpy array in RAM, windows gathered by fancy indexing
             (the upper bound: no files at all);
- npz:       the same episodes saved with `np.savez_compressed`, one file per episode,
             each window read by opening and decompressing its episode (what a compressed
             format without random access costs; omitted with --no-npz).

All in one process pinned to one core, measured in the same run so they compare. The page
cache is warm (the data was just written or read): a dataset larger than RAM reads from disk.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gymnasium import spaces

from worldsim.data.store import Episode, EpisodeStore, WindowDataset


@dataclass
class BenchConfig:
    """Data-loading benchmark: windows of T frames sampled at random from the episode store."""

    data: Path | None = None
    """An existing dataset to read (default: build one in a temporary directory)."""
    source: str = "crafter"
    """What the built dataset holds: 'crafter' (collected play) or 'random' (noise frames)."""
    frames: int = 20_000
    """Frames in the built dataset."""
    episode_length: int = 500
    """Transitions per episode of a 'random' dataset (Crafter episodes end on their own)."""
    size: int = 64
    """Frame height and width of a built dataset."""
    window: int = 16
    """T: consecutive frames per window."""
    batch: int = 32
    """Windows per batch."""
    seconds: float = 3.0
    """Measuring time per reader."""
    npz: bool = True
    """Also measure the compressed-npz reference."""
    seed: int = 0


def pin_to_one_core() -> int | None:
    """Run on a single core so the figures are per core; returns the core or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def build_dataset(cfg: BenchConfig, root: Path) -> EpisodeStore:
    if cfg.source == "crafter":
        from worldsim.data.collect import collect

        # each episode has one more frame than transitions; close enough for a size target
        collect("worldsim/Crafter-v0", steps=cfg.frames, out=root, seed=cfg.seed, size=cfg.size,
                progress=sys.stderr.isatty())
        return EpisodeStore(root)
    if cfg.source != "random":
        raise ValueError(f"source must be 'crafter' or 'random', not {cfg.source!r}")
    rng = np.random.default_rng(cfg.seed)
    store = EpisodeStore.create(root, env_id="random-frames",
                                observation_space=spaces.Box(0, 255, (cfg.size, cfg.size, 3),
                                                             np.uint8),
                                action_space=spaces.Discrete(17))
    left = cfg.frames
    while left > 1:
        T = min(cfg.episode_length, left - 1)
        store.add(Episode(frames=rng.integers(0, 256, (T + 1, cfg.size, cfg.size, 3), np.uint8),
                          actions={"action": rng.integers(0, 17, T)},
                          rewards=np.zeros(T, np.float32), terminated=np.zeros(T, bool),
                          truncated=np.arange(T) == T - 1))
        left -= T + 1
    return store


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(sample_batch, batch: int, window: int, seconds: float) -> dict[str, float]:
    """Call `sample_batch()` for `seconds` (after one warm-up call)."""
    sample_batch()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sample_batch()
        n += 1
    windows = n * batch / elapsed
    return {"windows_per_s": round(windows, 1), "frames_per_s": round(windows * window, 1),
            "batches": n}


def main(argv: list[str] | None = None) -> dict:
    import tyro

    cfg = tyro.cli(BenchConfig, args=argv)
    core = pin_to_one_core()
    with tempfile.TemporaryDirectory(prefix="worldsim-bench-") as tmp:
        tmp = Path(tmp)
        if cfg.data is not None:
            store = EpisodeStore(cfg.data)
        else:
            t0 = time.perf_counter()
            store = build_dataset(cfg, tmp / "store")
            build_s = time.perf_counter() - t0
        T, B = cfg.window, cfg.batch
        dataset = WindowDataset(store, split="all", length=T)
        if len(dataset) == 0:
            raise SystemExit(f"{store.root} has no episode of {T} frames or more")
        H, W, _ = store.frame_shape()
        rng = np.random.default_rng(cfg.seed)
        store_bytes = disk_bytes(store.root / "episodes")
        result = {
            "config": {**asdict(cfg), "data": str(cfg.data) if cfg.data else None,
                       "core": core, "frame_shape": [H, W, 3]},
            "dataset": {"episodes": len(store), "frames": store.num_frames,
                        "windows": len(dataset),
                        "store_bytes_per_frame": round(store_bytes / store.num_frames, 1),
                        "raw_bytes_per_frame": H * W * 3},
        }
        if cfg.data is None:
            result["dataset"]["build_seconds"] = round(build_s, 1)

        result["store"] = measure(lambda: dataset.sample(B, rng), B, T, cfg.seconds)

        # Reference: every frame in one array in RAM, a window is a gather of T rows.
        episodes = [store.load(n, mmap=False) for n in dataset.names]
        frames = np.concatenate([ep.frames for ep in episodes])
        offsets = np.cumsum([0] + [len(ep.frames) for ep in episodes])
        starts = np.concatenate([o + np.arange(len(ep.frames) - T + 1)
                                 for o, ep in zip(offsets, episodes, strict=False)])
        steps = np.arange(T)
        result["in_memory"] = measure(
            lambda: frames[starts[rng.integers(0, len(starts), B)][:, None] + steps], B, T,
            cfg.seconds)

        if cfg.npz:
            npz_dir = tmp / "npz"
            npz_dir.mkdir()
            paths = []
            for i, ep in enumerate(episodes):
                paths.append(npz_dir / f"{i}.npz")
                np.savez_compressed(paths[-1], frames=ep.frames, actions=ep.actions["action"]
                                    if "action" in ep.actions else np.zeros(0))
            # (episode, start) of every window, the same windows as the store's
            index = np.concatenate([np.stack([np.full(len(ep.frames) - T + 1, e),
                                              np.arange(len(ep.frames) - T + 1)], 1)
                                    for e, ep in enumerate(episodes)])

            def npz_batch():
                out = []
                for e, s in index[rng.integers(0, len(index), B)]:
                    with np.load(paths[e]) as f:
                        out.append(f["frames"][s:s + T])
                return np.stack(out)

            result["npz"] = measure(npz_batch, B, T, cfg.seconds)
            result["npz"]["bytes_per_frame"] = round(disk_bytes(npz_dir) / len(frames), 1)

        mem = result["in_memory"]["frames_per_s"]
        result["store_vs_in_memory"] = round(result["store"]["frames_per_s"] / mem, 3)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
