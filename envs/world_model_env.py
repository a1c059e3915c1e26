"""The learned simulator as Gymnasium environments (DESIGN decisions 9 and 12).

    env = gym.make("worldsim/Dream-v0", checkpoint="BUNDLE")             # WorldModelEnv
    envs = gym.make_vec("worldsim/Dream-v0", num_envs=32, checkpoint="BUNDLE",
                        vectorization_mode="vector_entry_point")         # WorldModelVectorEnv

Both step a `worldsim.world_model.WorldModel`: the observation is the next latent frame
sampled by the DiT (decoded to RGB by the VAE unless obs_mode="latent"), the reward and the
termination come from the dynamics model's heads. `WorldModelVectorEnv` steps all its
sub-environments in one batched forward pass; `WorldModelEnv` is the same machinery with one
row, so a one-env vector env and the single env give the same frames for the same seed.

Tensor letters: B rows (sub-environments), K context frames, C latent channels, h w latent
size, H W frame size, R reward support size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.window import HumanWindow
from worldsim.runtime import autocast, check_bf16
from worldsim.spaces import stack_actions
from worldsim.world_model import Rendered, WorldModel

if TYPE_CHECKING:
    from worldsim.models.dynamics import RolloutState

OBS_MODES = ("rgb", "latent")
REWARD_MODES = ("mean", "mode", "achievements")
# Crafter's own frame rate (envs/crafter.py); a bundle may state its source's with "fps".
DEFAULT_RENDER_FPS = 15
# Latent observations are normalised to unit variance per channel (the VAE's calibration), so
# real latents lie within a few units of 0; the bound only keeps a diverging rollout's
# observation inside a finite Box (the state itself is never clipped).
LATENT_OBS_LIMIT = 64.0
# Where the packaged default Crafter world model lives (package data; DESIGN decision 12).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "worldsim" / "assets" / \
    "crafter-default"
# Seeds of the sampler's torch.Generator are drawn from the env's np_random below this bound.
_SEED_BOUND = 2**62


# ---------------------------------------------------------------------- helpers

def load_world_model(checkpoint: str | Path | WorldModel,
                     device: str | torch.device | None = None) -> WorldModel:
    """A `WorldModel` from a bundle directory, or the given one (which stays on its device)."""
    if isinstance(checkpoint, WorldModel):
        wanted = None if device is None else torch.device(device)
        if wanted is not None and (wanted.type != checkpoint.device.type or (
                wanted.index is not None and wanted.index != checkpoint.device.index)):
            raise ValueError(f"the WorldModel given is on {checkpoint.device}, not {device}; "
                             f"load it with worldsim.load(path, device={str(device)!r}) or "
                             f"pass device=None")
        return checkpoint
    if checkpoint is None:
        raise ValueError("the dream env needs checkpoint=PATH, a worldsim checkpoint bundle "
                         "directory (or a WorldModel)")
    return WorldModel.load(checkpoint, device=device)


def expected_action(space: spaces.Space) -> str:
    """What an element of `space` looks like, for error messages."""
    if isinstance(space, spaces.Discrete):
        return f"an integer in [{int(space.start)}, {int(space.start + space.n)})"
    if isinstance(space, spaces.MultiDiscrete):
        return (f"an integer array of shape {space.shape} with start <= a < start + nvec "
                f"(nvec={space.nvec.tolist()}, start={space.start.tolist()})")
    if isinstance(space, spaces.MultiBinary):
        return f"an array of 0s and 1s of shape {space.shape}"
    if isinstance(space, spaces.Box):
        return (f"a {np.dtype(space.dtype).name} array of shape {space.shape} within "
                f"[{space.low.min()}, {space.high.max()}]")
    if isinstance(space, spaces.Dict):
        return "a dict {" + ", ".join(f"{k!r}: {expected_action(s)}"
                                      for k, s in space.spaces.items()) + "}"
    return f"an element of {space}"


def prompt_frames(frames: Any, size: tuple[int, int]) -> np.ndarray:
    """Prompt frames given in reset options as uint8 (K, H, W, 3) at `size` (H, W): one
    image (H, W, 3) counts as K = 1; frames of another size are resized (bilinear with
    antialiasing); any other dtype or layout is refused."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"options['frames'] must be uint8 RGB frames (K, H, W, 3), got dtype "
                         f"{frames.dtype}; convert with frames.astype(np.uint8) if they are "
                         f"already in 0..255")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"options['frames'] must have shape (K, H, W, 3) or (H, W, 3) with "
                         f"K >= 1, got {frames.shape}")
    if tuple(frames.shape[1:3]) != tuple(size):
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear",
                                            antialias=True, align_corners=False)
        frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(frames)


def prompt_actions(actions: Any, space: spaces.Space, count: int) -> dict[str, np.ndarray]:
    """The `count` actions between prompt frames, stacked as the episode store keeps them:
    {key: (count, ...)} for a Dict space (or a list of its elements), (count, ...) otherwise."""
    if actions is None:
        if count:
            raise ValueError(f"options['frames'] holds {count + 1} frames; pass the {count} "
                             f"actions taken between them as options['actions'] (each "
                             f"{expected_action(space)}), or prompt with one frame")
        return {k: np.zeros((0, *s.shape), s.dtype) for k, s in _subspaces(space).items()}
    if isinstance(actions, (list, tuple)) and not isinstance(space, spaces.Box):
        stacked = stack_actions(space, list(actions))
    elif isinstance(actions, dict):
        stacked = {k: np.asarray(v) for k, v in actions.items()}
    else:
        stacked = {"action": np.asarray(actions)}
    subs = _subspaces(space)
    if set(stacked) != set(subs):
        raise ValueError(f"options['actions'] has keys {sorted(stacked)}, the action space "
                         f"{space} needs {sorted(subs)}")
    for key, sub in subs.items():
        value = stacked[key]
        if value.shape != (count, *sub.shape):
            raise ValueError(f"options['actions'][{key!r}] has shape {value.shape}; "
                             f"{count + 1} prompt frames need ({count}, *{sub.shape}) "
                             f"actions from {sub}")
        if value.dtype != sub.dtype and np.can_cast(value.dtype, sub.dtype, "same_kind"):
            value = value.astype(sub.dtype)  # e.g. float64 arrays for a float32 Box
        for i in range(count):
            if not sub.contains(value[i]):
                raise ValueError(f"options['actions'][{key!r}][{i}] = {value[i]!r} is not "
                                 f"{expected_action(sub)}")
        stacked[key] = value.astype(sub.dtype, copy=False)
    return stacked


def _subspaces(space: spaces.Space) -> dict[str, spaces.Space]:
    return dict(space.spaces) if isinstance(space, spaces.Dict) else {"action": space}


def _rng(seed: int | None) -> np.random.Generator:
    rng, _ = gym.utils.seeding.np_random(seed)
    return rng


class Context(NamedTuple):
    """What a row starts from: latents (K, C, h, w) of K real frames, the actions between
    them {key: (K-1, ...)}, the last frame itself, uint8 (H, W, 3) (shown at the reset
    when the bundle has a frame refiner), and the achievements its episode had unlocked,
    bool (A,) (None: unknown, counted as none; see `WorldModel.achievements`)."""

    latents: torch.Tensor
    actions: dict[str, np.ndarray]
    last_frame: np.ndarray
    unlocked: np.ndarray | None = None


@dataclass
class DreamState:
    """A snapshot of B dream rollouts (B = 1 for WorldModelEnv): everything `step` and
    `reset` read, so restoring it replays exactly the same frames for the same actions.

    rollout:   the dynamics model's RolloutState (KV cache of the window, newest latent)
    generator: the sampler's torch.Generator state (uint8 tensor)
    steps:     (B,) steps taken in each row's episode
    shown:     the frames shown now (`worldsim.world_model.Rendered`: frames and their plain
               decodes, (B, H, W, 3) uint8 on the device; None in latent mode until rendered)
    rngs:      bit-generator states of the rows' np_random (start contexts of later resets)
    """

    rollout: RolloutState
    generator: torch.Tensor
    steps: np.ndarray
    shown: Rendered | None
    rngs: list[dict] = field(default_factory=list)

    def clone(self) -> DreamState:
        import copy

        return DreamState(self.rollout.clone(), self.generator.clone(), self.steps.copy(),
                          None if self.shown is None else self.shown.clone(),
                          copy.deepcopy(self.rngs))


class _Rollouts:
    """B rollouts of one world model stepped together: the shared machinery of both envs.

    Holds the rollout state, the sampler's generator, the step counts and the current frames;
    starts rows from contexts (shipped or prompted) and steps all rows at once. Randomness:
    every noise sample comes from `generator`; which start context a row gets comes from the
    caller (the envs draw it from their np_random)."""

    def __init__(self, wm: WorldModel, batch_size: int, *, obs_mode: str,
                 num_sampling_steps: int | None, sampler: str | None,
                 termination_threshold: float, reward_mode: str, context_frames: int | None,
                 bf16: bool | str, guidance: float | None = None):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if reward_mode == "achievements" and not wm.achievements:
            raise ValueError(f"reward_mode='achievements' needs a reward model that predicts "
                             f"achievement unlocks (worldsim train reward --achievements); "
                             f"{wm.source} has none")
        if not 0.0 <= termination_threshold <= 1.0:
            raise ValueError(f"termination_threshold must be in [0, 1], got "
                             f"{termination_threshold}")
        if num_sampling_steps is not None and num_sampling_steps < 1:
            raise ValueError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
        if guidance is not None and guidance <= 0:
            raise ValueError(f"guidance must be positive, got {guidance}")
        if wm.num_start_contexts == 0:
            raise ValueError(f"{wm.source} ships no start contexts")
        K = wm.context_frames
        if context_frames is not None and not 1 <= context_frames <= K:
            raise ValueError(f"context_frames must be in [1, {K}] (the bundle's start contexts "
                             f"hold {K} frames), got {context_frames}")
        self.wm, self.batch_size = wm, batch_size
        self.obs_mode, self.reward_mode, self.bf16 = obs_mode, reward_mode, check_bf16(bf16)
        self.num_sampling_steps, self.sampler = num_sampling_steps, sampler
        self.guidance = guidance
        self.termination_threshold = float(termination_threshold)
        self.context_frames = context_frames or K
        self.support = wm.reward_support.float()
        self.generator = torch.Generator(device=wm.device)
        self.state = None                   # RolloutState of all B rows once started
        self.steps = np.zeros(batch_size, dtype=np.int64)
        self.shown: Rendered | None = None  # the frames shown: rgb mode / rendered
        self._encoded: dict[int, torch.Tensor] = {}

    # -- start contexts ----------------------------------------------------------------
    def shipped_context(self, index: int) -> Context:
        """Start context `index` (its last `context_frames` frames), encoded once and kept."""
        K = self.context_frames
        if index not in self._encoded:
            with autocast(self.wm.device, self.bf16):
                self._encoded[index] = self.wm.encode(self.wm.start_frames[index, -K:])
        actions = {k: v[index, v.shape[1] - (K - 1):] for k, v in self.wm.start_actions.items()}
        unlocked = None if self.wm.start_unlocked is None else self.wm.start_unlocked[index]
        return Context(self._encoded[index], actions, self.wm.start_frames[index, -1], unlocked)

    def prompted_context(self, frames: Any, actions: Any) -> Context:
        """The context of prompt frames (see `prompt_frames` / `prompt_actions`);
        only the last `window` frames are kept (the DiT attends no further back)."""
        frames = prompt_frames(frames, self.wm.observation_space.shape[:2])
        actions = prompt_actions(actions, self.wm.action_space, len(frames) - 1)
        keep = min(len(frames), self.wm.window)
        frames = frames[len(frames) - keep:]
        actions = {k: v[len(v) - (keep - 1):] if keep > 1 else v[:0] for k, v in actions.items()}
        with autocast(self.wm.device, self.bf16):
            return Context(self.wm.encode(frames), actions, frames[-1])

    def start(self, rows: np.ndarray, contexts: list[Context]) -> None:
        """Start `rows` (all rows on the first call) from one context each."""
        latents = torch.stack([c.latents for c in contexts])  # (n, K, C, h, w)
        actions = {k: np.stack([c.actions[k] for c in contexts]) for k in contexts[0].actions}
        unlocked = None
        if self.wm.achievements:
            A = len(self.wm.achievements)
            unlocked = np.stack([np.zeros(A, bool) if c.unlocked is None else c.unlocked
                                 for c in contexts])
        with autocast(self.wm.device, self.bf16):
            state = self.wm.start(latents, actions, self.generator, unlocked=unlocked)
            shown = self.wm.render_start(np.stack([c.last_frame for c in contexts]),
                                         latents[:, -1]) if self.obs_mode == "rgb" else None
        if self.state is None or len(rows) == self.batch_size and \
                np.array_equal(rows, np.arange(self.batch_size)):
            self.state, self.shown = state, shown
        else:
            index = torch.as_tensor(rows, device=self.wm.device)
            self.state.assign(index, state)
            if shown is not None:
                self.shown.assign(index, shown)
            elif self.shown is not None:
                self.shown = None  # latent mode: rendered frames are stale
        self.steps[rows] = 0

    # -- stepping ----------------------------------------------------------------------
    def step(self, actions: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of every row: actions {key: (B, ...)} -> reward (B,), termination
        probability (B,), reward distribution (B, R), all on the device."""
        with autocast(self.wm.device, self.bf16):
            out = self.wm.step(self.state, actions, self.generator,
                               num_steps=self.num_sampling_steps, sampler=self.sampler,
                               guidance=self.guidance,
                               shown=self.shown if self.obs_mode == "rgb" else None)
            self.shown = out.shown
        self.steps += 1
        probs = out.reward_probs.float()
        if self.reward_mode == "mean":  # the expected reward, achievements paid once included
            reward = out.reward.float()
        elif self.reward_mode == "achievements":  # what the Crafter score counts, nothing else
            reward = out.achievement_reward.float()
        else:
            reward = self.support.to(probs.device)[probs.argmax(-1)]
            if out.achievement_reward is not None:
                reward = reward + out.achievement_reward.float().round()
        return reward, out.termination_prob.float(), probs

    def terminated(self, termination_prob: torch.Tensor) -> torch.Tensor:
        return termination_prob > self.termination_threshold

    # -- observations --------------------------------------------------------------------
    def observe(self, rows: Any = slice(None)) -> torch.Tensor:
        """Fresh observation tensors of `rows`: (n, H, W, 3) uint8 or (n, C, h, w) float32."""
        if self.obs_mode == "rgb":
            return self.shown.frames[rows].clone()
        return self.state.last_latents[rows].float().clamp(-LATENT_OBS_LIMIT, LATENT_OBS_LIMIT)

    def rendered(self) -> torch.Tensor:
        """(B, H, W, 3) uint8 current frames. In latent mode they are decoded on demand,
        without the refiner (which needs every frame before it)."""
        if self.shown is None:
            with autocast(self.wm.device, self.bf16):
                self.shown = self.wm.render(self.state.last_latents)
        return self.shown.frames

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self, rngs: list[np.random.Generator]) -> DreamState:
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before get_state()")
        return DreamState(self.state, self.generator.get_state(), self.steps, self.shown,
                          [r.bit_generator.state for r in rngs]).clone()

    def restore(self, snapshot: DreamState, rngs: list[np.random.Generator]) -> None:
        if not isinstance(snapshot, DreamState):
            raise TypeError(f"set_state() takes a DreamState from get_state(), got "
                            f"{type(snapshot).__name__}")
        if snapshot.rollout.batch_size != self.batch_size or len(snapshot.rngs) != len(rngs):
            raise ValueError(f"the state holds {snapshot.rollout.batch_size} rollouts, this env "
                             f"steps {self.batch_size}")
        snapshot = snapshot.clone()  # the caller's copy stays valid for more branches
        self.state, self.steps, self.shown = snapshot.rollout, snapshot.steps, snapshot.shown
        self.generator.set_state(snapshot.generator)
        for rng, state in zip(rngs, snapshot.rngs, strict=True):
            rng.bit_generator.state = state


def _draw_start(rng: np.random.Generator, num_contexts: int | None) -> tuple[int, int]:
    """A reset's draws from a row's np_random, always in this order: the sampler's seed, then
    (unless prompted) which shipped start context to use (-1 for a prompt)."""
    seed = int(rng.integers(0, _SEED_BOUND))
    index = int(rng.integers(0, num_contexts)) if num_contexts else -1
    return seed, index


# ---------------------------------------------------------------------- single env

class WorldModelEnv(gym.Env):
    """The learned simulator of a worldsim checkpoint bundle, as a Gymnasium env.

    ## Description
    A VAE + action-conditioned spacetime DiT trained on recordings of a source env (e.g.
    worldsim/Crafter-v0) imagines its frames: every step samples the next latent frame given
    the frames in the attention window and the action, and the dynamics model's heads predict
    the transition's reward and whether the new frame is terminal.

    ## Action Space
    Exactly the source env's space, from the bundle (Crafter: `Discrete(17)`). An action
    outside it raises a ValueError that says what the space expects.

    ## Observation Space
    obs_mode="rgb": `Box(0, 255, (H, W, 3), uint8)`, the VAE's decoding of the current latent
    frame (also at reset, so every observation comes from the same decoder). obs_mode="latent":
    the latent frame itself, `Box(-64, 64, (C, h, w), float32)`, normalised to unit variance
    per channel; agents that read latents skip the decoder.

    ## Rewards
    From the reward head's distribution over the bundle's reward support (`reward_support`):
    its expected value (reward_mode="mean", what an agent maximising expected return wants) or
    its most likely value (reward_mode="mode": sparse rewards stay exactly 0 or +1). A float.
    With a reward model that pays achievements once, reward_mode="achievements" pays only their
    expected part and drops the rest (Crafter's health changes): far into a dream the health
    part stops meaning much (docs/DESIGN-NOTES.md, "What long dreams pay").

    ## Starting State
    `reset(seed=...)` starts from one of the bundle's real start contexts (K frames of
    validation episodes and the K-1 actions between them), chosen by `self.np_random`.
    `reset(options={"frames": uint8 (K, H, W, 3) or (H, W, 3), "actions": ...})` starts from
    the caller's frames instead (image or video prompting): frames of another size are resized,
    another dtype or layout is refused; K > 1 frames need the K-1 actions between them, stacked
    ((K-1, ...) arrays, {key: (K-1, ...)} for a Dict space, or a list of actions). Only the
    last `window` frames are used.

    ## Episode End
    `terminated` when the predicted termination probability exceeds `termination_threshold`
    (0.5: the more likely outcome; sampling it instead would make a rollout of a rarely
    terminating game die at random whenever the head is slightly unsure). `truncated` after
    `max_episode_steps` steps.

    ## Info
    reset: `step` (0), `context_index` (the start context, -1 for a prompt). step: `step`,
    `termination_prob` (float), `reward_probs` (float32 array over `reward_support`).

    ## Determinism and branching
    The sampler's noise comes from a torch.Generator seeded from `self.np_random` at every
    reset, so the same seed and actions give the same frames (on CPU). `get_state()` returns
    a `DreamState` snapshot (KV cache, newest frame, generator, step count, np_random);
    `set_state(state)` restores it (the snapshot stays reusable), so a planner can branch.

    ## Arguments
    checkpoint: a bundle directory or a loaded `WorldModel` (shared, not copied).
    obs_mode: "rgb" or "latent". render_mode: None, "rgb_array" or "human" (a pygame window
    of `window_size` pixels). max_episode_steps: truncation (None: never). num_sampling_steps,
    sampler, guidance: override the bundle's sampler settings (fewer steps: faster, blurrier;
    guidance: the classifier-free guidance scale on the action, 1 for none).
    device: "cpu", "cuda", ... (default: CUDA if available). termination_threshold, reward_mode:
    see above. context_frames: how many frames of each shipped start context to use (default
    all K). bf16: True runs the networks under bfloat16 autocast; "frames" only the frame
    networks (VAE, refiner, reward model), with the DiT in fp32: at batch 1 on a CPU with bf16
    matrix units the fastest (the DiT's few-row matmuls gain nothing from bf16).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": DEFAULT_RENDER_FPS}

    def __init__(self, checkpoint: str | Path | WorldModel | None = None, obs_mode: str = "rgb",
                 render_mode: str | None = None, max_episode_steps: int | None = 1000,
                 num_sampling_steps: int | None = None, sampler: str | None = None,
                 device: str | torch.device | None = None, termination_threshold: float = 0.5,
                 reward_mode: str = "mean", context_frames: int | None = None,
                 bf16: bool | str = False, window_size: int | tuple[int, int] = 512,
                 guidance: float | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or "
                             f"None, got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.world_model = wm = load_world_model(checkpoint, device)
        self._sim = _Rollouts(wm, 1, obs_mode=obs_mode, num_sampling_steps=num_sampling_steps,
                              sampler=sampler, termination_threshold=termination_threshold,
                              reward_mode=reward_mode, context_frames=context_frames, bf16=bf16,
                              guidance=guidance)
        self.obs_mode, self.render_mode = obs_mode, render_mode
        self.max_episode_steps = max_episode_steps
        self.metadata = {**type(self).metadata,
                         "render_fps": int(wm.config.get("fps", DEFAULT_RENDER_FPS))}
        self.action_space = wm.action_space
        self.observation_space = observation_space(wm, obs_mode)
        self.reward_support = wm.reward_support.float().cpu().numpy()
        self.window_size = (window_size, window_size) if isinstance(window_size, int) \
            else tuple(window_size)
        self._window: HumanWindow | None = None

    @property
    def context_length(self) -> int:
        """Frames of a shipped start context used at reset (a good prompt length)."""
        return self._sim.context_frames

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"frames", "actions"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the dream env takes "
                             f"'frames' and 'actions'")
        prompted = options.get("frames") is not None
        gen_seed, index = _draw_start(self.np_random,
                                      None if prompted else self.world_model.num_start_contexts)
        if prompted:
            context = self._sim.prompted_context(options["frames"], options.get("actions"))
        elif options.get("actions") is not None:
            raise ValueError("options['actions'] needs options['frames'] (the prompt they "
                             "belong to)")
        else:
            context = self._sim.shipped_context(index)
        self._sim.generator.manual_seed(gen_seed)
        self._sim.start(np.arange(1), [context])
        if self.render_mode == "human":
            self.render()
        return self._observation(), {"step": 0, "context_index": index}

    def step(self, action):
        if self._sim.state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = self._stack(action)
        reward, termination_prob, probs = self._sim.step(actions)
        steps = int(self._sim.steps[0])
        p = float(termination_prob[0])
        terminated = bool(self._sim.terminated(termination_prob)[0])
        truncated = self.max_episode_steps is not None and steps >= self.max_episode_steps
        info = {"step": steps, "termination_prob": p,
                "reward_probs": probs[0].cpu().numpy().copy()}
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(reward[0]), terminated, bool(truncated), info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode="
                            "'rgb_array' or 'human' to gymnasium.make")
            return None
        if self._sim.state is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        frame = self._sim.rendered()[0].cpu().numpy().copy()
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None

    # ------------------------------------------------------------------ branching
    def get_state(self) -> DreamState:
        """A snapshot of the simulator (see the class docstring); restore with set_state."""
        return self._sim.snapshot([self.np_random])

    def set_state(self, state: DreamState):
        """Restore a `get_state()` snapshot and return its observation."""
        self._sim.restore(state, [self.np_random])
        return self._observation()

    # ------------------------------------------------------------------ helpers
    def _observation(self) -> np.ndarray:
        return self._sim.observe()[0].cpu().numpy()

    def _stack(self, action) -> dict[str, np.ndarray]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in the action space "
                             f"{self.action_space}: expected {expected_action(self.action_space)}")
        return stack_actions(self.action_space, [action])

    def _show(self, frame: np.ndarray) -> None:
        if self._window is None:
            self._window = HumanWindow(f"worldsim dream - {self.world_model.env_id}",
                                       self.window_size, self.metadata["render_fps"])
        self._window.show(frame)


def observation_space(wm: WorldModel, obs_mode: str) -> spaces.Box:
    """The observation space of one dream env: the source env's frames or the latents."""
    if obs_mode == "rgb":
        return wm.observation_space
    if obs_mode == "latent":
        return spaces.Box(-LATENT_OBS_LIMIT, LATENT_OBS_LIMIT, wm.latent_shape, np.float32)
    raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")


# ---------------------------------------------------------------------- vector env

class WorldModelVectorEnv(VectorEnv):
    """`num_envs` dream rollouts stepped in one batched forward pass (on `device`).

    The same spaces (batched), actions, rewards, episode ends, info and arguments as
    `WorldModelEnv`, plus:

    ## Autoreset
    `metadata["autoreset_mode"]` is `AutoresetMode.SAME_STEP`: when a sub-env's episode
    ends, the same `step` call returns the first observation of its next episode, with the
    last one in `info["final_obs"]` and its info in `info["final_info"]` (masks
    `info["_final_obs"]`, ...), as `SyncVectorEnv` does in that mode. Only the rows that
    ended are reset, by encoding a new start context into their rows of the KV cache; no
    step is spent on a reset, and SB3- and CleanRL-style loops, written for this mode, run
    unchanged. Autoresets use the shipped start contexts.

    ## Reset
    `reset(seed=s)` seeds sub-env i with s + i (a list gives one seed per sub-env); each draws
    its start context from its own np_random, as `WorldModelEnv(seed=s + i)` would. The
    sampler's noise is drawn for the whole batch from one torch.Generator (one forward pass,
    one draw), seeded at reset by sub-env 0's draw, so a one-env vector env gives exactly the
    frames of `WorldModelEnv` for the same seed. Options: "frames" (K, H, W, 3) for every
    sub-env or (num_envs, K, H, W, 3), "actions" likewise, and gymnasium's "reset_mask"
    (num_envs,) bool to reset only some sub-envs.

    ## Tensor mode
    With `tensor_mode=True`, `step` takes torch tensors (or arrays) and returns torch tensors
    on the device: observations (N, ...), rewards float32 (N,), terminated and truncated bool
    (N,), and info values as tensors; `info["final_obs"]` is then one (N, ...) tensor whose
    rows under `info["_final_obs"]` are the final observations. Nothing leaves the device
    except the (N,) episode-end flags that decide which rows to reset; use it for training
    agents in imagination. Action values are then checked by the action encoder (Box actions
    are clipped to their bounds rather than refused).

    ## Branching
    `get_state()` / `set_state(state)` snapshot and restore all sub-envs at once.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_RENDER_FPS,
                "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, checkpoint: str | Path | WorldModel | None = None, num_envs: int = 1,
                 obs_mode: str = "rgb", render_mode: str | None = None,
                 max_episode_steps: int | None = 1000, num_sampling_steps: int | None = None,
                 sampler: str | None = None, device: str | torch.device | None = None,
                 termination_threshold: float = 0.5, reward_mode: str = "mean",
                 context_frames: int | None = None, bf16: bool | str = False,
                 tensor_mode: bool = False, guidance: float | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or "
                             f"None, got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.world_model = wm = load_world_model(checkpoint, device)
        self._sim = _Rollouts(wm, num_envs, obs_mode=obs_mode,
                              num_sampling_steps=num_sampling_steps, sampler=sampler,
                              termination_threshold=termination_threshold,
                              reward_mode=reward_mode, context_frames=context_frames, bf16=bf16,
                              guidance=guidance)
        self.num_envs = num_envs
        self.obs_mode, self.render_mode, self.tensor_mode = obs_mode, render_mode, tensor_mode
        self.max_episode_steps = max_episode_steps
        self.metadata = {**type(self).metadata,
                         "render_fps": int(wm.config.get("fps", DEFAULT_RENDER_FPS))}
        self.single_action_space = wm.action_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = observation_space(wm, obs_mode)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.reward_support = wm.reward_support.float().cpu().numpy()
        self._rngs: list[np.random.Generator] | None = None

    @property
    def device(self) -> torch.device:
        return self.world_model.device

    @property
    def context_length(self) -> int:
        return self._sim.context_frames

    @property
    def unlocked(self) -> torch.Tensor | None:
        """(num_envs, A) float on the device: how surely each row's episode has unlocked each
        of `world_model.achievements` (the ledger a pay-once reward model pays from; start
        contexts bring what their real episode had unlocked). None before the first reset or
        without such a reward model."""
        state = self._sim.state
        return None if state is None or state.unlocked is None else state.unlocked.float()

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None):
        N = self.num_envs
        if isinstance(seed, (list, tuple)):
            if len(seed) != N:
                raise ValueError(f"{len(seed)} seeds for {N} sub-envs")
            super().reset(seed=None)
            seeds = list(seed)
        else:
            super().reset(seed=seed)
            seeds = [None if seed is None else seed + i for i in range(N)]
        if self._rngs is None:
            self._rngs = [_rng(s) for s in seeds]
        else:  # an unseeded sub-env continues its own random stream, as in SyncVectorEnv
            self._rngs = [self._rngs[i] if s is None else _rng(s) for i, s in enumerate(seeds)]

        options = dict(options or {})
        unknown = set(options) - {"frames", "actions", "reset_mask"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the dream vector env "
                             f"takes 'frames', 'actions' and 'reset_mask'")
        mask = options.get("reset_mask")
        if mask is None:
            rows = np.arange(N)
        else:
            mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
            if mask.shape != (N,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({N},), "
                                 f"got {mask.dtype} {mask.shape}")
            if self._sim.state is None and not mask.all():
                raise ValueError("the first reset must reset every sub-env (reset_mask all True)")
            rows = np.flatnonzero(mask)
        reseed = len(rows) == N
        index = self._start_rows(rows, options.get("frames"), options.get("actions"), reseed)
        info = {"step": self._sim.steps.copy(), "_step": mask_of(rows, N),
                "context_index": index, "_context_index": mask_of(rows, N)}
        return self._out(self._sim.observe()), self._info_out(info)

    def step(self, actions):
        if self._sim.state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        reward, termination_prob, probs = self._sim.step(self._actions(actions))
        N, steps = self.num_envs, self._sim.steps.copy()
        terminated = self._sim.terminated(termination_prob)
        truncated_np = (steps >= self.max_episode_steps) if self.max_episode_steps \
            else np.zeros(N, dtype=bool)
        done = terminated.cpu().numpy() | truncated_np  # the one host copy: (N,) flags
        obs = self._sim.observe()
        info: dict[str, Any] = {"step": steps, "_step": np.ones(N, dtype=bool),
                                "termination_prob": termination_prob, "reward_probs": probs,
                                "_termination_prob": ~done, "_reward_probs": ~done}
        if done.any():
            rows = np.flatnonzero(done)
            final_obs = obs.clone()
            info["final_info"] = {"step": steps.copy(), "_step": done,
                                  "termination_prob": termination_prob.clone(),
                                  "_termination_prob": done.copy(),
                                  "reward_probs": probs.clone(), "_reward_probs": done.copy()}
            info["context_index"] = self._start_rows(rows, None, None, reseed=False)
            info["_context_index"] = done.copy()
            info["step"] = self._sim.steps.copy()
            index = torch.as_tensor(rows, device=obs.device)
            obs[index] = self._sim.observe(index)
            if self.tensor_mode:
                info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            else:
                objects = np.full(N, None, dtype=object)
                for i in rows:
                    objects[i] = final_obs[int(i)].cpu().numpy()
                info["final_obs"], info["_final_obs"] = objects, done.copy()
        truncated = truncated_np
        if self.tensor_mode:
            return (obs, reward.float(), terminated,
                    torch.as_tensor(truncated, device=self.device), self._info_out(info))
        return (obs.cpu().numpy(), reward.float().cpu().numpy(), terminated.cpu().numpy(),
                truncated, self._info_out(info))

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode="
                            "'rgb_array' to gymnasium.make_vec")
            return None
        if self._sim.state is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        frames = self._sim.rendered().cpu().numpy()
        return [frame.copy() for frame in frames]

    def close_extras(self, **kwargs):
        self._sim.state = None

    # ------------------------------------------------------------------ branching
    def get_state(self) -> DreamState:
        """A snapshot of every sub-env (see WorldModelEnv.get_state)."""
        if self._rngs is None:
            raise gym.error.ResetNeeded("call reset() before get_state()")
        return self._sim.snapshot(self._rngs)

    def set_state(self, state: DreamState):
        """Restore a `get_state()` snapshot and return its observations."""
        if self._rngs is None:
            raise gym.error.ResetNeeded("call reset() before set_state()")
        self._sim.restore(state, self._rngs)
        return self._out(self._sim.observe())

    # ------------------------------------------------------------------ helpers
    def _start_rows(self, rows: np.ndarray, frames: Any, actions: Any,
                    reseed: bool) -> np.ndarray:
        """Start `rows` from prompts (when `frames` is given) or shipped contexts drawn from
        their np_random; returns the context index per sub-env (-1 for prompts and rows not
        reset). A full reset reseeds the sampler from sub-env 0's draw."""
        N, wm = self.num_envs, self.world_model
        index = np.full(N, -1, dtype=np.int64)
        prompted = frames is not None
        if actions is not None and not prompted:
            raise ValueError("options['actions'] needs options['frames'] (the prompt they "
                             "belong to)")
        contexts, gen_seed = [], None
        per_env = prompted and _per_env(frames, N)
        for row in rows:
            seed, idx = _draw_start(self._rngs[row], None if prompted else wm.num_start_contexts)
            gen_seed = seed if gen_seed is None else gen_seed
            if prompted:
                contexts.append(self._sim.prompted_context(
                    frames[row] if per_env else frames,
                    _row_actions(actions, row, N, per_env)))
            else:
                index[row] = idx
                contexts.append(self._sim.shipped_context(idx))
        if reseed:
            self._sim.generator.manual_seed(gen_seed)
        self._sim.start(rows, contexts)
        return index

    def _actions(self, actions) -> dict[str, Any]:
        """Batched actions as {key: (N, ...)}, checked against the batched action space."""
        space = self.single_action_space
        if self.tensor_mode and _has_tensor(actions):
            stacked = dict(actions) if isinstance(space, spaces.Dict) else {"action": actions}
            return self.world_model.action_tensors(stacked, (self.num_envs,))
        if isinstance(actions, dict):
            actions = {k: np.asarray(v) for k, v in actions.items()}
        else:
            actions = np.asarray(actions)
        if not self.action_space.contains(actions):
            raise ValueError(f"actions {actions!r} are not in the batched action space "
                             f"{self.action_space}: expected, for each of the {self.num_envs} "
                             f"sub-envs, {expected_action(space)}")
        return dict(actions) if isinstance(space, spaces.Dict) else {"action": actions}

    def _out(self, obs: torch.Tensor):
        return obs if self.tensor_mode else obs.cpu().numpy()

    def _info_out(self, info: dict[str, Any]) -> dict[str, Any]:
        """Tensors as numpy arrays (or numpy arrays as tensors in tensor mode)."""
        out = {}
        for key, value in info.items():
            if isinstance(value, dict):
                out[key] = self._info_out(value)
            elif self.tensor_mode and isinstance(value, np.ndarray) and value.dtype != object:
                out[key] = torch.as_tensor(value, device=self.device)
            elif not self.tensor_mode and isinstance(value, torch.Tensor):
                out[key] = value.cpu().numpy().copy()
            else:
                out[key] = value
        return out


def mask_of(rows: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _has_tensor(actions) -> bool:
    values = actions.values() if isinstance(actions, dict) else [actions]
    return any(isinstance(v, torch.Tensor) for v in values)


def _per_env(frames: Any, n: int) -> bool:
    """Whether prompt frames are given per sub-env ((N, K, H, W, 3)) or shared."""
    ndim = frames.ndim if hasattr(frames, "ndim") else np.asarray(frames).ndim
    if ndim == 5:
        if len(frames) != n:
            raise ValueError(f"options['frames'] holds prompts for {len(frames)} sub-envs, "
                             f"the vector env has {n}")
        return True
    return False


def _row_actions(actions: Any, row: int, n: int, per_env: bool) -> Any:
    if actions is None or not per_env:
        return actions
    if isinstance(actions, dict):
        return {k: np.asarray(v)[row] for k, v in actions.items()}
    return np.asarray(actions)[row]


# ---------------------------------------------------------------------- bundled default

def _default_checkpoint() -> Path:
    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled default Crafter world model is not installed (no "
            f"{DEFAULT_CHECKPOINT.name}/config.json under worldsim/assets); until it ships, "
            f"train one or use another bundle: gym.make(\"worldsim/Dream-v0\", "
            f"checkpoint=PATH)")
    return DEFAULT_CHECKPOINT


def make_crafter_dream(**kwargs) -> WorldModelEnv:
    """`worldsim/CrafterDream-v0`: WorldModelEnv on the bundled default Crafter world model."""
    if "checkpoint" in kwargs:
        raise TypeError("worldsim/CrafterDream-v0 uses the bundled checkpoint; for another "
                        "one use gym.make(\"worldsim/Dream-v0\", checkpoint=PATH)")
    return WorldModelEnv(checkpoint=_default_checkpoint(), **kwargs)


def make_crafter_dream_vector(num_envs: int = 1, **kwargs) -> WorldModelVectorEnv:
    """The vector entry point of `worldsim/CrafterDream-v0`."""
    if "checkpoint" in kwargs:
        raise TypeError("worldsim/CrafterDream-v0 uses the bundled checkpoint; for another "
                        "one use gym.make_vec(\"worldsim/Dream-v0\", checkpoint=PATH, ...)")
    return WorldModelVectorEnv(checkpoint=_default_checkpoint(), num_envs=num_envs, **kwargs)
