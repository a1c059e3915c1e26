"""`worldsim dream`: render a rollout of the learned simulator to an mp4 or gif.

    worldsim dream --checkpoint runs/crafter --steps 128 --out dream.mp4
    worldsim dream --checkpoint runs/crafter --prompt start.png --actions random --out d.gif
    worldsim dream --checkpoint runs/crafter --prompt data/crafter --side-by-side --out cmp.mp4

Image-to-video conditioned on actions: the dream starts from the prompt (an image, a `.npy`
of frames, or an episode of an episode store) or, without one, from the start frames shipped
with the checkpoint, and is stepped with the given actions. With `--side-by-side` the video
shows the real game beside it, both from the same start with the same actions: the recorded
frames of the prompt episode, or (no prompt) a fresh real env whose first frame also starts
the dream.

The rendering core (`rollout`, `compose`, `render_video`) takes any Gymnasium env that gives
RGB frames, so it runs just as well on the real game. `VideoWriter` streams frames into an
mp4/gif one at a time (the play loop's screen recordings); whole clips go through
`worldsim.data.video.write_video`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from worldsim.data.policies import sample_action
from worldsim.data.store import EpisodeStore
from worldsim.data.video import MP4_CRF, write_video
from worldsim.spaces import unstack_action

DREAM_ENV_ID = "worldsim/Dream-v0"
LABEL_HEIGHT = 14  # pixels of the caption strip above each panel (PIL's default font is 11 px)
PANEL_GAP = 4  # pixels between panels, drawn in the background colour
BACKGROUND = (24, 24, 24)
# x264 speed preset of live recordings: "veryfast" encoded a 512x600 play screen about twice
# as fast as the default "medium" here (20 vs 38 ms on noise frames), for larger files.
LIVE_X264_PRESET = "veryfast"
OBSERVATION_FRAME_KEYS = ("pov", "rgb", "image", "pixels")  # Dict observations holding a frame


# ---------------------------------------------------------------------------- frames of an env


def env_name(env: gym.Env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _is_frame(x: Any) -> bool:
    return (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3
            and x.shape[2] == 3)


def rgb_frame(env: gym.Env, observation: Any) -> np.ndarray:
    """The RGB frame uint8 (H, W, 3) of an env after reset/step: the observation itself if it
    is one (or a Dict observation's "pov"/"rgb"/"image"/"pixels"), else `env.render()`."""
    if isinstance(observation, dict):
        for key in OBSERVATION_FRAME_KEYS:
            if key in observation:
                observation = observation[key]
                break
    if _is_frame(observation):
        return observation
    if getattr(env, "render_mode", None) == "rgb_array":
        frame = env.render()
        if _is_frame(frame):
            return frame
    raise ValueError(
        f"{env_name(env)} gives no RGB frame: its observation space is {env.observation_space} "
        f"and its render_mode is {getattr(env, 'render_mode', None)!r}; make it with "
        "render_mode='rgb_array' or give it uint8 (H, W, 3) observations")


# ---------------------------------------------------------------------------- rollouts

Actions = Sequence[Any] | Callable[[int, Any], Any]
"""A list of actions (one per step) or a function (step index, observation) -> action."""


@dataclass
class Rollout:
    """What an env showed while stepped with some actions.

    frames:  uint8 (T+1, H, W, 3), the start frame then one frame per step
    actions: the T actions taken
    rewards: float32 (T,)
    ended:   "terminated", "truncated" or "" (all steps ran)
    infos:   the info dict of every step
    """

    frames: np.ndarray
    actions: list[Any]
    rewards: np.ndarray
    ended: str = ""
    infos: list[dict] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.actions)


def rollout(env: gym.Env, actions: Actions, steps: int, *, seed: int | None = None,
            options: dict | None = None) -> Rollout:
    """Reset `env` (with `seed` and `options`, e.g. {"frames": prompt} for the dream) and
    step it `steps` times, or until its episode ends."""
    observation, _ = env.reset(seed=seed, options=options)
    frames = [rgb_frame(env, observation).copy()]
    taken, rewards, infos, ended = [], [], [], ""
    for t in range(steps):
        if callable(actions):
            action = actions(t, observation)
        elif t < len(actions):
            action = actions[t]
        else:
            break
        observation, reward, terminated, truncated, info = env.step(action)
        frames.append(rgb_frame(env, observation).copy())
        taken.append(action)
        rewards.append(float(reward))
        infos.append(info)
        if terminated or truncated:
            ended = "terminated" if terminated else "truncated"
            break
    return Rollout(np.stack(frames), taken, np.asarray(rewards, np.float32), ended, infos)


def random_actions(space: spaces.Space, steps: int, seed: int | None) -> list[Any]:
    """`steps` uniform random actions drawn from a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return [sample_action(space, rng) for _ in range(steps)]


def load_actions(path: str | Path, space: spaces.Space) -> list[Any]:
    """Actions from a file: `.npy` (T, ...) for non-Dict spaces, or `.json`, a list of actions
    (numbers, lists, or {key: value} dicts for Dict spaces). Each is checked against `space`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"actions file {path} does not exist")
    if path.suffix == ".npy":
        if isinstance(space, spaces.Dict):
            raise ValueError(f"{path}: a Dict action space needs a .json list of dicts")
        array = np.load(path, allow_pickle=False)
        raw = [unstack_action(space, {"action": array}, i) for i in range(len(array))]
    elif path.suffix == ".json":
        raw = json.loads(path.read_text())
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a JSON list of actions, got {type(raw).__name__}")
    else:
        raise ValueError(f"{path}: actions must be a .npy or .json file")
    out = []
    for i, a in enumerate(raw):
        action = _as_action(space, a)
        if not space.contains(action):
            raise ValueError(f"{path}: action {i} ({a!r}) is not in the action space {space}")
        out.append(action)
    return out


def _as_action(space: spaces.Space, value: Any) -> Any:
    if isinstance(space, spaces.Dict):
        missing = [k for k in space.spaces if not isinstance(value, dict) or k not in value]
        if missing:
            raise ValueError(f"action {value!r} lacks the keys {missing} of {space}")
        return {k: _as_action(space[k], value[k]) for k in space.spaces}
    if isinstance(space, spaces.Discrete):
        return int(np.asarray(value).item()) if np.ndim(value) == 0 else value
    return np.asarray(value, dtype=space.dtype).reshape(space.shape)


# ---------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """Where a dream starts. frames: uint8 (K, H, W, 3), the context; actions: the K-1 actions
    between them (empty for an image). For an episode, `future_frames` (uint8 (T', H, W, 3))
    and `future_actions` are what really happened next."""

    frames: np.ndarray
    actions: list[Any] = field(default_factory=list)
    future_frames: np.ndarray | None = None
    future_actions: list[Any] = field(default_factory=list)
    source: str = ""

    def reset_options(self, action_space: spaces.Space) -> dict[str, Any]:
        return context_options(self.frames, self.actions, action_space)


def context_options(frames: np.ndarray, actions: Sequence[Any],
                    action_space: spaces.Space) -> dict[str, Any]:
    """`reset(options=...)` of the dream env that starts it from given frames:
    {"frames": uint8 (K, H, W, 3)} plus, for K > 1, {"actions": the K-1 actions between them},
    stacked as the episode store keeps them ((K-1, ...) for non-Dict spaces, {key: (K-1, ...)}
    for Dict spaces)."""
    options: dict[str, Any] = {"frames": np.ascontiguousarray(frames)}
    if len(frames) > 1 and len(actions) == len(frames) - 1:
        from worldsim.spaces import stack_actions

        stacked = stack_actions(action_space, list(actions))
        options["actions"] = stacked if isinstance(action_space, spaces.Dict) else stacked["action"]
    return options


def load_prompt(path: str | Path, *, context: int = 1, start: int = 0,
                episode: str | None = None) -> Prompt:
    """A prompt from an image file, a `.npy` of frames ((H, W, 3) or (K, H, W, 3)), an episode
    directory (`DATASET/episodes/NAME`) or a dataset directory (its `episode`, by default the
    first of the validation split). For episodes, `context` frames from `start` are the prompt
    and the rest of the episode is kept for comparison."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt {path} does not exist")
    if path.is_dir():
        if (path / "dataset.json").exists():
            store = EpisodeStore(path)
            names = store.split("val") or store.names
            if not names:
                raise ValueError(f"prompt dataset {path} holds no episodes")
            name = episode or names[0]
            if name not in store.names:
                raise ValueError(f"prompt dataset {path} has no episode {name!r}")
        elif (path / "meta.json").exists() and (path.parent.parent / "dataset.json").exists():
            store, name = EpisodeStore(path.parent.parent), path.name
        else:
            raise ValueError(f"prompt {path} is neither a dataset nor an episode directory")
        ep = store.load(name)
        if start < 0 or start + context > len(ep.frames):
            raise ValueError(f"prompt episode {name} has {len(ep.frames)} frames; cannot take "
                             f"{context} from frame {start}")
        act = [unstack_action(store.action_space, ep.actions, i) for i in range(ep.length)]
        end = start + context
        return Prompt(frames=np.asarray(ep.frames[start:end]), actions=act[start:end - 1],
                      future_frames=np.asarray(ep.frames[end:]), future_actions=act[end - 1:],
                      source=f"{store.root}:{name}@{start}")
    if path.suffix == ".npy":
        frames = np.load(path, allow_pickle=False)
        frames = frames[None] if frames.ndim == 3 else frames
    else:
        try:
            frames = np.asarray(Image.open(path).convert("RGB"))[None]
        except OSError as e:
            raise ValueError(f"prompt {path} is not an image PIL can read: {e}") from e
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"prompt {path}: expected uint8 frames (K, H, W, 3), got "
                         f"{frames.dtype} {frames.shape}")
    return Prompt(frames=frames[-context:] if context else frames, source=str(path))


# ---------------------------------------------------------------------------- composing


def compose(columns: Sequence[np.ndarray], labels: Sequence[str] = (), *, scale: int = 1,
            step_counter: bool = True) -> np.ndarray:
    """Clips side by side: uint8 (T_i, H, W, 3) each -> uint8 (T, H', W', 3), T = max T_i.

    Every clip is scaled by `scale` (nearest neighbour, so pixels stay crisp) to the size of
    the first; shorter clips hold their last frame. With labels, a caption strip above each
    panel names it and counts steps (a held frame says "ended")."""
    if not columns:
        raise ValueError("nothing to compose")
    if labels and len(labels) != len(columns):
        raise ValueError(f"{len(labels)} labels for {len(columns)} clips")
    H, W = columns[0].shape[1:3]
    ph, pw = H * scale, W * scale
    top = LABEL_HEIGHT if labels else 0
    T = max(len(c) for c in columns)
    n = len(columns)
    out = np.empty((T, top + ph, n * pw + (n - 1) * PANEL_GAP, 3), np.uint8)
    out[:] = BACKGROUND
    for i, clip in enumerate(columns):
        x = i * (pw + PANEL_GAP)
        panel = _scale_clip(np.asarray(clip), ph, pw)
        out[:len(panel), top:, x:x + pw] = panel
        out[len(panel):, top:, x:x + pw] = panel[-1]
    if labels:
        for t in range(T):
            image = Image.fromarray(out[t, :top])
            draw = ImageDraw.Draw(image)
            for i, (clip, label) in enumerate(zip(columns, labels, strict=True)):
                text = label
                if step_counter:
                    text += f"  t={t}" if t < len(clip) else f"  ended t={len(clip) - 1}"
                draw.text((i * (pw + PANEL_GAP) + 2, 1), text, fill=(235, 235, 235))
            out[t, :top] = np.asarray(image)
    return out


def _scale_clip(clip: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """(T, h, w, 3) -> (T, ph, pw, 3), nearest neighbour (integer repeat when it divides)."""
    T, h, w, _ = clip.shape
    if (h, w) == (ph, pw):
        return clip
    if ph % h == 0 and pw % w == 0:
        return clip.repeat(ph // h, axis=1).repeat(pw // w, axis=2)
    rows = (np.arange(ph) * h) // ph
    cols = (np.arange(pw) * w) // pw
    return clip[:, rows][:, :, cols]


def render_video(dream: gym.Env, out: str | Path, steps: int, actions: Actions | None = None, *,
                 prompt: Prompt | None = None, real: gym.Env | None = None,
                 recorded: bool = False, seed: int | None = 0, fps: float = 15,
                 scale: int = 4, labels: bool = True) -> tuple[Path, dict[str, Rollout]]:
    """Roll out `dream` and write the video; returns its path and the rollouts shown.

    dream:    any env with RGB frames (the learned simulator, or a real game for testing)
    actions:  a list or a function (step, observation) -> action; None means random actions
              (or the recorded ones, for an episode prompt)
    prompt:   start frames (reset options {"frames", "actions"}); None starts from the env's
              own reset, or from the real env's first frame when `real` is given
    real:     a real env shown beside the dream; both start from its first frame (so no
              prompt) and take the same actions
    recorded: show the prompt episode's recorded continuation beside the dream (an episode
              prompt, stepped with the episode's own actions)
    """
    space = dream.action_space
    shown: dict[str, Rollout] = {}
    options = prompt.reset_options(space) if prompt is not None else None
    if recorded:
        if prompt is None or prompt.future_frames is None:
            raise ValueError("a recorded comparison needs an episode as the prompt")
        if actions is not None or real is not None:
            raise ValueError("beside a recorded episode the dream takes the episode's own "
                             "actions and no real env is needed")
    if actions is None:
        episode = prompt is not None and prompt.future_frames is not None
        actions = prompt.future_actions[:steps] if episode else random_actions(space, steps, seed)
    if real is not None:
        if prompt is not None:
            raise ValueError("beside a real env the dream starts from the real env's first "
                             "frame, so it takes no prompt (an episode prompt shows its "
                             "recording instead)")
        if real.action_space != space:
            raise ValueError(f"the real env's action space {real.action_space} differs from the "
                             f"dream's {space}")
        # The real game goes first: its start frame is the dream's prompt, and the dream
        # takes exactly the actions it took (even if a policy chose them).
        shown["real"] = rollout(real, actions, steps, seed=seed)
        options = context_options(shown["real"].frames[:1], [], space)
        actions = shown["real"].actions
    shown["dream"] = rollout(dream, actions, steps, seed=seed, options=options)
    if recorded:
        n = shown["dream"].length
        shown["real"] = Rollout(
            frames=np.concatenate([prompt.frames[-1:], prompt.future_frames[:n]]),
            actions=list(prompt.future_actions[:n]), rewards=np.zeros(n, np.float32))
    order = [k for k in ("real", "dream") if k in shown]
    clips = compose([shown[k].frames for k in order], order if labels else (), scale=scale)
    path = write_video(out, clips, fps)
    return path, shown


# ---------------------------------------------------------------------------- streaming


class VideoWriter:
    """Streams RGB frames uint8 (H, W, 3) into an .mp4 (H.264) or .gif while the game runs,
    so a long recording never sits in memory. The file appears complete on `close()`: it is
    written under a temporary name and renamed."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in (".mp4", ".gif"):
            raise ValueError(f"{self.path}: recordings are .mp4 or .gif, not {self.format!r}")
        self.fps = fps
        self.frames = 0
        self._tmp = self.path.with_name(f".tmp-{uuid.uuid4().hex}-{self.path.name}")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None

    def _open(self, h: int, w: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), mode="w",
                                  format="mp4" if self.format == ".mp4" else "gif")
        rate = Fraction(self.fps).limit_denominator(1000)
        if self.format == ".mp4":
            self._stream = self._container.add_stream("libx264", rate=rate)
            # yuv420p (what every player decodes) needs even sides; odd sizes keep full chroma
            self._stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            self._stream.options = {"crf": str(MP4_CRF), "preset": LIVE_X264_PRESET}
        else:
            self._stream = self._container.add_stream("gif", rate=rate)
            self._stream.pix_fmt = "pal8"
        self._stream.width, self._stream.height = w, h
        self._size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 (H, W, 3), got "
                             f"{frame.dtype} {frame.shape}")
        if self._container is None:
            self._open(*frame.shape[:2])
        elif frame.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame of {frame.shape[:2]} in a video of {self._size}")
        if self.format == ".mp4":
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        else:
            video_frame = av.VideoFrame.from_ndarray(_palette_image(frame), format="pal8")
        self._container.mux(self._stream.encode(video_frame))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path (None if no frame was written)."""
        if self._container is None:
            return None
        self._container.mux(self._stream.encode())  # the encoder's delayed frames
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)


def _palette_image(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A GIF frame: (palette indices uint8 (H, W), palette uint8 (256, 4)) with the frame's
    own 256-colour palette. PyAV takes the pal8 palette as rows (alpha, red, green, blue);
    checked by decoding what it writes."""
    image = Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE,
                                            dither=Image.Dither.NONE)
    rgb = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255
    palette[:len(rgb), 1:] = rgb
    return np.asarray(image, np.uint8), palette


# ---------------------------------------------------------------------------- checkpoints


def source_env_id(checkpoint: str | Path) -> str | None:
    """The real env a checkpoint was trained on, if its config.json names it
    ("env_id" at the top level or under "data" / "dataset")."""
    path = Path(checkpoint) / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for section in (config, config.get("data", {}), config.get("dataset", {})):
        if isinstance(section, dict) and isinstance(section.get("env_id"), str):
            return section["env_id"]
    return None


def make_dream(checkpoint: str | Path, env_id: str = DREAM_ENV_ID, **kwargs) -> gym.Env:
    """The learned simulator of a checkpoint directory as a Gymnasium env. Keyword arguments
    that are None are left out, so an env id whose constructor lacks them still works."""
    import envs  # noqa: F401  (registers the worldsim/* ids)

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return gym.make(env_id, checkpoint=str(path), **kwargs)


def preferred_context(env: gym.Env, default: int = 1) -> int:
    """How many frames the dream wants as a prompt: its `context_length` if it has one."""
    try:
        value = env.get_wrapper_attr("context_length")
    except AttributeError:
        return default
    return int(value) if value else default


# ---------------------------------------------------------------------------- CLI


@dataclass
class DreamConfig:
    """Render a rollout of the learned simulator to a video file."""

    checkpoint: Path
    """The world-model checkpoint directory."""
    out: Path = Path("dream.mp4")
    """The video to write: .mp4 or .gif."""
    steps: int = 64
    """Number of steps to dream (the video has steps + 1 frames unless the episode ends)."""
    prompt: Path | None = None
    """Start from an image, a .npy of frames, an episode directory or a dataset directory;
    without it the dream starts from the checkpoint's own start frames."""
    episode: str | None = None
    """With a dataset as the prompt: the episode to use (default: the first validation one)."""
    start: int = 0
    """With an episode prompt: the first frame of the prompt."""
    context: int | None = None
    """Prompt frames taken from an episode (default: the dream's context length, else 1)."""
    actions: str = "auto"
    """"random", an actions file (.npy or .json), or "auto": the episode's own actions for an
    episode prompt, random otherwise."""
    side_by_side: bool = False
    """Show the real game beside the dream: the episode's recorded frames for an episode
    prompt, otherwise a real env started with the same seed."""
    real: str | None = None
    """The real env id for --side-by-side (default: the one named in the checkpoint)."""
    seed: int = 0
    """Seed of the resets and of random actions."""
    fps: float = 15.0
    """Frames per second of the video."""
    scale: int = 4
    """Upscale factor of each panel (nearest neighbour)."""
    dream_env: str = DREAM_ENV_ID
    """The env id the checkpoint is given to."""
    sampling_steps: int | None = None
    """Sampler steps per dream frame (default: the bundle's)."""
    guidance: float | None = None
    """Classifier-free guidance on the action (default: the bundle's)."""


def run(cfg: DreamConfig, dream: gym.Env | None = None) -> tuple[Path, dict[str, Rollout]]:
    """`worldsim dream` on a config; `dream` replaces the checkpoint's env when given."""
    if cfg.out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out {cfg.out} must end in .mp4 or .gif")
    if cfg.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {cfg.steps}")
    if dream is None:
        dream = make_dream(cfg.checkpoint, cfg.dream_env, num_sampling_steps=cfg.sampling_steps,
                           guidance=cfg.guidance)
    context = cfg.context or preferred_context(dream)
    prompt = None
    if cfg.prompt is not None:
        prompt = load_prompt(cfg.prompt, context=context, start=cfg.start, episode=cfg.episode)
    if cfg.actions == "random":
        actions = random_actions(dream.action_space, cfg.steps, cfg.seed)
    elif cfg.actions == "auto":
        actions = None
    else:
        actions = load_actions(cfg.actions, dream.action_space)
    episode = prompt is not None and prompt.future_frames is not None
    recorded = cfg.side_by_side and episode
    if recorded and actions is not None:
        raise ValueError("--side-by-side with an episode prompt shows what really happened, so "
                         "the dream takes the episode's own actions: drop --actions")
    real = None
    if cfg.side_by_side and not episode:
        if prompt is not None:
            raise ValueError("--side-by-side needs a real start: an episode prompt, or no "
                             "prompt (then a real env's first frame starts both)")
        real_id = cfg.real or source_env_id(cfg.checkpoint)
        if real_id is None:
            raise ValueError(f"--side-by-side: {cfg.checkpoint} does not name its real env; "
                             "pass --real ENV_ID")
        from worldsim.data.collect import make_env

        real = make_env(real_id, size=tuple(dream.observation_space.shape[:2]))
    try:
        return render_video(dream, cfg.out, cfg.steps, actions, prompt=prompt, real=real,
                            recorded=recorded, seed=cfg.seed, fps=cfg.fps, scale=cfg.scale)
    finally:
        if real is not None:
            real.close()


def main(argv: list[str]) -> None:
    import tyro

    from worldsim.runtime import configure

    cfg = tyro.cli(DreamConfig, args=argv, prog="worldsim dream")
    configure()
    try:
        path, shown = run(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"worldsim dream: {e}") from e
    summary = {k: {"steps": r.length, "ended": r.ended or None} for k, r in shown.items()}
    print(json.dumps({"video": str(path), **summary}))
