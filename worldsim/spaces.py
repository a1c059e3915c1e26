"""Gymnasium spaces to and from JSON, so datasets and checkpoints describe their action and
observation spaces in plain text (no pickle) and the dream env can rebuild the exact space."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from gymnasium import spaces


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A JSON-serialisable description of `space` (Discrete, MultiDiscrete, MultiBinary, Box,
    Dict and Tuple; nested freely)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        n = space.n if isinstance(space.n, int) else list(space.n)
        return {"type": "MultiBinary", "n": n}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": _bounds_to_json(space.low),
            "high": _bounds_to_json(space.high),
            "shape": list(space.shape),
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise TypeError(f"cannot serialise a {type(space).__name__}; supported: Discrete, "
                    "MultiDiscrete, MultiBinary, Box, Dict, Tuple")


def _bounds_to_json(bound: np.ndarray) -> Any:
    """A Box bound as one number when it is the same everywhere (a 64x64x3 image's 0 and
    255), else as nested lists."""
    if bound.size and (bound == bound.flat[0]).all():
        return bound.flat[0].item()
    return bound.tolist()


def space_from_json(data: dict[str, Any] | str) -> spaces.Space:
    """Rebuild the space written by `space_to_json` (a dict or its JSON text)."""
    if isinstance(data, str):
        data = json.loads(data)
    kind = data.get("type")
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.array(data["nvec"]), start=np.array(data["start"]))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "Box":
        dtype, shape = np.dtype(data["dtype"]), tuple(data["shape"])
        # a single number stands for a bound that is the same everywhere
        low, high = (np.broadcast_to(np.array(data[k], dtype=dtype), shape).copy()
                     for k in ("low", "high"))
        return spaces.Box(low, high, shape=shape, dtype=dtype)
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Tuple":
        return spaces.Tuple([space_from_json(v) for v in data["spaces"]])
    raise ValueError(f"unknown space description {data!r}")


def action_keys(space: spaces.Space) -> list[str]:
    """The names under which a space's actions are stored: the keys of a Dict space, else
    the single key "action"."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            if isinstance(sub, (spaces.Dict, spaces.Tuple)):
                raise TypeError(f"nested action space under {key!r} is not supported")
        return list(space.spaces)
    return ["action"]


def stack_actions(space: spaces.Space, actions: list[Any]) -> dict[str, np.ndarray]:
    """Stack a list of actions from `space` into arrays keyed by `action_keys(space)`,
    each of shape (T, *sub_space.shape)."""
    if isinstance(space, spaces.Dict):
        return {
            key: np.asarray([a[key] for a in actions], dtype=sub.dtype).reshape(
                (len(actions), *sub.shape))
            for key, sub in space.spaces.items()
        }
    return {"action": np.asarray(actions, dtype=space.dtype).reshape((len(actions), *space.shape))}


def unstack_action(space: spaces.Space, arrays: dict[str, np.ndarray], index: int) -> Any:
    """The `index`-th action of stacked arrays, as an element of `space`."""
    if isinstance(space, spaces.Dict):
        return {key: arrays[key][index] for key in space.spaces}
    value = arrays["action"][index]
    if isinstance(space, spaces.Discrete):
        return int(value)
    return value
