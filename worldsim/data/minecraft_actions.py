"""The Minecraft action space that MineRL v0 demonstrations and OpenAI VPT recordings share,
the mappings from both recording formats into it, and VPT's camera quantisation.

The space is the human action space of MineRL 1.0, the environment OpenAI's VPT agents play
(Baker et al. 2022): one `Discrete(2)` per key or mouse button, plus ``camera``, a
`Box(-180, 180, (2,), float32)` of degrees turned during the tick, ``[pitch, yaw]``
(positive pitch looks down, positive yaw turns right). Keys, in the order Gymnasium's `Dict`
sorts them::

    ESC attack back camera drop forward hotbar.1 .. hotbar.9 inventory jump left pickItem
    right sneak sprint swapHands use

MineRL v0 demonstrations use a subset (forward back left right jump sneak sprint attack
camera, and for the Obtain tasks place / equip / craft / nearbyCraft / nearbySmelt, which are
macro actions with no single key; only `place` has one: placing a block is the `use` button).
The space works without the `minerl` package; the dream env exposes exactly this space
(DESIGN decision 8).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

CAMERA_KEY = "camera"
CAMERA_LIMIT_DEG = 180.0  # MineRL's camera Box bounds, degrees per tick
BUTTONS: tuple[str, ...] = (
    "ESC", "attack", "back", "drop", "forward",
    *(f"hotbar.{i}" for i in range(1, 10)),
    "inventory", "jump", "left", "pickItem", "right", "sneak", "sprint", "swapHands", "use",
)

# VPT contractor recordings (openai/Video-Pre-Training, run_inverse_dynamics_model.py):
# Minecraft key codes held during the tick -> button.
VPT_KEYBOARD: dict[str, str] = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
VPT_MOUSE_BUTTONS: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
# Degrees of camera turn per unit of recorded mouse movement: 360 / 2400, the sensitivity
# constant of MineRL's Java code, as VPT's loader uses it (CAMERA_SCALER there).
VPT_DEGREES_PER_MOUSE_UNIT = 360.0 / 2400.0

# MineRL v0 `rendered.npz` action keys (without the "action$" prefix) that are buttons here.
MINERL_V0_BUTTONS: tuple[str, ...] = (
    "forward", "back", "left", "right", "jump", "sneak", "sprint", "attack")
# MineRL v0 enum actions whose no-op value is the string "none".
MINERL_V0_ENUM_NOOP = "none"


def minecraft_action_space() -> spaces.Dict:
    """The MineRL 1.0 / VPT human action space: 23 buttons as Discrete(2) and the camera."""
    return spaces.Dict({
        **{name: spaces.Discrete(2) for name in BUTTONS},
        CAMERA_KEY: spaces.Box(-CAMERA_LIMIT_DEG, CAMERA_LIMIT_DEG, shape=(2,), dtype=np.float32),
    })


def noop_actions(length: int) -> dict[str, np.ndarray]:
    """`length` no-op actions, stacked as the episode store keeps them:
    {button: int64 (length,)} and {"camera": float32 (length, 2)}."""
    out = {name: np.zeros(length, np.int64) for name in BUTTONS}
    out[CAMERA_KEY] = np.zeros((length, 2), np.float32)
    return out


# ---------------------------------------------------------------------- camera quantisation
@dataclass(frozen=True)
class CameraQuantizer:
    """Mu-law camera bins as in VPT (Baker et al. 2022, appendix; `CameraQuantizer` in
    openai/Video-Pre-Training lib/actions.py): clip degrees to [-maxval, maxval], compress
    with mu-law so small turns get fine bins and large turns coarse ones, then cut the
    compressed range into uniform bins of width `binsize`. The defaults are the VPT
    foundation models' settings: 11 bins per axis, bin 5 is "no turn"."""

    maxval: float = 10.0
    """Largest turn per tick that gets its own bin, in degrees; larger turns are clipped."""
    binsize: float = 2.0
    """Average bin width in degrees (the width in the mu-law-compressed range)."""
    mu: float = 10.0
    """Curvature of the mu-law; larger puts more bins near zero."""

    @property
    def n_bins(self) -> int:
        """Bins per axis."""
        return int(round(2 * self.maxval / self.binsize)) + 1

    @property
    def zero_bin(self) -> int:
        """The bin of a turn of 0 degrees."""
        return int(round(self.maxval / self.binsize))

    def to_bins(self, degrees: np.ndarray) -> np.ndarray:
        """Degrees (..., 2) or any shape -> int64 bin indices in [0, n_bins) of the same shape."""
        x = np.clip(np.asarray(degrees, np.float64), -self.maxval, self.maxval) / self.maxval
        # mu-law: F(x) = sgn(x) ln(1 + mu|x|) / ln(1 + mu), maps [-1, 1] onto [-1, 1]
        encoded = np.sign(x) * np.log1p(self.mu * np.abs(x)) / np.log1p(self.mu) * self.maxval
        # np.round rounds halves to even, exactly as VPT's quantiser does
        return np.round((encoded + self.maxval) / self.binsize).astype(np.int64)

    def to_degrees(self, bins: np.ndarray) -> np.ndarray:
        """Bin indices -> float32 degrees at each bin's centre (the inverse mu-law)."""
        bins = np.asarray(bins)
        if bins.size and (bins.min() < 0 or bins.max() >= self.n_bins):
            raise ValueError(f"camera bins must lie in [0, {self.n_bins}), got "
                             f"{bins.min()}..{bins.max()}")
        y = (bins * self.binsize - self.maxval) / self.maxval
        # inverse mu-law: F^-1(y) = sgn(y) ((1 + mu)^|y| - 1) / mu
        decoded = np.sign(y) * ((1.0 + self.mu) ** np.abs(y) - 1.0) / self.mu * self.maxval
        return decoded.astype(np.float32)


VPT_CAMERA = CameraQuantizer()


def camera_to_bins(degrees: np.ndarray, quantizer: CameraQuantizer = VPT_CAMERA) -> np.ndarray:
    """Camera turns in degrees -> VPT mu-law bin indices (int64, same shape)."""
    return quantizer.to_bins(degrees)


def bins_to_camera(bins: np.ndarray, quantizer: CameraQuantizer = VPT_CAMERA) -> np.ndarray:
    """VPT mu-law bin indices -> camera turns in degrees (float32, same shape)."""
    return quantizer.to_degrees(bins)


# ---------------------------------------------------------------------- VPT recordings
def vpt_actions(ticks: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Map VPT contractor ticks (the parsed lines of a `.jsonl`) to stacked actions.

    Follows the reference loader (openai/Video-Pre-Training data_loader.py and
    run_inverse_dynamics_model.py), including its two repairs of the recorder's quirks:
    an attack button held down from the first tick stays ignored until it is pressed anew,
    and a change of the selected hotbar slot (scroll wheel, which the recorder does not log)
    becomes a press of that slot's key. Unlike VPT's behavioural cloning, ticks with no input
    are kept: the world moves on without the player, and a world model must learn that too.

    Returns ({key: (T, ...)}, {unmapped key code: ticks held}).
    Raises ValueError naming the tick for a line without the expected fields.
    """
    T = len(ticks)
    out = noop_actions(T)
    unmapped: Counter[str] = Counter()
    attack_stuck = False
    last_hotbar = 0
    for t, tick in enumerate(ticks):
        try:
            mouse, keys = tick["mouse"], tick["keyboard"]["keys"]
            buttons = list(mouse["buttons"])
            new_buttons = list(mouse.get("newButtons", []))
            dx, dy = float(mouse["dx"]), float(mouse["dy"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"tick {t}: missing or malformed field {e}") from e
        if t == 0:
            attack_stuck = new_buttons == [0]
        elif attack_stuck and 0 in new_buttons:
            attack_stuck = False
        if attack_stuck:
            buttons = [b for b in buttons if b != 0]
        for key in keys:
            if key in VPT_KEYBOARD:
                out[VPT_KEYBOARD[key]][t] = 1
            else:
                unmapped[key] += 1
        for button in buttons:
            if button in VPT_MOUSE_BUTTONS:
                out[VPT_MOUSE_BUTTONS[button]][t] = 1
            else:
                unmapped[f"mouse.button.{button}"] += 1
        hotbar = tick.get("hotbar", last_hotbar)
        if hotbar != last_hotbar and 0 <= hotbar < 9:
            out[f"hotbar.{hotbar + 1}"][t] = 1
        last_hotbar = hotbar
        # mouse dy moves the view down, dx to the right: camera is [pitch, yaw]
        out[CAMERA_KEY][t] = (dy * VPT_DEGREES_PER_MOUSE_UNIT, dx * VPT_DEGREES_PER_MOUSE_UNIT)
    np.clip(out[CAMERA_KEY], -CAMERA_LIMIT_DEG, CAMERA_LIMIT_DEG, out=out[CAMERA_KEY])
    return out, dict(unmapped)


# ---------------------------------------------------------------------- MineRL v0
def minerl_v0_actions(arrays: dict[str, np.ndarray],
                      length: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Map MineRL v0 action arrays ({name without "action$": (T, ...)}) to stacked actions.

    Buttons keep their names, `camera` is already [pitch, yaw] in degrees, `place` (any item
    but "none") is the use button. The macro actions craft / nearbyCraft / nearbySmelt / equip
    have no key and are dropped; they are counted in the returned {name: non-no-op ticks}.
    Raises ValueError naming the key for arrays of the wrong length or shape.
    """
    out = noop_actions(length)
    unmapped: dict[str, int] = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if len(values) != length:
            raise ValueError(f"action${name} has {len(values)} entries, the reward has {length}")
        if name in MINERL_V0_BUTTONS:
            out[name] = (values.reshape(length) != 0).astype(np.int64)
        elif name == CAMERA_KEY:
            if values.shape != (length, 2):
                raise ValueError(f"action$camera has shape {values.shape}, expected ({length}, 2)")
            out[CAMERA_KEY] = np.clip(values.astype(np.float32), -CAMERA_LIMIT_DEG,
                                      CAMERA_LIMIT_DEG)
        elif name == "vector":
            raise ValueError("action$vector: obfuscated (VectorObf) demonstrations encode their "
                             "actions as an opaque vector and cannot be mapped to buttons")
        else:
            active = _non_noop(values)
            if name == "place":
                out["use"] = np.maximum(out["use"], active.astype(np.int64))
            elif active.any():
                unmapped[name] = int(active.sum())
    return out, unmapped


def _non_noop(values: np.ndarray) -> np.ndarray:
    """Which entries of a MineRL v0 action array are not its no-op ("none" or 0)."""
    if values.dtype.kind in "US":
        return values.astype(str) != MINERL_V0_ENUM_NOOP
    return values.reshape(len(values), -1).any(axis=1)
