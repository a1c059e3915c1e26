"""`worldsim play`: play the learned simulator, the real game, or both side by side, in a
pygame window.

    worldsim play --checkpoint runs/crafter                   # the dream
    worldsim play --real worldsim/Crafter-v0                  # the real game (recorded as demos)
    worldsim play --checkpoint runs/crafter --side-by-side    # real and dream, same actions
    worldsim play --real worldsim/Crafter-v0 --agent random --agent-first

Three pieces, apart from any env (as in Gymnasium's `utils/play.py` and DIAMOND's `game/`):

    Keymap (envs/keymaps.py)  one tick of keyboard/mouse input -> an action
    PlayEnv                   the envs on screen and who acts: human or agent, real and/or
                              dream; with both, the same actions go to both and the dream is
                              (re)started from the real game's recent frames
    Game                      the loop: input, step, draw, HUD, help, pacing, screenshots,
                              screen recording, human demonstrations into an episode store

Any Gymnasium env whose observations are RGB frames, or that renders "rgb_array", can be
played. The loop's own keys are function keys (see CONTROL_KEYS), so they never clash with a
game's keys: Esc quit, Enter reset, F1 help, F2 pause, F3 step once while paused, F4 hand
control to the agent and back, F5 re-sync the dream to the real game, F9 start/stop
recording the screen, F12 screenshot.
"""

from __future__ import annotations

import enum
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import tyro
from gymnasium import spaces

from envs.dream_video import (
    DREAM_ENV_ID,
    VideoWriter,
    context_options,
    env_name,
    make_dream,
    preferred_context,
    rgb_frame,
    source_env_id,
)
from envs.keymaps import InputState, Keymap, key_label, keymap_for
from worldsim.data.store import Episode, EpisodeStore
from worldsim.spaces import stack_actions

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame-ce prints a banner otherwise
import pygame  # noqa: E402

# ---------------------------------------------------------------------------- input


class Command(enum.Enum):
    """What the loop's own keys do."""

    QUIT = "quit"
    RESET = "reset the episode"
    HELP = "show / hide this help"
    PAUSE = "pause / resume"
    STEP = "step once (while paused)"
    AGENT = "hand control to the agent / take it back"
    RESYNC = "re-sync the dream to the real game"
    RECORD = "start / stop recording the screen"
    SCREENSHOT = "save a screenshot (PNG)"


# Function keys, so no game's keymap ever needs them (Crafter and Minecraft use letters,
# digits, space, tab, shift, ctrl).
CONTROL_KEYS: dict[int, Command] = {
    pygame.K_ESCAPE: Command.QUIT,
    pygame.K_RETURN: Command.RESET,
    pygame.K_F1: Command.HELP,
    pygame.K_F2: Command.PAUSE,
    pygame.K_F3: Command.STEP,
    pygame.K_F4: Command.AGENT,
    pygame.K_F5: Command.RESYNC,
    pygame.K_F9: Command.RECORD,
    pygame.K_F12: Command.SCREENSHOT,
}


class InputTracker:
    """Turns pygame events into one tick's `InputState` plus the loop's commands.

    Which keys are held is tracked from KEYDOWN/KEYUP events rather than read from
    `pygame.key.get_pressed()`, so scripted events (`pygame.event.post`) drive the game exactly
    as a keyboard does; losing the window's focus releases everything."""

    def __init__(self, control_keys: dict[int, Command] = CONTROL_KEYS):
        self.control_keys = control_keys
        self.held: set[int] = set()
        self.buttons: set[int] = set()

    def poll(self, events: Iterable[pygame.event.Event]) -> tuple[InputState, list[Command]]:
        pressed, clicked, commands = [], [], []
        dx = dy = 0.0
        for event in events:
            if event.type == pygame.QUIT:
                commands.append(Command.QUIT)
            elif event.type == pygame.KEYDOWN:
                if event.key in self.control_keys:
                    commands.append(self.control_keys[event.key])
                else:
                    pressed.append(event.key)
                    self.held.add(event.key)
            elif event.type == pygame.KEYUP:
                self.held.discard(event.key)
            elif event.type == pygame.MOUSEBUTTONDOWN:
                clicked.append(event.button)
                self.buttons.add(event.button)
            elif event.type == pygame.MOUSEBUTTONUP:
                self.buttons.discard(event.button)
            elif event.type == pygame.MOUSEMOTION:
                dx += event.rel[0]
                dy += event.rel[1]
            elif event.type == pygame.WINDOWFOCUSLOST:
                self.held.clear()
                self.buttons.clear()
        state = InputState(tuple(pressed), frozenset(self.held), (dx, dy), tuple(clicked),
                           frozenset(self.buttons))
        return state, commands


# ---------------------------------------------------------------------------- agents


class Agent(Protocol):
    """Something that plays one env: `act` gets the env's observation."""

    def reset(self) -> None:
        """A new episode begins."""

    def act(self, observation: Any) -> Any:
        """The action for this observation."""


class PolicyAgent:
    """A collection policy (worldsim.data.policies: "random", "sticky", ...) playing one env."""

    def __init__(self, name: str, action_space: spaces.Space, action_names=None,
                 seed: int | None = None):
        from worldsim.data.policies import make_policy

        self.name = name
        self.policy = make_policy(name, action_space, 1, action_names=action_names)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.policy.reset(np.ones(1, bool))

    def act(self, observation: Any) -> Any:
        return self.policy.act(np.asarray(observation)[None], self.rng)[0]


def load_agent(spec: str, action_space: spaces.Space, action_names=None,
               seed: int | None = None) -> Agent:
    """The agent named by `--agent`: a policy name ("random", "sticky", "module:factory") or
    the path of a saved agent, loaded by `agents.load_agent(path, action_space)`."""
    from worldsim.data.policies import POLICIES

    if spec in POLICIES or (":" in spec and not Path(spec).exists()):
        return PolicyAgent(spec, action_space, action_names, seed)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--agent {spec!r} is neither a policy ({', '.join(sorted(POLICIES))}) "
                         "nor an existing saved agent")
    import agents

    loader = getattr(agents, "load_agent", None)
    if loader is None:
        raise ValueError(f"cannot load the saved agent {path}: this version of `agents` has no "
                         "load_agent(path, action_space); use --agent random or sticky")
    return loader(path, action_space)


# ---------------------------------------------------------------------------- envs on screen


@dataclass
class Panel:
    """One env on screen and its latest transition."""

    name: str
    env: gym.Env
    observation: Any = None
    frame: np.ndarray | None = None  # uint8 (H, W, 3)
    reward: float = 0.0
    episode_return: float = 0.0
    steps: int = 0  # steps in this episode
    terminated: bool = False
    truncated: bool = False
    info: dict = field(default_factory=dict)
    step_seconds: float = 0.0  # smoothed wall time of one env step
    note: str = ""  # shown in the HUD, e.g. when the dream was last re-synced

    def show(self, observation: Any, info: dict) -> None:
        self.observation, self.info = observation, info
        self.frame = rgb_frame(self.env, observation)

    def start(self, observation: Any, info: dict) -> None:
        self.show(observation, info)
        self.reward = self.episode_return = 0.0
        self.steps = 0
        self.terminated = self.truncated = False


STEP_TIME_SMOOTHING = 0.9  # weight of the past in the HUD's moving average of step times


class PlayEnv:
    """The envs being played and who plays them.

    real:  the real game (or None); dream: the learned simulator (or None); at least one.
    With both (side by side) every action goes to both; the dream starts from the real
    game's first frame and, on `resync()` or when only the dream's episode ends, restarts
    from the real game's last `context_frames` frames (reset options {"frames", "actions"}).
    The primary env (real if present) decides when the episode ends and what the agent sees.
    """

    def __init__(self, real: gym.Env | None = None, dream: gym.Env | None = None,
                 agent: Agent | None = None, *, context_frames: int = 1,
                 seed: int | None = None):
        if real is None and dream is None:
            raise ValueError("PlayEnv needs a real env, a dream env, or both")
        if real is not None and dream is not None and real.action_space != dream.action_space:
            raise ValueError(f"side by side needs one action space: the real env "
                             f"{env_name(real)} has {real.action_space}, the dream "
                             f"{env_name(dream)} has {dream.action_space}")
        if context_frames < 1:
            raise ValueError(f"context_frames must be at least 1, got {context_frames}")
        self.real, self.dream, self.agent = real, dream, agent
        self.panels = [Panel(n, e) for n, e in (("real", real), ("dream", dream)) if e is not None]
        self.agent_in_control = False
        self.seed = seed
        self.episodes = 0
        self.episode_seed: int | None = None  # the seed of the current episode's reset
        self._frames: deque[np.ndarray] = deque(maxlen=context_frames)
        self._actions: deque[Any] = deque(maxlen=context_frames - 1)

    @property
    def primary(self) -> Panel:
        return self.panels[0]

    @property
    def side_by_side(self) -> bool:
        return len(self.panels) == 2

    @property
    def action_space(self) -> spaces.Space:
        return self.primary.env.action_space

    def reset(self) -> None:
        """Start a new episode in every env (the dream from the real game's first frame)."""
        seed = None if self.seed is None else self.seed + self.episodes
        self.episode_seed = seed
        self.episodes += 1
        observation, info = self.primary.env.reset(seed=seed)
        self.primary.start(observation, info)
        self._frames.clear()
        self._actions.clear()
        self._frames.append(self.primary.frame.copy())
        if self.side_by_side:
            self._restart_dream(seed, note="")
        if self.agent is not None:
            self.agent.reset()

    def _restart_dream(self, seed: int | None, note: str) -> None:
        dream = self.panels[1]
        options = context_options(np.stack(self._frames), list(self._actions), self.action_space)
        observation, info = dream.env.reset(seed=seed, options=options)
        dream.start(observation, info)
        dream.steps = self.primary.steps  # the dream's clock follows the real game's
        dream.note = f"{note} at step {self.primary.steps}" if note else ""

    def resync(self) -> bool:
        """Restart the dream from the real game's recent frames; False if not side by side."""
        if not self.side_by_side:
            return False
        self._restart_dream(self.episode_seed, note="re-synced")
        return True

    def choose(self, human_action: Any) -> tuple[Any, bool]:
        """The action to take and whether the agent chose it."""
        if self.agent_in_control and self.agent is not None:
            return self.agent.act(self.primary.observation), True
        return human_action, False

    def step(self, action: Any) -> bool:
        """Step every env with `action`; True when the primary env's episode is over."""
        for panel in self.panels:
            start = time.perf_counter()
            observation, reward, terminated, truncated, info = panel.env.step(action)
            elapsed = time.perf_counter() - start
            panel.step_seconds = (elapsed if panel.step_seconds == 0 else STEP_TIME_SMOOTHING
                                  * panel.step_seconds + (1 - STEP_TIME_SMOOTHING) * elapsed)
            panel.show(observation, info)
            panel.reward = float(reward)
            panel.episode_return += float(reward)
            panel.steps += 1
            panel.terminated, panel.truncated = bool(terminated), bool(truncated)
        self._frames.append(self.primary.frame.copy())
        self._actions.append(action)
        if self.side_by_side:
            dream = self.panels[1]
            if (dream.terminated or dream.truncated) and not self.primary_done:
                # The dream ended an episode the real game goes on with: follow the real game.
                self._restart_dream(self.episode_seed, note="ended, re-synced")
        return self.primary_done

    @property
    def primary_done(self) -> bool:
        return self.primary.terminated or self.primary.truncated

    def close(self) -> None:
        for panel in self.panels:
            panel.env.close()


# ---------------------------------------------------------------------------- recording


class DemoRecorder:
    """Writes the episodes a person plays in the real game into an episode store, in the
    format `worldsim collect` writes (frames, actions, rewards, terminated, truncated)."""

    def __init__(self, root: str | Path, env_id: str, env: gym.Env, frame_shape: tuple):
        self.store = EpisodeStore.create(
            root, env_id=env_id, action_space=env.action_space,
            observation_space=spaces.Box(0, 255, tuple(frame_shape), np.uint8))
        self.action_space = env.action_space
        self.written: list[str] = []
        self._frames: list[np.ndarray] = []
        self._seed: int | None = None

    def start(self, frame: np.ndarray, seed: int | None, info: dict) -> None:
        self._frames = [frame.copy()]
        self._actions, self._rewards, self._terminated, self._truncated = [], [], [], []
        self._by_agent: list[int] = []
        self._seed, self._reset_info, self._last_info = seed, info, {}

    def add(self, action: Any, frame: np.ndarray, reward: float, terminated: bool,
            truncated: bool, by_agent: bool, info: dict) -> None:
        if frame.shape != self._frames[0].shape:
            raise ValueError(f"frame of shape {frame.shape} in an episode of "
                             f"{self._frames[0].shape} frames")
        if by_agent:
            self._by_agent.append(len(self._actions))
        self._frames.append(frame.copy())
        self._actions.append(action)
        self._rewards.append(reward)
        self._terminated.append(terminated)
        self._truncated.append(truncated)
        self._last_info = info

    def finish(self, cut: bool) -> str | None:
        """Write the episode (if it has a step); `cut` marks its last step truncated (the
        player reset or quit). Returns the episode's name."""
        if not self._frames or not self._actions:
            self._frames = []
            return None
        truncated = np.array(self._truncated, bool)
        terminated = np.array(self._terminated, bool)
        if cut and not (terminated[-1] or truncated[-1]):
            truncated[-1] = True
        rewards = np.array(self._rewards, np.float32)
        info: dict[str, Any] = {"policy": "human", "return": float(rewards.sum()),
                                "terminated": bool(terminated[-1]),
                                "truncated": bool(truncated[-1]),
                                "agent_steps": list(self._by_agent)}
        if self._seed is not None:
            info["seed"] = int(self._seed)
        if "world_seed" in self._reset_info:
            info["world_seed"] = int(self._reset_info["world_seed"])
        achievements = self._last_info.get("achievements")
        if isinstance(achievements, dict):
            info["achievements"] = sorted(k for k, v in achievements.items() if v > 0)
        episode = Episode(frames=np.stack(self._frames),
                          actions=stack_actions(self.action_space, self._actions),
                          rewards=rewards, terminated=terminated, truncated=truncated, info=info)
        self._frames = []
        # microseconds in the name: sorting names sorts episodes by the time they ended
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        name = self.store.add(episode, name=f"human-{stamp}-{uuid.uuid4().hex[:4]}")
        self.written.append(name)
        return name


# ---------------------------------------------------------------------------- drawing

FONT_SIZE = 20  # pygame's default font at 20 px is 15 px per line: 5 HUD lines in 80 px
PANEL_GAP = 8  # pixels between side-by-side panels
HUD_PANEL_LINES = 4  # per-panel HUD lines under each panel, then one line for the loop
TEXT = (235, 235, 235)
DIM = (150, 150, 150)
ALERT = (255, 90, 80)
BACKGROUND = (16, 16, 16)
OVERLAY_ALPHA = 210  # help overlay opacity over the game, out of 255


class Screen:
    """The window: panels of scaled frames side by side, a HUD strip below them, and a help
    overlay. Frames are scaled by an integer factor with nearest neighbour, so each pixel of
    the frame is exactly a `scale` x `scale` block of the screen."""

    def __init__(self, frame_hw: tuple[int, int], panels: int, scale: int, title: str):
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        self.frame_hw = frame_hw
        self.panel_size = (frame_hw[1] * scale, frame_hw[0] * scale)  # (w, h) as pygame has it
        pygame.display.init()
        pygame.font.init()
        self.font = pygame.font.Font(None, FONT_SIZE)
        self.line = self.font.get_linesize()
        w = panels * self.panel_size[0] + (panels - 1) * PANEL_GAP
        self.hud_top = self.panel_size[1]
        h = self.hud_top + (HUD_PANEL_LINES + 1) * self.line + 8
        h += h % 2  # even sides let screen recordings use yuv420p, which every player decodes
        self.size = (w, h)  # of the window, in pixels
        self.surface = pygame.display.set_mode(self.size)
        pygame.display.set_caption(title)
        self._small: dict[tuple[int, int], pygame.Surface] = {}
        self._text: dict[tuple[str, tuple], pygame.Surface] = {}

    def panel_rect(self, i: int) -> pygame.Rect:
        return pygame.Rect(i * (self.panel_size[0] + PANEL_GAP), 0, *self.panel_size)

    def draw_frame(self, i: int, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        small = self._small.get((h, w))
        if small is None:
            small = self._small[(h, w)] = pygame.Surface((w, h), 0, self.surface)
        pygame.surfarray.blit_array(small, frame.swapaxes(0, 1))  # pygame is (x, y)
        pygame.transform.scale(small, self.panel_size, self.surface.subsurface(self.panel_rect(i)))

    def text(self, text: str, pos: tuple[int, int], color=TEXT) -> None:
        key = (text, color)
        surface = self._text.get(key)
        if surface is None:
            if len(self._text) > 512:  # HUD strings change every step; keep the cache small
                self._text.clear()
            surface = self._text[key] = self.font.render(text, True, color)
        self.surface.blit(surface, pos)

    def draw_hud(self, columns: list[list[tuple[str, tuple]]], status: list[tuple[str, tuple]]):
        """Per-panel lines under each panel, then one status line across the window."""
        width, height = self.surface.get_size()
        self.surface.fill(BACKGROUND, pygame.Rect(0, self.hud_top, width, height - self.hud_top))
        for i, lines in enumerate(columns):
            x = self.panel_rect(i).x + 6
            for j, (text, color) in enumerate(lines[:HUD_PANEL_LINES]):
                self.text(text, (x, self.hud_top + 4 + j * self.line), color)
        x, y = 6, self.hud_top + 4 + HUD_PANEL_LINES * self.line
        for text, color in status:
            self.text(text, (x, y), color)
            x += self.font.size(text)[0] + 14

    def draw_help(self, lines: list[tuple[str, str]]) -> None:
        """The help overlay over the panels, in as many columns as it needs."""
        width, _ = self.surface.get_size()
        veil = pygame.Surface((width, self.hud_top), pygame.SRCALPHA)
        veil.fill((0, 0, 0, OVERLAY_ALPHA))
        self.surface.blit(veil, (0, 0))
        per_column = max(1, (self.hud_top - 16) // self.line)
        key_width = max(self.font.size(k)[0] for k, _ in lines) + 12
        column_width = key_width + max(self.font.size(v)[0] for _, v in lines) + 24
        for n, (key, meaning) in enumerate(lines):
            x = 10 + (n // per_column) * column_width
            y = 8 + (n % per_column) * self.line
            if key.startswith("--"):
                self.text(key.strip("- "), (x, y), DIM)
                continue
            self.text(key, (x, y), DIM)
            self.text(meaning, (x + key_width, y))

    def pixels(self) -> np.ndarray:
        """What is on screen: uint8 (H, W, 3)."""
        return pygame.surfarray.array3d(self.surface).swapaxes(0, 1)

    def save(self, path: Path) -> Path:
        """A PNG of the screen, written atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
        pygame.image.save(self.surface, str(tmp))
        os.replace(tmp, path)
        return path


# ---------------------------------------------------------------------------- the loop


@dataclass
class LoopSettings:
    """How the play loop runs (the CLI's options that are not about which envs to play)."""

    fps: float = 15.0
    """Target frames (and env steps) per second; 0 runs as fast as possible."""
    scale: int = 8
    """Each frame pixel becomes scale x scale screen pixels (64x64 -> 512x512 at 8)."""
    record_dir: Path = Path("recordings")
    """Where screenshots, screen recordings and (for the real game) demonstrations go."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Format of screen recordings."""
    record: bool = False
    """Start recording the screen at once."""
    wait: bool = False
    """Turn-based: step only when an action key is down (crafter's GUI --wait)."""
    show_help: bool = False
    """Open with the help overlay shown."""
    max_steps: int | None = None
    """Quit after this many env steps (for scripts and tests)."""
    max_frames: int | None = None
    """Quit after this many drawn frames (for scripts and tests)."""


# Frame rate of screen recordings when the loop runs uncapped (fps 0).
UNCAPPED_RECORDING_FPS = 15.0
STATUS_SECONDS = 3.0  # how long a message (screenshot saved, ...) stays in the HUD
FPS_WINDOW = 30  # ticks over which the achieved frame rate is measured


@dataclass
class PlayStats:
    """What a run of the loop did, and how fast."""

    frames: int = 0  # loop ticks drawn
    steps: int = 0  # env steps taken
    episodes: int = 0  # episodes started
    seconds: float = 0.0  # from the first frame to the end of the last
    step_seconds: float = 0.0  # total time inside env.step (all panels)
    draw_seconds: float = 0.0  # drawing, HUD, flip
    record_seconds: float = 0.0  # reading the screen and encoding recordings
    screenshots: list[str] = field(default_factory=list)
    recordings: list[str] = field(default_factory=list)
    demonstrations: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["fps"] = self.fps
        for name in ("step", "draw", "record"):
            total = out.pop(f"{name}_seconds")
            out[f"{name}_ms_per_frame"] = 1000 * total / self.frames if self.frames else 0.0
        return out


class Game:
    """The play loop: each tick reads input, steps the envs (unless paused), draws the
    panels, the HUD and the help, records, and waits for the next frame at the target fps."""

    def __init__(self, play_env: PlayEnv, keymap: Keymap, settings: LoopSettings | None = None,
                 demos: DemoRecorder | None = None, title: str = "worldsim"):
        settings = settings if settings is not None else LoopSettings()
        clash = keymap.bound_keys() & set(CONTROL_KEYS)
        if clash:
            raise ValueError("the keymap binds the loop's own keys: "
                             + ", ".join(key_label(k) for k in sorted(clash)))
        self.env, self.keymap, self.settings, self.demos = play_env, keymap, settings, demos
        self.title = title
        self.tracker = InputTracker()
        self.paused = False
        self.help = settings.show_help
        self.stats = PlayStats()
        self.screen: Screen | None = None
        self.recorder: VideoWriter | None = None
        self.last_action: Any = None
        self.last_by_agent = False
        self._status: tuple[str, float, tuple] = ("", 0.0, TEXT)
        self._ticks: deque[float] = deque(maxlen=FPS_WINDOW)

    # ------------------------------------------------------------------ running
    def run(self, script: Callable[[int], None] | None = None) -> PlayStats:
        """Play until Esc / window closed / `max_steps` / `max_frames`; returns the stats.

        script: called with the frame number at the start of every tick, before input is
                read; it may post events (`pygame.event.post`) to drive the game."""
        s = self.settings
        clock = pygame.time.Clock()
        self._reset()
        frame_hw = self.env.primary.frame.shape[:2]
        self.screen = Screen(frame_hw, len(self.env.panels), s.scale, self.title)
        if s.record:
            self._toggle_recording()
        running = True
        start = time.perf_counter()  # the frame rate counts the loop, not opening the window
        try:
            while running:
                if script is not None:
                    script(self.stats.frames)
                state, commands = self.tracker.poll(pygame.event.get())
                step_once, screenshot = False, False
                for command in commands:
                    if command is Command.QUIT:
                        running = False
                    elif command is Command.STEP:
                        step_once = True
                    elif command is Command.SCREENSHOT:
                        screenshot = True
                    else:
                        self._command(command)
                if not running:
                    break
                if self.env.primary_done:
                    self._reset()
                self._grab_mouse()
                human = self.keymap.action(state)
                stepping = not self.paused or step_once
                if (stepping and s.wait and human is None and not step_once
                        and not self.env.agent_in_control):
                    stepping = False  # turn-based: a person's turn needs a key
                if stepping:
                    self._step(self.keymap.noop if human is None else human)
                self._draw(screenshot)
                clock.tick(s.fps if s.fps > 0 else 0)
                if s.max_steps is not None and self.stats.steps >= s.max_steps:
                    running = False
                if s.max_frames is not None and self.stats.frames >= s.max_frames:
                    running = False
        finally:
            self.stats.seconds = time.perf_counter() - start
            self._finish_demo(cut=True)
            if self.recorder is not None:
                self._toggle_recording()
            pygame.display.quit()
        return self.stats

    def _reset(self) -> None:
        self._finish_demo(cut=True)
        self.env.reset()
        self.stats.episodes += 1
        if self.demos is not None:
            self.demos.start(self.env.primary.frame, self.env.episode_seed, self.env.primary.info)

    def _finish_demo(self, cut: bool) -> None:
        if self.demos is not None:
            name = self.demos.finish(cut)
            if name is not None:
                self.stats.demonstrations.append(name)
                self.status(f"demonstration saved: {name}")

    def _step(self, human_action: Any) -> None:
        action, by_agent = self.env.choose(human_action)
        start = time.perf_counter()
        done = self.env.step(action)
        self.stats.step_seconds += time.perf_counter() - start
        self.stats.steps += 1
        self.last_action, self.last_by_agent = action, by_agent
        if self.demos is not None:
            p = self.env.primary
            self.demos.add(action, p.frame, p.reward, p.terminated, p.truncated, by_agent, p.info)
        if done:
            self._finish_demo(cut=False)

    def _command(self, command: Command) -> None:
        if command is Command.RESET:
            self._reset()
            self.status("episode reset")
        elif command is Command.HELP:
            self.help = not self.help
        elif command is Command.PAUSE:
            self.paused = not self.paused
        elif command is Command.AGENT:
            if self.env.agent is None:
                self.status("no agent: start with --agent random|sticky|PATH", ALERT)
            else:
                self.env.agent_in_control = not self.env.agent_in_control
                self.status("the agent plays" if self.env.agent_in_control else "you play")
        elif command is Command.RESYNC:
            if self.env.resync():
                self.status("dream re-synced to the real game")
            else:
                self.status("re-sync needs side by side (real and dream)", ALERT)
        elif command is Command.RECORD:
            self._toggle_recording()

    def status(self, text: str, color=TEXT) -> None:
        self._status = (text, time.perf_counter() + STATUS_SECONDS, color)

    def _toggle_recording(self) -> None:
        if self.recorder is None:
            s = self.settings
            path = s.record_dir / f"play-{_stamp()}.{s.video_format}"
            self.recorder = VideoWriter(path, s.fps if s.fps > 0 else UNCAPPED_RECORDING_FPS)
            self.status(f"recording to {path}", ALERT)
            return
        path = self.recorder.close()
        self.recorder = None
        if path is not None:
            self.stats.recordings.append(str(path))
            self.status(f"recording saved: {path}")

    def _grab_mouse(self) -> None:
        """Mouse look holds the pointer while a person plays; pausing or handing control to
        the agent gives it back."""
        want = (self.keymap.uses_mouse and not self.paused and not self.env.agent_in_control)
        if pygame.event.get_grab() != want:
            pygame.event.set_grab(want)
            pygame.mouse.set_visible(not want)

    # ------------------------------------------------------------------ drawing
    def _draw(self, screenshot: bool) -> None:
        start = time.perf_counter()
        screen = self.screen
        for i, panel in enumerate(self.env.panels):
            screen.draw_frame(i, panel.frame)
        screen.draw_hud([self._panel_lines(p) for p in self.env.panels], self._status_line())
        if self.help:
            screen.draw_help(self.help_lines())
        if screenshot:
            path = screen.save(self.settings.record_dir / f"screenshot-{_stamp()}.png")
            self.stats.screenshots.append(str(path))
            self.status(f"screenshot saved: {path}")
        pygame.display.flip()
        self.stats.frames += 1
        self._ticks.append(time.perf_counter())
        middle = time.perf_counter()
        self.stats.draw_seconds += middle - start
        if self.recorder is not None:
            self.recorder.write(screen.pixels())
            self.stats.record_seconds += time.perf_counter() - middle

    def achieved_fps(self) -> float:
        if len(self._ticks) < 2:
            return 0.0
        return (len(self._ticks) - 1) / (self._ticks[-1] - self._ticks[0])

    def _panel_lines(self, panel: Panel) -> list[tuple[str, tuple]]:
        who = "agent" if self.last_by_agent else "you"
        action = "-" if self.last_action is None else self.keymap.describe(self.last_action)
        lines = [
            (f"{panel.name}  step {panel.steps}  reward {panel.reward:+.2f}  "
             f"return {panel.episode_return:.2f}", TEXT),
            (f"action {action} ({who})", TEXT),
        ]
        extra = []
        if "predicted_termination" in panel.info:
            value = panel.info["predicted_termination"]
            text = f"{float(value):.2f}" if np.ndim(value) == 0 and not isinstance(value, bool) \
                else str(value)
            extra.append(f"p(termination) {text}")
        achievements = panel.info.get("achievements")
        if isinstance(achievements, dict):
            extra.append(f"achievements {sum(1 for v in achievements.values() if v > 0)}"
                         f"/{len(achievements)}")
        if panel.terminated or panel.truncated:
            extra.append("episode over")
        lines.append(("  ".join(extra), ALERT if panel.terminated else TEXT))
        if panel.step_seconds:
            rate = 1.0 / panel.step_seconds
            note = f"  {panel.note}" if panel.note else ""
            lines.append((f"env step {1000 * panel.step_seconds:.1f} ms ({rate:.0f}/s){note}",
                          DIM))
        return lines

    def _status_line(self) -> list[tuple[str, tuple]]:
        target = f"{self.settings.fps:g}" if self.settings.fps > 0 else "uncapped"
        line = [(f"{self.achieved_fps():.1f} fps (target {target})", TEXT),
                ("agent plays" if self.env.agent_in_control else "you play", TEXT)]
        if self.paused:
            line.append(("PAUSED", ALERT))
        if self.recorder is not None:
            line.append((f"REC {self.recorder.frames}", ALERT))
        line.append(("F1 help", DIM))
        text, until, color = self._status
        if text and time.perf_counter() < until:
            line.append((text, color))
        return line

    def help_lines(self) -> list[tuple[str, str]]:
        lines = [("-- play --", "")]
        lines += [(key_label(k), c.value) for k, c in CONTROL_KEYS.items()]
        lines += [(f"-- {env_name(self.env.primary.env)} --", "")]
        return lines + self.keymap.help()


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:4]}"


# ---------------------------------------------------------------------------- CLI


@dataclass
class PlayConfig:
    """Play the learned simulator (and the real game) with pygame."""

    checkpoint: Path | None = None
    """World-model checkpoint directory to play (default: the bundled model, once it exists)."""
    real: str | None = None
    """Real env id (e.g. worldsim/Crafter-v0): played alone, or beside the dream."""
    side_by_side: bool = False
    """Real game and dream side by side with the same actions (the real env defaults to the
    one named in the checkpoint)."""
    agent: str | None = None
    """Agent that F4 hands control to: "random", "sticky", "module:factory" or a saved agent."""
    agent_first: bool = False
    """Start with the agent in control."""
    seed: int | None = None
    """Seed of the first episode (episode i uses seed + i); random if not given."""
    size: int = 64
    """Frame size of a real env played alone (beside a dream it matches the dream's)."""
    context_frames: int | None = None
    """Real frames that (re)start the dream (default: the dream's context length, else 1)."""
    save_demos: bool = True
    """Record the real game, played alone, into an episode store (human demonstrations)."""
    demos_dir: Path | None = None
    """Episode store for demonstrations (default: RECORD_DIR/demonstrations)."""
    dream_env: str = DREAM_ENV_ID
    """Env id the checkpoint is given to."""
    sampling_steps: int | None = None
    """Sampler steps per dream frame (default: the bundle's); fewer is faster and blurrier."""
    guidance: float | None = None
    """Classifier-free guidance on the action (default: the bundle's). Higher keeps long dreams
    scrolling but loses the player sooner (docs/DESIGN-NOTES.md, long dreams)."""
    bf16: bool = False
    """Run all the dream's networks under bfloat16 autocast: faster at large batches on CPUs
    with bf16 matrix units (AMX), not at play's batch of 1 (benchmarks/play_fps.py measures)."""
    bf16_frames: bool | None = None
    """Run only the frame networks (VAE, refiner, reward model) under bfloat16 autocast, the
    DiT in fp32 (the env's bf16="frames"). Default: where the device has bf16 matrix units
    (AMX, a recent GPU), where it measured faster at the same dream (docs/DESIGN-NOTES.md)."""
    loop: Annotated[LoopSettings, tyro.conf.OmitArgPrefixes] = field(default_factory=LoopSettings)
    """How the loop runs: pacing, scale, recording, limits."""

    @property
    def precision(self) -> bool | str:
        """The dream env's `bf16` setting."""
        from worldsim.runtime import bf16_setting

        return bf16_setting(self.bf16, self.bf16_frames)


BUNDLED_DREAM_ID = "worldsim/CrafterDream-v0"


def make_bundled_dream(num_sampling_steps: int | None = None, bf16: bool | str = False,
                       guidance: float | None = None) -> gym.Env:
    import envs  # noqa: F401

    try:
        return gym.make(BUNDLED_DREAM_ID, num_sampling_steps=num_sampling_steps, bf16=bf16,
                        guidance=guidance)
    except (ImportError, AttributeError, FileNotFoundError, gym.error.Error) as e:
        raise SystemExit(f"worldsim play: there is no bundled world model yet ({e}); pass "
                         "--checkpoint PATH to play a trained one, or --real ENV_ID to play "
                         "the real game") from e


def build(cfg: PlayConfig) -> tuple[Game, str]:
    """The game `worldsim play` runs for a config, and a one-line description of it."""
    from worldsim.data.collect import make_env

    dream = real = None
    if cfg.side_by_side and cfg.checkpoint is None:
        raise SystemExit("worldsim play --side-by-side: pass --checkpoint PATH, the dream to "
                         "show beside the real game")
    if cfg.checkpoint is not None:
        dream = make_dream(cfg.checkpoint, cfg.dream_env, num_sampling_steps=cfg.sampling_steps,
                           bf16=cfg.precision, guidance=cfg.guidance)
    elif cfg.real is None:
        dream = make_bundled_dream(cfg.sampling_steps, cfg.precision, cfg.guidance)
    real_id = cfg.real
    if real_id is None and cfg.side_by_side:
        real_id = source_env_id(cfg.checkpoint) if cfg.checkpoint is not None else None
        if real_id is None:
            raise SystemExit("worldsim play --side-by-side: the checkpoint does not name its "
                             "real env; pass --real ENV_ID")
    if real_id is not None:
        size = tuple(dream.observation_space.shape[:2]) if dream is not None else cfg.size
        real = make_env(real_id, size=size)
    agent = None
    if cfg.agent is not None:
        primary = real if real is not None else dream
        names = _action_names(primary)
        agent = load_agent(cfg.agent, primary.action_space, names, cfg.seed)
    context = cfg.context_frames or (preferred_context(dream) if dream is not None else 1)
    play_env = PlayEnv(real, dream, agent, context_frames=context, seed=cfg.seed)
    play_env.agent_in_control = agent is not None and cfg.agent_first
    demos = None
    if real is not None and dream is None and cfg.save_demos:
        frame_shape = real.observation_space.shape
        demos = DemoRecorder(cfg.demos_dir or cfg.loop.record_dir / "demonstrations", real_id,
                             real, frame_shape)
    keymap = keymap_for(real if real is not None else dream, reserved=set(CONTROL_KEYS))
    what = " | ".join(f"{p.name}: {env_name(p.env)}" for p in play_env.panels)
    return Game(play_env, keymap, cfg.loop, demos, title=f"worldsim play - {what}"), what


def _action_names(env: gym.Env):
    try:
        return list(env.get_wrapper_attr("action_names"))
    except AttributeError:
        return None


def main(argv: list[str]) -> None:
    from worldsim.runtime import configure

    cfg = tyro.cli(PlayConfig, args=argv, prog="worldsim play")
    configure()  # threads from $WORLDSIM_THREADS, and malloc settings (a faster dream step)
    try:
        game, what = build(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"worldsim play: {e}") from e
    try:
        stats = game.run()
    finally:
        game.env.close()
    print(json.dumps({"played": what, **stats.as_dict()}))
