"""The learned simulator as one object: VAE + dynamics (DiT with reward/termination heads) +
an optional companion reward model + the spaces and real start contexts of the data it learnt
from.

A checkpoint bundle is a directory::

    BUNDLE/config.json                 format, env id, observation and action spaces, sampler
                                       settings, data fingerprint, versions, metrics
    BUNDLE/vae/                        the VAE checkpoint (config.json + model.safetensors)
    BUNDLE/dynamics/                   the dynamics checkpoint (config.json + model.safetensors)
    BUNDLE/reward/                     optional: the reward and termination model
                                       (worldsim.models.reward_model); when present it, not
                                       the dynamics model's heads, gives reward and termination
    BUNDLE/refiner/                    optional: the frame refiner (worldsim.models.refiner),
                                       which draws each frame with the previous one in view
    BUNDLE/start_contexts.safetensors  real start contexts from validation episodes:
                                       frames uint8 (N, K, H, W, 3), actions.<key> (N, K-1, ...)

`WorldModel` is what environments, evaluation and play use:

    wm = worldsim.load("BUNDLE")
    latents = wm.encode(frames)                        # uint8 (B, K, H, W, 3) -> (B, K, C, h, w)
    state = wm.start(latents, actions)                 # actions {key: (B, K-1, ...)} or None
    out = wm.step(state, actions, generator)           # actions {key: (B, ...)}
    out.latents (B, C, h, w), out.reward (B,), out.termination_prob (B,), out.state
    frames = wm.decode(out.latents)                    # -> uint8 (B, H, W, 3)

What a rollout shows goes through `render`, which uses the refiner when the bundle has one:

    shown = wm.render_start(frames[:, -1], latents[:, -1])    # a reset shows the real frame
    shown = wm.step(state, actions, generator, shown=shown).shown   # every step after it
    shown.frames (B, H, W, 3) uint8

(A step given what was shown before renders its frames, and with the bundle's `feedback`
continues from their encoding; `wm.render(out.latents, shown, out.decoded)` renders apart.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces

from worldsim.models.reward_model import PAY_ONCE_RULES
from worldsim.runtime import frames_autocast
from worldsim.spaces import action_keys, space_from_json, space_to_json
from worldsim.training.checkpoint import CheckpointError  # noqa: F401  (one error class for all)

BUNDLE_FORMAT = "worldsim-bundle"


@dataclass
class StepOutput:
    latents: torch.Tensor           # (B, C, h, w) the predicted next latent frame
    reward: torch.Tensor            # (B,) expected reward of the transition
    termination_prob: torch.Tensor  # (B,) probability that the new frame is terminal
    reward_probs: torch.Tensor      # (B, R) distribution over the reward support
    state: Any                      # the rollout state after the step (KV cache, positions)
    achievement_reward: torch.Tensor | None = None
    # (B,) the part of `reward` paid for achievements (each once per episode), with a reward
    # model that predicts unlocks; `reward_probs` is then the distribution of the rest
    decoded: torch.Tensor | None = None
    # uint8 (B, H, W, 3) with re-encoding: the decode of the sampled latent, the frame whose
    # encoding `latents` is (with feedback: the frame the refiner drew from); `render` shows
    # it instead of decoding `latents` once more
    shown: Rendered | None = None
    # what the rollout shows after the step, when the step was given what it showed before


@dataclass
class Rendered:
    """What a batch of rollouts shows, and what the next `WorldModel.render` reads."""

    frames: torch.Tensor   # uint8 (B, H, W, 3) the frames shown
    decoded: torch.Tensor  # uint8 (B, H, W, 3) the VAE's plain decode of the same latents

    def clone(self) -> Rendered:
        return Rendered(self.frames.clone(), self.decoded.clone())

    def __getitem__(self, rows) -> Rendered:
        return Rendered(self.frames[rows], self.decoded[rows])

    def assign(self, rows: torch.Tensor, other: Rendered) -> None:
        """Replace `rows` with `other`'s frames (in place)."""
        self.frames[rows], self.decoded[rows] = other.frames, other.decoded


# Real start contexts shipped with a bundle: how many, and how many frames each (K frames and
# the K-1 actions between them). K frames of history give the DiT motion to continue from.
DEFAULT_START_CONTEXTS = 128
DEFAULT_CONTEXT_FRAMES = 4


def load_dynamics(directory: str | Path, device: str | torch.device = "cpu",
                  weights: str | None = None, vae_fingerprint: str | None = None):
    """A `DynamicsModel` from a checkpoint directory: a bundle or its `dynamics/`, a training
    checkpoint (EMA weights unless `weights="model"`), or a training run directory (its newest
    checkpoint). Strict: the config must describe a dynamics model and every tensor must fit;
    with `vae_fingerprint`, it must have been trained on that VAE's latents."""
    from worldsim.models.dynamics import DynamicsConfig, DynamicsModel
    from worldsim.training.checkpoint import load_state_dict_strict
    from worldsim.training.loop import read_model_checkpoint

    directory = Path(directory)
    if (directory / "dynamics").is_dir():  # a bundle
        directory = directory / "dynamics"
    directory, meta, group, tensors = read_model_checkpoint(
        directory, "dynamics", keys=("dynamics", "action_space"), weights=weights,
        vae_fingerprint=vae_fingerprint)
    try:
        config = DynamicsConfig.from_dict(meta["dynamics"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from e
    model = DynamicsModel(config, space_from_json(meta["action_space"]))
    load_state_dict_strict(model, tensors, f"{directory}/{group}.safetensors")
    return model.to(device).eval(), meta


class WorldModel:
    """VAE + dynamics + start contexts: encode frames, step batches of latent rollouts with
    actions (next latent, reward, termination), decode. See the module docstring."""

    def __init__(self, vae, dynamics, config: dict[str, Any], start_frames: np.ndarray,
                 start_actions: dict[str, np.ndarray], source: str = "", reward_model=None,
                 refiner=None, start_unlocked: np.ndarray | None = None):
        self.vae, self.dynamics, self.config, self.source = vae, dynamics, config, source
        self.reward_model = reward_model  # None: the dynamics model's heads
        self.refiner = refiner            # None: frames are the VAE's plain decodes
        self.observation_space: spaces.Box = space_from_json(config["observation_space"])
        self.action_space: spaces.Space = space_from_json(config["action_space"])
        self.action_keys = action_keys(self.action_space)
        self.env_id: str = config.get("env_id", "")
        # The bundle's sampler defaults (chosen by measurement when it was assembled), else
        # the dynamics model's own.
        sampling = config.get("sampling", {})
        diffusion = dynamics.config.diffusion
        self.num_steps: int = int(sampling.get("num_steps", diffusion.num_steps))
        self.sampler: str = str(sampling.get("sampler", diffusion.sampler))
        if "sigma_min" in sampling:
            # Where the schedule's ramp ends, which places the levels between sigma_max and 0
            # (`schedules.karras_sigmas`): a sampling choice, so the bundle may set it.
            dynamics.config.diffusion = dataclasses.replace(
                diffusion, sample_sigma_min=float(sampling["sigma_min"]))
        # Re-encoding: every sampled latent goes through the VAE (decode, then encode) before
        # the rollout continues from it. The DiT's small errors otherwise pile up off the set
        # of latents the encoder produces, and long dreams wash out into blur within a few
        # hundred steps; the round trip puts each frame back on it. Bundles made before the
        # setting existed did not re-encode.
        self.reencode: bool = bool(sampling.get("reencode", False))
        # Feedback: with a refiner, re-encoding passes through the frame the rollout shows
        # (the refiner's, which copies what did not change pixel for pixel) instead of the
        # plain decode. Only steps given what they showed before (`step(shown=...)`) can do
        # it; the others re-encode the plain decode.
        self.feedback: bool = bool(sampling.get("feedback", False))
        # How the refiner blends its sources at inference: "soft" (the weighted mean it was
        # trained with) or "hard" (the largest weight's source per pixel); see FrameRefiner.
        if refiner is not None:
            refiner.hard_blend = sampling.get("refiner_blend", "soft") == "hard"
        # Classifier-free guidance scale on the action (1: none; see DynamicsModel.step).
        self.guidance: float = float(sampling.get("guidance", 1.0))
        # How a reward model that pays achievements once turns its unlock probabilities into
        # reward (`reward_model.pay_once`); bundles made before the choice pay "expected".
        self.pay_once: str = str(config.get("pay_once", "expected"))
        if self.pay_once not in PAY_ONCE_RULES:
            raise CheckpointError(f"{source or 'the bundle'}: pay_once {self.pay_once!r} is not "
                                  f"one of {PAY_ONCE_RULES}")
        self.start_frames = start_frames      # uint8 (N, K, H, W, 3)
        self.start_actions = start_actions    # {key: (N, K-1, ...)}
        # bool (N, A): achievements unlocked before each start context's last frame, for a
        # reward model that pays them once (None: unknown, rollouts start with none unlocked)
        self.start_unlocked = start_unlocked
        # The convolutional networks keep their weights channels-last: oneDNN then runs them
        # without reordering the weights on every call (7-19% faster at batch 1 in
        # benchmarks/vae_speed.py).
        for net in (vae, refiner, reward_model):
            if net is not None:
                net.to(memory_format=torch.channels_last)
        H, W = self.observation_space.shape[:2]
        self.latent_shape: tuple[int, int, int] = tuple(vae.latent_shape(H, W))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> WorldModel:
        from worldsim.models.vae import VAE
        from worldsim.runtime import choose_device
        from worldsim.training.checkpoint import load_checkpoint

        path = Path(path)
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is not a worldsim checkpoint bundle "
                                  f"({path / 'config.json'} does not exist)")
        device = choose_device(device if device is None else str(device))
        config, tensors = load_checkpoint(path, groups=["start_contexts"])
        if config.get("format") != BUNDLE_FORMAT:
            raise CheckpointError(f"{path}/config.json is not a {BUNDLE_FORMAT} "
                                  f"(format={config.get('format')!r})")
        vae = VAE.from_checkpoint(path / "vae", device=device)
        latent_space = vae.latent_fingerprint()  # what every part must have been trained on
        dynamics, dyn_meta = load_dynamics(path / "dynamics", device=device,
                                           vae_fingerprint=latent_space)
        if dyn_meta["action_space"] != config["action_space"]:
            raise CheckpointError(f"{path}/dynamics was trained for another action space than "
                                  f"the bundle declares")
        if dynamics.config.dit.in_channels != vae.latent_channels:
            raise CheckpointError(f"{path}: the dynamics model takes "
                                  f"{dynamics.config.dit.in_channels} latent channels, the VAE "
                                  f"makes {vae.latent_channels}")
        reward_model = None
        if (path / "reward").is_dir():
            from worldsim.models.reward_model import load_reward_model

            reward_model, _ = load_reward_model(path / "reward", device=device,
                                                action_space=config["action_space"],
                                                vae_fingerprint=latent_space)
        refiner = None
        if (path / "refiner").is_dir():
            from worldsim.models.refiner import load_refiner

            refiner, _ = load_refiner(path / "refiner", device=device,
                                      vae_fingerprint=latent_space)
        ctx = tensors["start_contexts"]
        frames = ctx["frames"].numpy()
        actions = {k[len("actions."):]: v.numpy() for k, v in ctx.items()
                   if k.startswith("actions.")}
        return cls(vae, dynamics, config, frames, actions, source=str(path),
                   reward_model=reward_model, refiner=refiner,
                   start_unlocked=ctx["unlocked"].numpy() if "unlocked" in ctx else None)

    @classmethod
    def untrained(cls, observation_space: spaces.Box, action_space: spaces.Space, *,
                  vae_config=None, dynamics_config=None, start_frames: np.ndarray | None = None,
                  start_actions: dict[str, np.ndarray] | None = None, env_id: str = "",
                  seed: int = 0, device: str | torch.device | None = None) -> WorldModel:
        """A world model with freshly initialised weights and an identity latent scale, for
        measuring speed (which does not depend on the weights) before a trained model exists.
        Its frames are meaningless. Defaults: `VAEConfig()` and `DynamicsConfig()` (the DiT
        "S" preset), its input channels set to the VAE's. Without `start_frames` it gets one
        start context of DEFAULT_CONTEXT_FRAMES uniform random frames and random actions."""
        from worldsim.models.dynamics import DynamicsConfig, DynamicsModel
        from worldsim.models.vae import VAE, VAEConfig
        from worldsim.runtime import choose_device
        from worldsim.spaces import stack_actions

        device = choose_device(device if device is None else str(device))
        dyn_config = dynamics_config or DynamicsConfig()
        vae_config = vae_config or VAEConfig()
        dyn_config = dataclasses.replace(dyn_config, dit=dataclasses.replace(
            dyn_config.dit, in_channels=vae_config.latent_channels))
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left alone
            torch.manual_seed(seed)
            vae = VAE(vae_config)
            dynamics = DynamicsModel(dyn_config, action_space)
        if start_frames is None:
            rng = np.random.default_rng(seed)
            K = DEFAULT_CONTEXT_FRAMES
            start_frames = rng.integers(0, 256, (1, K, *observation_space.shape), dtype=np.uint8)
            action_space.seed(seed)
            stacked = stack_actions(action_space, [action_space.sample() for _ in range(K - 1)])
            start_actions = {k: v[None] for k, v in stacked.items()}
        if start_actions is None:
            raise ValueError("start_frames need start_actions {key: (N, K-1, ...)}")
        config = {"format": BUNDLE_FORMAT, "env_id": env_id,
                  "observation_space": space_to_json(observation_space),
                  "action_space": space_to_json(action_space),
                  "context_frames": int(start_frames.shape[1]), "untrained": True}
        return cls(vae.to(device).eval(), dynamics.to(device).eval(), config,
                   np.asarray(start_frames), start_actions, source="untrained")

    @property
    def device(self) -> torch.device:
        return self.dynamics.device

    @property
    def context_frames(self) -> int:
        """K, the number of real frames in each shipped start context."""
        return int(self.start_frames.shape[1])

    @property
    def window(self) -> int:
        """Frames the DiT attends over (its KV cache holds this many)."""
        return int(self.dynamics.config.dit.window)

    @property
    def num_start_contexts(self) -> int:
        return int(self.start_frames.shape[0])

    # ------------------------------------------------------------------ frames <-> latents
    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., H, W, 3) -> normalised latents (..., C, h, w) on the device."""
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor)
                                 else frames).to(self.device)
        with frames_autocast(self.device):
            return self.vae.encode_frames(frames).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (..., C, h, w) -> uint8 frames (..., H, W, 3) on the device."""
        with frames_autocast(self.device):
            return self.vae.decode_frames(latents)

    @torch.no_grad()
    def round_trip(self, latents: torch.Tensor) -> torch.Tensor:
        """encode(decode(latents)): (..., C, h, w) -> the same shape, back on the set of
        latents the encoder gives real frames (re-encoding)."""
        with frames_autocast(self.device):
            return self.vae.round_trip(latents).float()

    @torch.no_grad()
    def render_start(self, frames: np.ndarray | torch.Tensor, latents: torch.Tensor,
                     decoded: torch.Tensor | None = None) -> Rendered:
        """What a rollout shows at its start: real frames (B, H, W, 3) uint8 and their latents
        (B, C, h, w). With a refiner the real frames themselves; without one their decodes,
        so that every frame a rollout shows comes from the same decoder. `decoded`: the
        latents' decodes if the caller already has them."""
        decoded = self.decode(latents) if decoded is None else decoded
        if self.refiner is None:
            return Rendered(decoded, decoded)
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor)
                                 else frames).to(decoded.device)
        if frames.shape != decoded.shape:
            raise ValueError(f"frames {tuple(frames.shape)} do not match the latents' decodes "
                             f"{tuple(decoded.shape)}")
        return Rendered(frames, decoded)

    @torch.no_grad()
    def render(self, latents: torch.Tensor, previous: Rendered | None = None,
               decoded: torch.Tensor | None = None) -> Rendered:
        """The frames a rollout shows for new latents (B, C, h, w), given what it showed
        before (`previous`; None: no history, the plain decode). `decoded`: their frames if
        the caller has them (`StepOutput.decoded`), which saves a decode per step."""
        decoded = self.decode(latents) if decoded is None else decoded
        if self.refiner is None or previous is None:
            return Rendered(decoded, decoded)
        with frames_autocast(self.device):
            return Rendered(self.refiner.refine(decoded, previous.frames, previous.decoded),
                            decoded)

    # ------------------------------------------------------------------ actions
    def action_tensors(self, actions: dict[str, Any], batch_shape: tuple[int, ...]
                       ) -> dict[str, torch.Tensor]:
        """Stacked actions {key: (*batch_shape, ...)} as tensors on the device, checked
        against the action space (a clear error names the space on a mismatch)."""
        out = {}
        for key in self.action_keys:
            if key not in actions:
                raise ValueError(f"actions lack {key!r}; the action space is {self.action_space}")
            sub = self.action_space[key] if isinstance(self.action_space, spaces.Dict) \
                else self.action_space
            value = np.asarray(actions[key]) if not isinstance(actions[key], torch.Tensor) \
                else actions[key]
            expected = (*batch_shape, *sub.shape)
            if tuple(value.shape) != expected:
                raise ValueError(f"action {key!r} has shape {tuple(value.shape)}, expected "
                                 f"{expected} for the space {sub}")
            out[key] = torch.as_tensor(value).to(self.device)
        return out

    @property
    def action_names(self) -> list[str] | None:
        """Names of the source env's actions, when it is one whose names are known (Crafter's
        for worldsim/Crafter-v0); None otherwise."""
        from worldsim.data.info import known_action_names

        return known_action_names(self.env_id)

    # ------------------------------------------------------------------ rollouts
    @property
    def achievements(self) -> tuple[str, ...]:
        """The achievements the reward model pays once per episode (empty: none)."""
        return () if self.reward_model is None else tuple(self.reward_model.config.achievements)

    def start(self, latents: torch.Tensor, actions: dict[str, Any] | None = None,
              generator: torch.Generator | None = None, unlocked: Any = None):
        """Begin B rollouts from K context latents (B, K, C, h, w) and the K-1 actions between
        them ({key: (B, K-1, ...)}; None for K = 1 or to condition on "no action"). unlocked:
        (B, A) the achievements each episode unlocked before (see `achievements`; None: none)."""
        B, K = latents.shape[:2]
        if actions is None:
            if K > 1:
                raise ValueError(f"{K} context frames need the {K - 1} actions between them")
            actions = {k: np.zeros((B, 0, *v.shape[2:]), v.dtype)
                       for k, v in self.start_actions.items()}
        actions = self.action_tensors(actions, (B, K - 1))
        state = self.dynamics.start(latents.to(self.device), actions, generator)
        if self.achievements:
            A = len(self.achievements)
            state.unlocked = (torch.zeros(B, A, device=self.device) if unlocked is None else
                              torch.as_tensor(np.asarray(unlocked), device=self.device).float())
            if tuple(state.unlocked.shape) != (B, A):
                raise ValueError(f"unlocked has shape {tuple(state.unlocked.shape)}, expected "
                                 f"{(B, A)} (rows x the reward model's achievements)")
        return state

    def step(self, state, actions: dict[str, Any], generator: torch.Generator | None = None,
             num_steps: int | None = None, sampler: str | None = None,
             reencode: bool | None = None, guidance: float | None = None,
             shown: Rendered | None = None, feedback: bool | None = None) -> StepOutput:
        """One imagined step for every row: actions {key: (B, ...)}. `num_steps`, `sampler`,
        `reencode`, `guidance` and `feedback` override the bundle's defaults (`self.num_steps`,
        `self.sampler`, `self.reencode`, `self.guidance`, `self.feedback`). With re-encoding
        the returned latents are those of the VAE round trip, the ones the rollout continues
        from. `shown`: what the rollout showed before the step; the step then renders its
        new frames too (`StepOutput.shown`), and with feedback continues from them."""
        actions = self.action_tensors(actions, (state.batch_size,))
        reencode = self.reencode if reencode is None else reencode
        # feedback is a kind of re-encoding: which frame the round trip passes through
        feedback = ((self.feedback if feedback is None else feedback) and reencode
                    and self.refiner is not None and shown is not None)
        decoded: list[torch.Tensor] = []
        rendered: list[Rendered] = []

        def reencoded(latents: torch.Tensor) -> torch.Tensor:
            # latents (B, 1, C, h, w). The round trip's decode is kept: it is the frame to
            # show (its encoding is what the rollout continues from), so rendering needs no
            # second decode.
            frames = self.decode(latents)
            decoded.append(frames[:, 0])
            if feedback:
                rendered.append(self.render(latents[:, 0], shown, frames[:, 0]))
                frames = rendered[0].frames[:, None]
            return self.encode(frames)

        with torch.no_grad():
            previous = state.last_latents  # the step rebinds it to the new frame
            out = self.dynamics.step(state, actions, generator,
                                     num_steps=num_steps or self.num_steps,
                                     sampler=sampler or self.sampler,
                                     project=reencoded if reencode else None,
                                     guidance=self.guidance if guidance is None else guidance)
            reward, termination_prob, once = out.reward, out.termination_prob, None
            if self.reward_model is not None:
                with frames_autocast(self.device):
                    pred = self.reward_model.predict(previous, actions, out.latents.float(),
                                                     unlocked=out.state.unlocked,
                                                     pay_rule=self.pay_once)
                reward, termination_prob = pred.reward, pred.termination_prob
                once = pred.achievement_reward
                out.state.reward_probs = pred.reward_probs
                if pred.unlocked is not None:
                    out.state.unlocked = pred.unlocked.float()
            decoded_next = decoded[0] if decoded else None
            if shown is not None and not rendered:
                rendered.append(self.render(out.latents, shown, decoded_next))
        return StepOutput(out.latents, reward, termination_prob, out.state.reward_probs,
                          out.state, once, decoded_next, rendered[0] if rendered else None)

    @property
    def reward_support(self) -> torch.Tensor:
        """The values `StepOutput.reward_probs` is a distribution over."""
        model = self.reward_model if self.reward_model is not None else self.dynamics.heads
        return model.support


def build_bundle(out: str | Path, *, vae_checkpoint: str | Path, dynamics_checkpoint: str | Path,
                 data: str | Path, num_contexts: int = DEFAULT_START_CONTEXTS,
                 context_frames: int = DEFAULT_CONTEXT_FRAMES, seed: int = 0,
                 metrics: dict | None = None, num_steps: int | None = None,
                 sampler: str | None = None, reward_checkpoint: str | Path | None = None,
                 refiner_checkpoint: str | Path | None = None, reencode: bool = True,
                 guidance: float = 1.0, feedback: bool = False,
                 refiner_blend: str = "soft", sigma_min: float | None = None,
                 pay_once: str = "expected") -> Path:
    """Assemble a bundle from a VAE checkpoint, a dynamics checkpoint (EMA weights), optionally
    a reward model checkpoint and a frame refiner checkpoint, and real start contexts drawn
    (seeded) from the validation episodes of the dataset `data`. `num_steps` / `sampler`: the
    bundle's default sampler settings (None: the dynamics model's); `reencode`: whether
    rollouts re-encode every sampled latent (`WorldModel.reencode`); `guidance`: the
    classifier-free guidance scale on the action (`WorldModel.guidance`); `feedback`: whether
    rollouts continue from the encoding of the refined frame (`WorldModel.feedback`; needs a
    refiner); `refiner_blend`: "soft" or "hard" (`FrameRefiner.hard_blend`); `sigma_min`: where
    the sampling schedule's ramp ends (None: the dynamics model's `sample_sigma_min`);
    `pay_once`: the rule a reward model that pays achievements once pays by
    (`reward_model.pay_once`). `metrics`: None takes those recorded in the dynamics
    checkpoint."""
    import tempfile

    from worldsim.data.store import EpisodeStore
    from worldsim.diffusion.sampling import get_sampler
    from worldsim.models.vae import VAE
    from worldsim.training.checkpoint import save_checkpoint, versions

    store = EpisodeStore(data)
    vae = VAE.from_checkpoint(vae_checkpoint)
    latent_space = vae.latent_fingerprint()  # what every part must have been trained on
    dynamics, dyn_meta = load_dynamics(dynamics_checkpoint, vae_fingerprint=latent_space)
    if dyn_meta["action_space"] != space_to_json(store.action_space):
        raise CheckpointError(f"{dynamics_checkpoint} was trained for another action space "
                              f"than the dataset {data} holds")
    diffusion = dynamics.config.diffusion
    sampling = {"num_steps": int(num_steps or diffusion.num_steps),
                "sampler": sampler or diffusion.sampler, "reencode": bool(reencode)}
    if guidance != 1.0:  # recorded only when on, so bundles without it read as before
        if guidance <= 0:
            raise ValueError(f"guidance must be positive, got {guidance}")
        if dynamics.config.action_dropout == 0:
            raise ValueError(f"guidance {guidance} needs a dynamics model trained with "
                             f"action_dropout > 0; {dynamics_checkpoint} was not (its "
                             "\"no action\" prediction is untrained)")
        sampling["guidance"] = float(guidance)
    if sigma_min is not None:  # recorded only when given, as guidance
        if not 0 < sigma_min < diffusion.sample_sigma_max:
            raise ValueError(f"sigma_min must lie in (0, {diffusion.sample_sigma_max:g}) (the "
                             f"dynamics model's first sampling level), got {sigma_min}")
        sampling["sigma_min"] = float(sigma_min)
    if feedback:  # recorded only when on, as guidance
        if refiner_checkpoint is None or not reencode:
            raise ValueError("feedback re-encodes the refiner's frames: it needs a refiner "
                             "(--refiner) and re-encoding")
        sampling["feedback"] = True
    if refiner_blend not in ("soft", "hard"):
        raise ValueError(f"refiner_blend must be 'soft' or 'hard', got {refiner_blend!r}")
    if refiner_blend == "hard":  # recorded only when not the default
        if refiner_checkpoint is None:
            raise ValueError("--refiner-blend hard needs a refiner (--refiner)")
        sampling["refiner_blend"] = "hard"
    if sampling["num_steps"] < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    get_sampler(sampling["sampler"])  # an unknown name raises, listing the choices
    parts = {}
    if reward_checkpoint is not None:
        from worldsim.models.reward_model import load_reward_model

        reward_model, reward_meta = load_reward_model(
            reward_checkpoint, action_space=dyn_meta["action_space"],
            vae_fingerprint=latent_space)
        parts["reward"] = _bundle_part(reward_meta, reward_model)
        achievements = tuple(reward_model.config.achievements)
    else:
        achievements = ()
    if pay_once not in PAY_ONCE_RULES:
        raise ValueError(f"pay_once must be one of {PAY_ONCE_RULES}, got {pay_once!r}")
    if pay_once != "expected" and not achievements:
        raise ValueError(f"pay_once {pay_once!r} needs a reward model that pays achievements "
                         "once (`worldsim train reward --achievements`)")
    if refiner_checkpoint is not None:
        from worldsim.models.refiner import load_refiner

        refiner, refiner_meta = load_refiner(refiner_checkpoint, vae_fingerprint=latent_space)
        parts["refiner"] = _bundle_part(refiner_meta, refiner)
    rng = np.random.default_rng(seed)
    names = [n for n in store.split("val") if store.length(n) + 1 >= context_frames]
    if not names:
        raise ValueError(f"{data} has no validation episode of {context_frames} frames or more")
    frames, actions, unlocked = [], {k: [] for k in store.action_keys}, []
    for i in range(num_contexts):
        name = names[i % len(names)] if i < len(names) else rng.choice(names)
        ep = store.load(name)
        # Half the contexts start at the episode's first frame, as a reset does in the game.
        start = 0 if i % 2 == 0 else int(rng.integers(0, ep.length + 2 - context_frames))
        frames.append(np.asarray(ep.frames[start:start + context_frames]))
        for k in actions:
            actions[k].append(np.asarray(ep.actions[k][start:start + context_frames - 1]))
        if achievements:  # what the episode unlocked before the context's last frame
            unlocked.append(_unlocked_before(store, name, start + context_frames - 1,
                                             achievements))
    contexts = {"frames": torch.from_numpy(np.stack(frames))}
    contexts.update({f"actions.{k}": torch.from_numpy(np.stack(v)) for k, v in actions.items()})
    if achievements:
        contexts["unlocked"] = torch.from_numpy(np.stack(unlocked))
    with tempfile.TemporaryDirectory() as tmp:
        vae.save(Path(tmp) / "vae", metrics=vae_metrics(vae_checkpoint))
        parts["dynamics"] = _bundle_part(dyn_meta, dynamics)
        for name, (part_config, part_tensors) in parts.items():
            save_checkpoint(Path(tmp) / name, part_config, part_tensors)
        config = {
            "format": BUNDLE_FORMAT,
            "env_id": store.env_id,
            "observation_space": space_to_json(store.observation_space),
            "action_space": space_to_json(store.action_space),
            "context_frames": context_frames,
            "sampling": sampling,
            # recorded only when not the default, so bundles without it read as before
            **({"pay_once": pay_once} if pay_once != "expected" else {}),
            # The path as given: a bundle is shared, and this machine's layout is not its own.
            "data": {"path": str(data), "episodes": len(store),
                     "frames": store.num_frames, "start_context_seed": seed},
            "vae_fingerprint": latent_space,
            "versions": versions(),
            "metrics": dyn_meta.get("metrics", {}) if metrics is None else metrics,
        }
        return save_checkpoint(out, config, {"start_contexts": contexts},
                               subdirectories={"vae": Path(tmp) / "vae",
                                               **{name: Path(tmp) / name for name in parts}})


def _unlocked_before(store, name: str, t: int, achievements: tuple[str, ...]) -> np.ndarray:
    """bool (A,): which of `achievements` episode `name` unlocked before frame t (from the
    dataset's achievement labels)."""
    from worldsim.data.achievements import achievement_names, load_labels, unlocked_before

    names = achievement_names(store) or []
    missing = [a for a in achievements if a not in names]
    if missing:
        raise CheckpointError(f"the reward model pays achievements once, but {store.root} has "
                              f"no labels for {missing}; run `worldsim data label-achievements "
                              f"{store.root}`")
    before = unlocked_before(load_labels(store, name), t)
    return before[[names.index(a) for a in achievements]]


def _bundle_part(meta: dict, model: torch.nn.Module) -> tuple[dict, dict]:
    """(config, tensors) of a trained part as a bundle stores it: the training checkpoint's
    config without its file list and optimiser state, and the (EMA) weights as "model"."""
    return ({k: v for k, v in meta.items() if k not in ("checkpoint", "state")},
            {"model": model.state_dict()})


def vae_metrics(path: str | Path) -> dict:
    """The metrics recorded in a VAE checkpoint's config.json (empty if none)."""
    from worldsim.training.checkpoint import read_config
    from worldsim.training.loop import resolve_checkpoint

    return dict(read_config(resolve_checkpoint(path)).get("metrics", {}))


@dataclass
class BundleConfig:
    """Assemble a simulator bundle from trained parts (`worldsim bundle`)."""

    vae: Path
    """VAE checkpoint or `worldsim train vae` run directory."""
    dynamics: Path
    """Dynamics checkpoint or `worldsim train dynamics` run directory (EMA weights)."""
    data: Path
    """The dataset the parts were trained on: the start contexts come from its validation
    episodes (the same seed gives the same contexts)."""
    out: Path
    """The bundle directory to write (replaced atomically if it exists)."""
    reward: Path | None = None
    """Reward model checkpoint or `worldsim train reward` run directory; without it the
    dynamics model's heads give reward and termination."""
    refiner: Path | None = None
    """Frame refiner checkpoint or `worldsim train refiner` run directory; without it frames
    are the VAE's plain decodes."""
    num_contexts: int = DEFAULT_START_CONTEXTS
    """Real start contexts shipped for env resets."""
    context_frames: int = DEFAULT_CONTEXT_FRAMES
    """Frames per start context."""
    seed: int = 0
    """Seed of the start-context draw."""
    sample_steps: int | None = None
    """Default sampler steps per generated frame (None: the dynamics model's)."""
    sampler: str | None = None
    """Default sampler (None: the dynamics model's)."""
    sample_sigma_min: float | None = None
    """Where the sampling schedule's ramp ends (None: the dynamics model's `sample_sigma_min`).
    It places the levels between sigma_max and 0: with 2 steps the one in the middle."""
    reencode: bool = True
    """Rollouts pass every sampled latent through the VAE (decode, encode) before continuing
    from it, which keeps long dreams from washing out (see docs/DESIGN-NOTES.md)."""
    guidance: float = 1.0
    """Classifier-free guidance scale on the action (1: none); needs a dynamics model trained
    with `--action-dropout`. Each sampler step then runs the network twice."""
    refiner_blend: Literal["soft", "hard"] = "soft"
    """How the refiner blends its copy sources and drawn frame at inference: the weighted mean
    it was trained with, or per pixel the source with the largest weight (sharper late in
    long dreams; docs/DESIGN-NOTES.md)."""
    feedback: bool = False
    """Rollouts that show frames continue from the encoding of the refiner's frame (which
    copies what did not change pixel for pixel) instead of the plain decode's; needs
    `--refiner`."""
    pay_once: Literal["expected", "best"] = "expected"
    """With a reward model that pays achievements once: pay each transition p times the share
    not yet unlocked ("expected"), or only the rise of the best unlock probability the
    episode has reached ("best": repeating an unsure press pays nothing more); see
    `worldsim.models.reward_model.pay_once`."""


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.training.loop import resolve_checkpoint

    cfg = tyro.cli(BundleConfig, args=argv)
    out = build_bundle(cfg.out, vae_checkpoint=resolve_checkpoint(cfg.vae),
                       dynamics_checkpoint=resolve_checkpoint(cfg.dynamics), data=cfg.data,
                       num_contexts=cfg.num_contexts, context_frames=cfg.context_frames,
                       seed=cfg.seed, num_steps=cfg.sample_steps, sampler=cfg.sampler,
                       reencode=cfg.reencode, guidance=cfg.guidance, feedback=cfg.feedback,
                       refiner_blend=cfg.refiner_blend, sigma_min=cfg.sample_sigma_min,
                       pay_once=cfg.pay_once,
                       reward_checkpoint=None if cfg.reward is None else resolve_checkpoint(cfg.reward),
                       refiner_checkpoint=None if cfg.refiner is None else resolve_checkpoint(cfg.refiner))
    print(f"bundle: {out}", flush=True)
