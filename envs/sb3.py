"""A Gymnasium vector env (e.g. `WorldModelVectorEnv`) as a stable-baselines3 `VecEnv`.

SB3 takes its own VecEnv interface and rejects gymnasium vector envs; wrapping the dream's
single env in SB3's DummyVecEnv would step the sub-envs one at a time and lose the batched
forward pass. This adapter keeps the batch:

    from envs.sb3 import SB3VecEnv
    venv = SB3VecEnv(gym.make_vec("worldsim/Dream-v0", num_envs=16, checkpoint=PATH,
                                  vectorization_mode="vector_entry_point", obs_mode="latent"))
    PPO("MlpPolicy", venv).learn(100_000)

Semantics: SB3 resets a sub-env as soon as its episode ends and reports the last observation
in `infos[i]["terminal_observation"]`, which is gymnasium's `AutoresetMode.SAME_STEP`; the
adapter therefore takes vector envs in that mode (WorldModelVectorEnv's) and refuses others.
`infos[i]["TimeLimit.truncated"]` is set as SB3's DummyVecEnv sets it. stable-baselines3 is
imported here only, so `import envs` never needs it (install: pip install stable-baselines3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices
except ImportError as e:  # pragma: no cover - stable-baselines3 is in the dev extra
    raise ImportError("envs.sb3 needs stable-baselines3: pip install stable-baselines3 "
                      "(or the worldsim[dev] extra)") from e


class SB3VecEnv(VecEnv):
    """`env`, a gymnasium VectorEnv with SAME_STEP autoreset and numpy outputs, through SB3's
    VecEnv API. Attribute and method calls reach the one batched env: `get_attr` returns its
    attribute once per requested index, `env_method` calls the method once and repeats the
    result, and `set_attr` only works on all sub-envs at once."""

    def __init__(self, env: VectorEnv):
        mode = env.metadata.get("autoreset_mode")
        if mode is None or AutoresetMode(mode) != AutoresetMode.SAME_STEP:
            raise ValueError(f"SB3VecEnv needs a vector env with autoreset_mode SAME_STEP (what "
                             f"SB3 expects); {type(env).__name__} has {mode!r}")
        if getattr(env, "tensor_mode", False):
            raise ValueError("SB3VecEnv needs numpy outputs; create the env with "
                             "tensor_mode=False")
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.metadata = {**self.metadata, "render_fps": env.metadata.get("render_fps", 30)}
        self._actions: np.ndarray | None = None

    # ------------------------------------------------------------------ stepping
    def reset(self):
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = [o for o in self._options if o]
        if options and (len(options) != self.num_envs
                        or not all(_same_options(o, options[0]) for o in options)):
            raise ValueError("a batched env takes one options dict for all sub-envs; "
                             "set_options() with a dict, not a list of different ones")
        obs, info = self.env.reset(seed=seeds, options=options[0] if options else None)
        self.reset_infos = self._split_info(info)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        dones = terminated | truncated
        infos = self._split_info(info)
        for i in range(self.num_envs):
            if dones[i]:
                # in SAME_STEP mode a reset sub-env's top-level info is its reset info
                self.reset_infos[i] = {k: v for k, v in infos[i].items() if k != "final_info"}
                infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, np.asarray(reward, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)

    # ------------------------------------------------------------------ attributes
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise ValueError(f"{type(self.env).__name__} is one batched env: set {attr_name!r} "
                             f"on all sub-envs at once (indices=None)")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None,
                   **method_kwargs) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        # a natively batched env has no per-sub-env gymnasium wrappers
        return [False for _ in self._get_indices(indices)]

    # ------------------------------------------------------------------ helpers
    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's batched info ({key: (N, ...)} with masks "_key") as SB3's list of
        per-env dicts; `final_obs` is handled by step_wait."""
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_") or key == "final_obs":
                continue
            mask = info.get(f"_{key}")
            for i in range(self.num_envs):
                if mask is not None and not mask[i]:
                    continue
                if isinstance(value, dict):
                    sub = self._split_info(value)[i]
                    if sub:
                        out[i][key] = sub
                else:
                    out[i][key] = value[i]
        return out



def _same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal reset options (values may be arrays, e.g. prompt frames, or dicts of them)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict) and isinstance(y, dict):
            if not _same_options(x, y):
                return False
        elif not np.array_equal(np.asarray(x), np.asarray(y)):
            return False
    return True
