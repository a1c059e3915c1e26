"""The episode store: recorded play on disk, written atomically, read by memory-mapping.

Layout of a dataset directory::

    DIR/dataset.json                 env id, observation/action spaces (JSON), versions
    DIR/episodes/<name>/meta.json    length, per-file shape/dtype/CRC-32, seed, summary
    DIR/episodes/<name>/frames.npy   uint8 (T+1, H, W, 3)  observations o_0 .. o_T
    DIR/episodes/<name>/actions.<key>.npy   (T, ...)       a_t taken after o_t
    DIR/episodes/<name>/rewards.npy        float32 (T,)     r_{t+1}, received on reaching o_{t+1}
    DIR/episodes/<name>/terminated.npy     bool (T,)        o_{t+1} is terminal
    DIR/episodes/<name>/truncated.npy      bool (T,)        the episode was cut after o_{t+1}
    DIR/latents/<tag>/<name>.npy     float16 (T+1, C, h, w) a VAE's latents of frames.npy

Why plain `.npy` files: uncompressed arrays can be memory-mapped, so sampling a window of
T consecutive frames is a slice, not a decode (see benchmarks/data_loading.py). The price is
disk: 12,288 bytes per 64x64 frame, 12.3 GB per million frames.

Crash safety: an episode is written into `episodes/.tmp-<name>/` and renamed into place once
every file is complete, so a collector killed at any moment leaves only whole episodes (and a
`.tmp-*` directory that readers ignore and the next writer removes). Corruption is detected
from each file's size and CRC-32 and reported with the file's path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from worldsim.spaces import action_keys, space_from_json, space_to_json

FORMAT = "worldsim-episodes"
FORMAT_VERSION = 1
VALIDATION_PERMILLE = 100  # 10% of episodes, chosen by a hash of the episode name


class CorruptEpisodeError(RuntimeError):
    """An episode file that is missing, truncated or fails its checksum. The message names it."""


@dataclass
class Episode:
    """One episode of play. T transitions, T+1 frames.

    frames:     uint8 (T+1, H, W, 3)
    actions:    {key: (T, ...)}; key "action" for non-Dict spaces, else the Dict's keys
    rewards:    float32 (T,)
    terminated: bool (T,)
    truncated:  bool (T,)
    info:       JSON-serialisable extras (seed, achievements, source file, ...)
    """

    frames: np.ndarray
    actions: dict[str, np.ndarray]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        T = len(self.rewards)
        if len(self.frames) != T + 1:
            raise ValueError(f"an episode with {T} transitions needs {T + 1} frames, "
                             f"got {len(self.frames)}")
        for key, value in {**self.actions, "terminated": self.terminated,
                           "truncated": self.truncated}.items():
            if len(value) != T:
                raise ValueError(f"{key} has {len(value)} entries for {T} transitions")

    @property
    def length(self) -> int:
        """Number of transitions T."""
        return len(self.rewards)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its file stem."""
        out = {"frames": self.frames, "rewards": self.rewards,
               "terminated": self.terminated, "truncated": self.truncated}
        out.update({f"actions.{k}": v for k, v in self.actions.items()})
        return out


def crc32_of(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import gymnasium

    from worldsim import __version__
    return {"worldsim": __version__, "numpy": np.__version__, "gymnasium": gymnasium.__version__}


def is_validation(name: str) -> bool:
    """The deterministic train/validation split: a hash of the episode's name, so the split
    of an episode never changes when more episodes are added."""
    return zlib.crc32(name.encode()) % 1000 < VALIDATION_PERMILLE


class EpisodeStore:
    """A dataset directory of episodes. Open with `EpisodeStore(path)`, create with
    `EpisodeStore.create(path, env_id=..., observation_space=..., action_space=...)` (which
    opens an existing compatible dataset, so collecting again appends)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a worldsim dataset (no dataset.json)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptEpisodeError(f"{meta_path} is corrupt: {e}") from e
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a {FORMAT} file")
        self.env_id: str = self.meta["env_id"]
        self.observation_space = space_from_json(self.meta["observation_space"])
        self.action_space = space_from_json(self.meta["action_space"])
        self.action_keys = action_keys(self.action_space)
        self._episode_meta: dict[str, dict] = {}
        self.corrupt: dict[str, str] = {}  # episode name -> reason, filled by scan()
        self.scan()

    # ------------------------------------------------------------------ creating / writing
    @classmethod
    def create(cls, root: str | os.PathLike, *, env_id: str, observation_space: spaces.Space,
               action_space: spaces.Space, extra: dict | None = None) -> EpisodeStore:
        root = Path(root)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "env_id": env_id,
            "observation_space": space_to_json(observation_space),
            "action_space": space_to_json(action_space),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
        }
        if (root / "dataset.json").exists():
            store = cls(root)
            for key in ("env_id", "observation_space", "action_space"):
                if store.meta[key] != meta[key]:
                    raise ValueError(f"{root} holds a dataset with another {key}: "
                                     f"{store.meta[key]!r}, not {meta[key]!r}")
            return store
        (root / "episodes").mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / "dataset.json", meta)
        return cls(root)

    def add(self, episode: Episode, name: str | None = None) -> str:
        """Write one episode atomically; returns its name."""
        name = name or f"ep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        final = self.root / "episodes" / name
        tmp = self.root / "episodes" / f".tmp-{name}"
        if final.exists():
            raise FileExistsError(f"episode {final} exists already")
        tmp.mkdir(parents=True)
        files = {}
        for stem, array in episode.arrays().items():
            path = tmp / f"{stem}.npy"
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
                f.flush()
                os.fsync(f.fileno())
            files[stem] = {"shape": list(array.shape), "dtype": array.dtype.name,
                           "bytes": path.stat().st_size, "crc32": crc32_of(path)}
        meta = {"name": name, "length": episode.length, "files": files,
                "return": float(np.sum(episode.rewards)), "info": episode.info}
        write_json_atomic(tmp / "meta.json", meta)
        os.replace(tmp, final)  # the commit point: before it the episode does not exist
        self._episode_meta[name] = meta
        return name

    def remove_stale_temporaries(self, older_than_s: float = 60.0) -> None:
        """Delete `.tmp-*` directories left by killed writers."""
        now = time.time()
        for path in (self.root / "episodes").glob(".tmp-*"):
            if now - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def scan(self) -> None:
        """(Re)read the episode index. Episodes whose meta.json is unreadable are listed in
        `self.corrupt` with the reason, warned about, and skipped; the others still load."""
        self._episode_meta.clear()
        self.corrupt.clear()
        episodes = self.root / "episodes"
        if not episodes.exists():
            return
        for path in sorted(episodes.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            meta_path = path / "meta.json"
            try:
                meta = json.loads(meta_path.read_text())
                meta["length"], meta["files"]["frames"]  # noqa: B018 (validates the keys)
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                self.corrupt[path.name] = f"{meta_path}: {e}"
                continue
            self._episode_meta[path.name] = meta
        if self.corrupt:
            warnings.warn("skipping corrupt episodes: " + "; ".join(self.corrupt.values()),
                          stacklevel=2)

    @property
    def names(self) -> list[str]:
        return list(self._episode_meta)

    def split(self, split: str) -> list[str]:
        """Episode names of "train", "val" or "all". If hashing leaves the validation split
        empty (few episodes), the episode with the smallest hash is moved to it."""
        names = self.names
        if split == "all":
            return names
        val = [n for n in names if is_validation(n)]
        if not val and len(names) >= 2:
            val = [min(names, key=lambda n: zlib.crc32(n.encode()) % 1000)]
        if split == "val":
            return val
        if split == "train":
            return [n for n in names if n not in set(val)]
        raise ValueError(f"split must be 'train', 'val' or 'all', not {split!r}")

    def episode_meta(self, name: str) -> dict:
        return self._episode_meta[name]

    def length(self, name: str) -> int:
        return int(self._episode_meta[name]["length"])

    @property
    def num_frames(self) -> int:
        return sum(self.length(n) + 1 for n in self.names)

    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.observation_space.shape)

    def _open_array(self, path: Path, expected: dict | None, verify: bool,
                    mmap: bool) -> np.ndarray:
        try:
            if expected is not None and path.stat().st_size != expected["bytes"]:
                raise CorruptEpisodeError(
                    f"{path} has {path.stat().st_size} bytes, expected {expected['bytes']}")
            if verify and expected is not None and crc32_of(path) != expected["crc32"]:
                raise CorruptEpisodeError(f"{path} fails its CRC-32 checksum")
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except CorruptEpisodeError:
            raise
        except (OSError, ValueError) as e:
            raise CorruptEpisodeError(f"{path} cannot be read: {e}") from e
        if expected is not None and list(array.shape) != expected["shape"]:
            raise CorruptEpisodeError(f"{path} has shape {array.shape}, expected "
                                      f"{tuple(expected['shape'])}")
        return array

    def load(self, name: str, *, mmap: bool = True, verify: bool = False) -> Episode:
        """Load one episode (memory-mapped by default). `verify` checks every file's CRC-32."""
        meta = self._episode_meta[name]
        d = self.root / "episodes" / name
        arrays = {stem: self._open_array(d / f"{stem}.npy", spec, verify, mmap)
                  for stem, spec in meta["files"].items()}
        return Episode(
            frames=arrays["frames"],
            actions={k: arrays[f"actions.{k}"] for k in self.action_keys},
            rewards=arrays["rewards"], terminated=arrays["terminated"],
            truncated=arrays["truncated"], info=meta.get("info", {}))

    def verify(self) -> dict[str, str]:
        """Check every file of every episode; returns {episode name: error} for the bad ones."""
        bad = dict(self.corrupt)
        for name in self.names:
            try:
                self.load(name, verify=True)
            except CorruptEpisodeError as e:
                bad[name] = str(e)
        return bad

    def __iter__(self) -> Iterator[Episode]:
        for name in self.names:
            yield self.load(name)

    def __len__(self) -> int:
        return len(self._episode_meta)

    # ------------------------------------------------------------------ latent cache
    def latent_dir(self, tag: str) -> Path:
        return self.root / "latents" / tag

    def write_latents(self, tag: str, name: str, latents: np.ndarray) -> None:
        """Store a VAE's latents (T+1, C, h, w) of episode `name` atomically."""
        d = self.latent_dir(tag)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".tmp-{uuid.uuid4().hex}-{name}.npy"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(latents))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / f"{name}.npy")

    def has_latents(self, tag: str, name: str) -> bool:
        return (self.latent_dir(tag) / f"{name}.npy").exists()

    def load_latents(self, tag: str, name: str, *, mmap: bool = True) -> np.ndarray:
        path = self.latent_dir(tag) / f"{name}.npy"
        if not path.exists():
            raise FileNotFoundError(f"no latents for episode {name} under {path.parent}; "
                                    "run `worldsim encode` first")
        array = self._open_array(path, None, False, mmap)
        if len(array) != self.length(name) + 1:
            raise CorruptEpisodeError(f"{path} has {len(array)} latent frames, the episode "
                                      f"has {self.length(name) + 1} frames")
        return array


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (no bytes copied, and the files cannot drift apart), or copy
    it where the two directories are on different file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


PER_EPISODE_CACHES = ("latents", "labels")  # <root>/<cache>/<tag>/<episode name>.npy


def _merge_cache_descriptors(source: Path, out: Path) -> list[Path]:
    """The per-episode cache directories of store `source` (relative paths such as
    latents/<tag>), created in `out` with their JSON descriptors, which must match any that
    `out` has already."""
    found = []
    for kind in PER_EPISODE_CACHES:
        for tag_dir in sorted((source / kind).glob("*")):
            if not tag_dir.is_dir():
                continue
            cache = tag_dir.relative_to(source)
            (out / cache).mkdir(parents=True, exist_ok=True)
            for descriptor in tag_dir.glob("*.json"):
                target = out / cache / descriptor.name
                if not target.exists():
                    write_json_atomic(target, json.loads(descriptor.read_text()))
                elif json.loads(target.read_text()) != json.loads(descriptor.read_text()):
                    raise ValueError(f"cannot merge {descriptor} into {out}: it differs from "
                                     f"{target}")
            found.append(cache)
    return found


def merge_stores(out: str | os.PathLike, sources: list[str | os.PathLike]) -> EpisodeStore:
    """Gather the episodes of several stores of one env into store `out`, with their latent
    caches, e.g. play recorded from the default start with play at every hour of the day
    (`start_clock="random"`), so that one model learns from both from its first step.

    The sources must share the env id and the observation and action spaces; their env kwargs
    may differ and are listed per source in `out`'s dataset.json ("merged_from"). Files are
    hard-linked where possible. Each episode appears in `out` whole or not at all, so a merge
    killed midway can be run again: episodes already in `out` are skipped if they are the
    same episode (same checksums) and refused otherwise, as are two sources that name
    different episodes alike. Episodes keep their names, so each keeps its train/validation
    split (`is_validation`).

    The per-episode caches come along: `latents/<tag>/` and `labels/<kind>/` (achievement
    labels). Their JSON descriptors (e.g. the achievement names) must agree across sources.
    Label each source before merging: replaying needs each episode's env kwargs."""
    out = Path(out)
    stores = [EpisodeStore(s) for s in sources]
    if not stores:
        raise ValueError("merge_stores needs at least one source store")
    first = stores[0]
    for store in stores[1:]:
        for key in ("env_id", "observation_space", "action_space"):
            if store.meta[key] != first.meta[key]:
                raise ValueError(f"cannot merge {store.root} into {out}: its {key} "
                                 f"{store.meta[key]!r} differs from {first.root}'s "
                                 f"{first.meta[key]!r}")
    extra = {k: v for k, v in first.meta.items()
             if k not in ("format", "format_version", "env_id", "observation_space",
                          "action_space", "versions", "created", "env_kwargs", "merged_from")}
    merged = EpisodeStore.create(out, env_id=first.env_id,
                                 observation_space=first.observation_space,
                                 action_space=first.action_space, extra=extra)
    # Merging more sources into an existing merge lists them beside the earlier ones; the
    # merge claims env kwargs only when every source was recorded with the same.
    listed = {entry["path"]: entry for entry in merged.meta.get("merged_from", [])}
    listed.update({str(s.root): {"path": str(s.root), "env_kwargs": s.meta.get("env_kwargs") or {},
                                 "episodes": len(s)} for s in stores})
    meta = {**merged.meta, "merged_from": list(listed.values())}
    kwargs = {json.dumps(e["env_kwargs"], sort_keys=True) for e in listed.values()}
    if len(kwargs) == 1:
        meta["env_kwargs"] = json.loads(kwargs.pop())
    else:
        meta.pop("env_kwargs", None)
    if meta != merged.meta:
        write_json_atomic(out / "dataset.json", meta)
        merged.meta = meta
    merged.remove_stale_temporaries(older_than_s=0.0)
    caches = {store.root: _merge_cache_descriptors(store.root, out) for store in stores}
    origin: dict[str, Path] = {}
    for store in stores:
        for name in store.names:
            if name in origin:
                raise ValueError(f"episode {name} is in both {origin[name]} and {store.root}; "
                                 "episode names must be unique across merged stores")
            origin[name] = store.root
            src = store.root / "episodes" / name
            dst = out / "episodes" / name
            if dst.exists():
                if merged.episode_meta(name)["files"] != store.episode_meta(name)["files"]:
                    raise ValueError(f"{dst} exists and is not {src}")
            else:
                tmp = out / "episodes" / f".tmp-{name}"
                tmp.mkdir()
                for path in src.iterdir():
                    _link_or_copy(path, tmp / path.name)
                os.replace(tmp, dst)  # the commit point, as in `add`
            for cache in caches[store.root]:
                source = store.root / cache / f"{name}.npy"
                target = out / cache / f"{name}.npy"
                if source.exists() and not target.exists():
                    tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
                    _link_or_copy(source, tmp)
                    os.replace(tmp, target)
    merged.scan()
    return merged


# A window "revisits" a view when a frame comes back to within this share of the farthest the
# view had moved from an earlier frame (WindowDataset.revisits) ...
REVISIT_RATIO = 0.2
# ... after moving away by more than this quantile of the one-step changes (a player turning
# on the spot changes a few pixels, a scroll the whole view). On the shipped model's Crafter
# data these flag 5.8% of the 128,707 training windows of 10 frames (`worldsim train dynamics
# --revisit-share F` prints the count).
REVISIT_AWAY_QUANTILE = 0.7


class WindowDataset:
    """Random access to windows of `length` consecutive frames of one split.

    Item i is a dict of numpy arrays (views into memory-mapped files where possible):
        observations: (L, H, W, 3) uint8 frames, or (L, C, h, w) latents if `latents` is set
        actions:      {key: (L-1, ...)}  actions[j] leads from observation j to j+1
        rewards:      float32 (L-1,)     reward received on reaching observation j+1
        terminated:   bool (L-1,)
    Windows never cross an episode's end; episodes shorter than `length` frames are skipped.
    It is a valid `torch.utils.data.Dataset` (len + getitem) without importing torch.
    """

    def __init__(self, store: EpisodeStore, split: str = "train", length: int = 16,
                 stride: int = 1, latents: str | None = None):
        if length < 1:
            raise ValueError("window length must be at least 1")
        self.store, self.length, self.latents = store, length, latents
        self.names = [n for n in store.split(split) if store.length(n) + 1 >= length]
        self._episodes = [store.load(n) for n in self.names]
        self._observations = [store.load_latents(latents, n) if latents else ep.frames
                              for n, ep in zip(self.names, self._episodes, strict=True)]
        starts = [np.arange(0, store.length(n) + 2 - length, stride) for n in self.names]
        self._index = np.concatenate(
            [np.stack([np.full_like(s, i), s], 1) for i, s in enumerate(starts)]
        ) if starts else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, s = self._index[i]
        ep, L = self._episodes[e], self.length
        return {
            "observations": self._observations[e][s:s + L],
            "actions": {k: v[s:s + L - 1] for k, v in ep.actions.items()},
            "rewards": ep.rewards[s:s + L - 1],
            "terminated": ep.terminated[s:s + L - 1],
        }

    def transition_events(self) -> np.ndarray:
        """(len, length - 1) bool: which transitions of each window have a nonzero reward or
        end the episode (the rare events that training draws more often than they occur)."""
        if self.length < 2:
            raise ValueError("windows of one frame have no transition")
        event = [(np.asarray(ep.rewards) != 0) | np.asarray(ep.terminated, bool)
                 for ep in self._episodes]
        steps = np.arange(self.length - 1)
        return np.stack([event[e][s + steps] for e, s in self._index]) if len(self) else \
            np.zeros((0, self.length - 1), bool)

    def revisits(self, ratio: float = REVISIT_RATIO,
                 away_quantile: float = REVISIT_AWAY_QUANTILE) -> np.ndarray:
        """(len,) bool: the windows in which the view comes back. Frame j of a window revisits
        an earlier frame i (j >= i + 2) when it is much closer to frame i than some frame in
        between was: d(i, j) < ratio * max_{i<k<j} d(i, k), and that frame k had moved away by
        more than the `away_quantile` of the split's one-step changes (so a player turning on
        the spot or a creature moving does not count). d is the mean squared difference of the
        observations (latents when the dataset reads latents). Read from the frames alone,
        so it needs no knowledge of the action space (a MineRL camera turning back counts too).
        These are the windows that can teach a model to redraw what it saw a few frames ago
        instead of inventing it; in sticky random Crafter play 5.8% of 10-frame windows."""
        L = self.length
        if not len(self):
            return np.zeros(0, bool)
        # d[e][t, o] = distance between frames t and t + o of episode e, o < L (NaN past the end)
        d = []
        for obs in self._observations:
            x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
            T = len(x)
            band = np.full((T, L), np.nan, np.float32)
            for o in range(min(L, T)):
                band[:T - o, o] = ((x[o:] - x[:T - o]) ** 2).mean(1)
            d.append(band)
        steps = np.concatenate([b[:, 1] for b in d]) if L > 1 else np.zeros(0)
        steps = steps[np.isfinite(steps)]
        if not len(steps):
            return np.zeros(len(self), bool)
        away = float(np.quantile(steps, away_quantile))
        offsets = np.arange(L)
        # first_return[e][i] = the first frame index j > i + 1 that revisits frame i (or inf)
        first_return = []
        for band in d:
            farthest = np.fmax.accumulate(np.where(offsets >= 1, band, -np.inf), axis=1)
            before = np.concatenate([np.full((len(band), 1), -np.inf), farthest[:, :-1]], 1)
            with np.errstate(invalid="ignore"):
                pair = (band < ratio * before) & (before > away) & (offsets >= 2)
            first = np.where(pair.any(1), pair.argmax(1), np.inf)
            first_return.append(np.arange(len(band)) + first)
        return np.array([first_return[e][s:s + L].min() <= s + L - 1 for e, s in self._index])

    def last_transitions(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Where the last transition of each window at `indices` lies: (episode positions in
        `names` (n,), transition indices t within those episodes (n,))."""
        e, s = self._index[np.asarray(indices, dtype=np.int64)].T
        return e, s + self.length - 2

    def last_transition_events(self) -> np.ndarray:
        """(len,) bool: the windows whose last transition is an event (`transition_events`)."""
        return self.transition_events()[:, -1]

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """A batch of random windows stacked along a new first axis (copies)."""
        return self.take(rng.integers(0, len(self), batch_size))

    def take(self, indices: Any) -> dict[str, Any]:
        """The windows at `indices` stacked along a new first axis (copies)."""
        return collate([self[int(i)] for i in indices])


def oversampled_indices(rng: np.random.Generator, batch_size: int, share: float,
                        events: np.ndarray, plain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch of window indices in which each row comes from `events` with probability
    `share` and from `plain` otherwise (rare events drawn more often than they occur).
    Returns (indices (B,), from_events (B,) bool)."""
    from_events = rng.random(batch_size) < share
    index = np.where(from_events, rng.choice(events, batch_size), rng.choice(plain, batch_size))
    return index, from_events


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of window dicts (nested dicts of arrays) along a new first axis."""
    first = items[0]
    return {k: collate([it[k] for it in items]) if isinstance(v, dict)
            else np.stack([it[k] for it in items]) for k, v in first.items()}
