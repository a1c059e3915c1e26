"""`worldsim import`: Minecraft recordings -> an episode store.

Two formats, both recorded at 20 ticks per second, both mapped to the one MineRL-style `Dict`
action space of `worldsim.data.minecraft_actions` (buttons + a 2D camera in degrees):

(a) MineRL v0 demonstrations, one folder each (e.g. `MineRLTreechop-v0/v3_<stream>/`)::

        recording.mp4    the player's view, 64x64
        rendered.npz     action$forward, action$camera (N, 2), ..., reward (N,),
                         observation$... (N+1,)
        metadata.json    success, duration_steps, true_video_frame_count, ...

    As MineRL's publisher writes them (minerl/data/pipeline/publish.py) and its loader reads
    them (minerl/data/data_pipeline.py): the N actions and rewards describe N+1 states, and the
    video may hold extra frames at its start (the teleport before the demonstration begins),
    so video and states are aligned by their ends: the first `frames - (N+1)` frames are
    skipped. Like that loader, the last state repeats the one before it (the loader never
    shows the video's final frame).

(b) OpenAI VPT contractor recordings: `NAME.mp4` (640x360) beside `NAME.jsonl`, one JSON
    line per tick and per video frame (`mouse.dx/dy/buttons`, `keyboard.keys`, `hotbar`, ...;
    see openai/Video-Pre-Training data_loader.py). Action t is what the player did while
    looking at frame t, so T = frames - 1 transitions; the last tick's action has no next frame.

Rewards are zero where the recording has none. No demonstration ends in a terminal state of
the game's MDP that we could know, so `terminated` is always False and the last transition is
`truncated`. A recording that fails (missing, corrupt or inconsistent file) is reported with
the file's name at the end; the others are imported regardless. Importing into the same
directory again skips the recordings it holds already.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro
from gymnasium import spaces

from worldsim.data.minecraft_actions import (
    VPT_CAMERA,
    minecraft_action_space,
    minerl_v0_actions,
    vpt_actions,
)
from worldsim.data.store import Episode, EpisodeStore
from worldsim.data.video import Fit, VideoError, probe, read_frames

ENV_ID = "minecraft-recordings"
TICKS_PER_SECOND = 20  # both MineRL v0 and VPT record at Minecraft's 20 Hz tick rate
MINERL_FILES = ("recording.mp4", "rendered.npz", "metadata.json")


class RecordingError(RuntimeError):
    """A recording that cannot be imported. The message names the file."""


@dataclass
class ImportConfig:
    """Import MineRL v0 demonstrations or OpenAI VPT contractor recordings into an episode
    store, resized, with actions in one MineRL-style Dict space."""

    src: Path
    """A MineRL v0 dataset folder (or one demonstration folder), a folder of VPT recordings
    (NAME.mp4 + NAME.jsonl), or one VPT .mp4 file."""
    out: Path
    """The episode store directory to create or append to."""
    format: Literal["auto", "minerl", "vpt"] = "auto"
    """Recording format; "auto" imports whatever of both it finds under --src."""
    size: tuple[int, ...] = (64,)
    """Frame size: one number for a square, or two for H W."""
    fit: Fit = "stretch"
    """"stretch" scales each axis on its own (VPT's 640x360 -> square); "crop" cuts the centre
    to the target's aspect ratio first."""
    max_length: int | None = None
    """Cut recordings into episodes of at most this many transitions (bounds memory for long
    recordings at large sizes); the cut is marked truncated."""
    limit: int | None = None
    """Import at most this many recordings."""

    @property
    def frame_size(self) -> tuple[int, int]:
        if len(self.size) == 1:
            return (self.size[0], self.size[0])
        if len(self.size) == 2:
            return (self.size[0], self.size[1])
        raise ValueError(f"--size takes one number (square) or two (H W), got {self.size}")


@dataclass
class Recording:
    """One recording, read and mapped, but with its frames still in the video file.

    actions: {key: (T, ...)} in the Minecraft action space
    rewards: float32 (T,)
    The episode's T+1 frames are video frames skip .. skip+T.
    """

    source: str
    name: str
    video: Path
    skip_frames: int
    actions: dict[str, np.ndarray]
    rewards: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.rewards)


# ---------------------------------------------------------------------- finding recordings
def discover(src: Path, format: str = "auto") -> list[tuple[str, Path]]:
    """Recordings under `src`, sorted: ("minerl", demonstration folder) and ("vpt", path
    without suffix, i.e. NAME for NAME.mp4 + NAME.jsonl)."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    found: list[tuple[str, Path]] = []
    if src.is_file():
        if src.suffix not in (".mp4", ".jsonl"):
            raise ValueError(f"{src}: expected a folder, or a VPT recording's .mp4 or .jsonl")
        return [("vpt", src.with_suffix(""))]
    if format in ("auto", "minerl"):
        folders = {p.parent for name in MINERL_FILES[:2] for p in src.rglob(name)}
        found += [("minerl", d) for d in sorted(folders)]
    if format in ("auto", "vpt"):
        stems = {p.with_suffix("") for p in [*src.rglob("*.mp4"), *src.rglob("*.jsonl")]
                 if p.name != "recording.mp4"}
        found += [("vpt", s) for s in sorted(stems)]
    return found


def episode_base_name(kind: str, path: Path, src: Path) -> str:
    """A stable episode name for a recording: its path under --src, made filename-safe."""
    src = src if src.is_dir() else src.parent
    rel = path.relative_to(src) if path != src else Path(path.name)
    text = "_".join(rel.parts) or path.name
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ---------------------------------------------------------------------- reading recordings
def load_minerl_v0(folder: Path, name: str) -> Recording:
    """Read one MineRL v0 demonstration folder (see the module docstring for the format)."""
    video, npz_path, meta_path = (folder / f for f in MINERL_FILES)
    for path in (video, npz_path, meta_path):
        if not path.exists():
            raise RecordingError(f"{path}: missing (a MineRL v0 demonstration folder holds "
                                 f"{', '.join(MINERL_FILES)})")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecordingError(f"{meta_path}: corrupt: {e}") from e
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            action_arrays = {k[len("action$"):]: npz[k] for k in keys if k.startswith("action$")}
            rewards = npz["reward"].astype(np.float32).reshape(-1) if "reward" in keys else None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        hint = (" (object arrays need pickle, which is never loaded from a file)"
                if "allow_pickle" in str(e) else "")
        raise RecordingError(f"{npz_path}: corrupt or unreadable: {e}{hint}") from e
    if not action_arrays:
        raise RecordingError(f"{npz_path}: holds no action$... arrays (keys: {keys})")
    length = len(rewards) if rewards is not None else len(next(iter(action_arrays.values())))
    if length < 1:
        raise RecordingError(f"{npz_path}: holds no transitions")
    if rewards is None:
        rewards = np.zeros(length, np.float32)
    try:
        actions, unmapped = minerl_v0_actions(action_arrays, length)
    except ValueError as e:
        raise RecordingError(f"{npz_path}: {e}") from e

    frames = _probe(video).frames
    if frames < length + 1:
        raise RecordingError(f"{video}: has {frames} frames, but {npz_path.name} describes "
                             f"{length + 1} states")
    info = {"source_format": "minerl-v0", "video_frames": frames,
            "skipped_leading_frames": frames - (length + 1), "unmapped_actions": unmapped,
            **{k: meta[k] for k in ("stream_name", "success", "total_reward", "duration_steps",
                                    "true_video_frame_count") if k in meta}}
    if "true_video_frame_count" in meta and meta["true_video_frame_count"] != frames:
        info["warning"] = (f"metadata.json says {meta['true_video_frame_count']} video frames, "
                           f"the video has {frames}; aligned by the end")
    return Recording(source=str(folder), name=name, video=video,
                     skip_frames=frames - (length + 1), actions=actions, rewards=rewards,
                     info=info)


def load_vpt(stem: Path, name: str) -> Recording:
    """Read one VPT contractor recording, `stem`.mp4 + `stem`.jsonl."""
    video, jsonl = stem.with_suffix(".mp4"), stem.with_suffix(".jsonl")
    for path in (video, jsonl):
        if not path.exists():
            raise RecordingError(f"{path}: missing (a VPT recording is NAME.mp4 + NAME.jsonl)")
    try:
        lines = jsonl.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordingError(f"{jsonl}: unreadable: {e}") from e
    ticks = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ticks.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RecordingError(f"{jsonl}: line {line_no} is not JSON: {e}") from e
    frames = _probe(video).frames
    steps = min(frames, len(ticks))  # one tick per frame; a truncated file loses the tail
    if steps < 2:
        raise RecordingError(f"{video}: {frames} frames and {jsonl.name}: {len(ticks)} ticks "
                             "make no transition")
    try:
        actions, unmapped = vpt_actions(ticks[:steps - 1])
    except ValueError as e:
        raise RecordingError(f"{jsonl}: {e}") from e
    info = {"source_format": "vpt", "video_frames": frames, "ticks": len(ticks),
            "unmapped_keys": unmapped,
            "gui_open_ticks": int(sum(bool(t.get("isGuiOpen")) for t in ticks[:steps - 1]))}
    if frames != len(ticks):
        info["warning"] = (f"{frames} video frames but {len(ticks)} ticks; "
                           f"kept the first {steps}")
    return Recording(source=str(stem) + ".mp4", name=name, video=video, skip_frames=0,
                     actions=actions, rewards=np.zeros(steps - 1, np.float32), info=info)


def _probe(video: Path):
    try:
        return probe(video)
    except VideoError as e:
        raise RecordingError(str(e)) from e


# ---------------------------------------------------------------------- writing episodes
def recording_episodes(rec: Recording, size: tuple[int, int], fit: Fit = "stretch",
                       max_length: int | None = None) -> Iterator[tuple[str, Episode]]:
    """Decode a recording's frames (streaming) into episodes of at most `max_length`
    transitions. Yields (episode name, Episode); consecutive pieces share their boundary
    frame, and every piece's last transition is marked truncated."""
    T = rec.length
    piece = max_length or T
    n_pieces = -(-T // piece)
    frames_iter = read_frames(rec.video, size, fit=fit)
    try:
        for _ in range(rec.skip_frames):
            next(frames_iter)
        buffer = [next(frames_iter)]
        for i in range(n_pieces):
            start, stop = i * piece, min(T, (i + 1) * piece)
            while len(buffer) < stop - start + 1:
                buffer.append(next(frames_iter))
            frames = np.stack(buffer)
            if stop == T and rec.info.get("source_format") == "minerl-v0":
                frames[-1] = frames[-2]  # MineRL's loader: the final frame repeats the last state
            truncated = np.zeros(stop - start, bool)
            truncated[-1] = True
            name = rec.name if n_pieces == 1 else f"{rec.name}-p{i:03d}"
            yield name, Episode(
                frames=frames,
                actions={k: v[start:stop] for k, v in rec.actions.items()},
                rewards=rec.rewards[start:stop].astype(np.float32),
                terminated=np.zeros(stop - start, bool), truncated=truncated,
                info={**rec.info, "source": rec.source, "piece": i, "pieces": n_pieces,
                      "first_step": start})
            buffer = [buffer[-1]]
    except StopIteration:
        raise RecordingError(f"{rec.video}: ended early; expected {rec.skip_frames + T + 1} "
                             "frames") from None
    except VideoError as e:
        raise RecordingError(str(e)) from e
    finally:
        frames_iter.close()


def import_recordings(cfg: ImportConfig) -> tuple[list[str], dict[str, str], list[str]]:
    """Import every recording under cfg.src into cfg.out.
    Returns (episode names written, {source: error} for failed recordings, skipped sources)."""
    size = cfg.frame_size
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ValueError(f"--max-length must be at least 1, got {cfg.max_length}")
    found = discover(cfg.src, cfg.format)
    if cfg.limit is not None:
        found = found[:cfg.limit]
    if not found:
        raise FileNotFoundError(
            f"{cfg.src}: no MineRL v0 demonstrations (folders with recording.mp4 + rendered.npz)"
            " or VPT recordings (NAME.mp4 + NAME.jsonl) found")
    store = EpisodeStore.create(
        cfg.out, env_id=ENV_ID,
        observation_space=spaces.Box(0, 255, (*size, 3), np.uint8),
        action_space=minecraft_action_space(),
        extra={"fps": TICKS_PER_SECOND,
               "camera": "[pitch, yaw] in degrees turned during the tick",
               "camera_quantizer": {"maxval": VPT_CAMERA.maxval, "binsize": VPT_CAMERA.binsize,
                                    "mu": VPT_CAMERA.mu}})
    store.remove_stale_temporaries()
    existing = set(store.names)
    written: list[str] = []
    failed: dict[str, str] = {}
    skipped: list[str] = []
    for kind, path in found:
        name = episode_base_name(kind, path, cfg.src)
        if name in existing or f"{name}-p000" in existing:
            skipped.append(str(path))
            continue
        try:
            rec = load_minerl_v0(path, name) if kind == "minerl" else load_vpt(path, name)
            for episode_name, episode in recording_episodes(rec, size, cfg.fit, cfg.max_length):
                written.append(store.add(episode, episode_name))
            print(f"{rec.source}: {rec.length} transitions"
                  + (f" ({rec.info['warning']})" if "warning" in rec.info else ""))
        except Exception as e:  # noqa: BLE001 (one bad recording must not stop the others)
            failed[str(path)] = str(e) if isinstance(e, RecordingError) else (
                f"{path}: {type(e).__name__}: {e}")
            print(f"FAILED {failed[str(path)]}", file=sys.stderr)
    return written, failed, skipped


def main(argv: list[str]) -> None:
    cfg = tyro.cli(ImportConfig, args=argv, prog="worldsim import")
    try:
        written, failed, skipped = import_recordings(cfg)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"worldsim import: {e}")
    print(f"wrote {len(written)} episodes to {cfg.out}"
          + (f"; skipped {len(skipped)} recordings imported before" if skipped else ""))
    if failed:
        lines = "\n".join(f"  {err}" for err in failed.values())
        sys.exit(f"worldsim import: {len(failed)} recordings failed:\n{lines}")
