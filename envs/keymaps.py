"""Keyboard and mouse to actions: what a person presses in `worldsim play`, turned into an
element of the env's Gymnasium action space.

The play loop (envs/play.py) collects one tick's input into an `InputState` and asks a
`Keymap` for the action. Keymaps never touch the pygame event queue, so they are plain
functions of their input and are tested without a window.

    crafter_keymap(action_names)     Crafter, the keys of crafter's own GUI (crafter/run_gui.py)
    MouseLookKeymap(dict_space)      MineRL / VPT-style Dict spaces: WASD, mouse look, clicks
    CombinationKeymap(keys_to_action) an env's `get_keys_to_action()` (Gymnasium's play convention)
    number_keymap(discrete_space)    any Discrete space: 0-9, then a-z
    keymap_for(env)                  picks one of the above for an env
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame-ce prints a banner otherwise
import pygame  # noqa: E402


@dataclass(frozen=True)
class InputState:
    """What the player did during one tick of the play loop.

    pressed:      keys that went down during the tick, in order (pygame key codes); a tap
                  shorter than one frame shows here even if the key is up again
    held:         keys down at the end of the tick
    mouse_motion: (dx, dy) in screen pixels moved during the tick
    clicked:      mouse buttons that went down during the tick (1 left, 2 middle, 3 right)
    buttons:      mouse buttons down at the end of the tick
    """

    pressed: tuple[int, ...] = ()
    held: frozenset[int] = frozenset()
    mouse_motion: tuple[float, float] = (0.0, 0.0)
    clicked: tuple[int, ...] = ()
    buttons: frozenset[int] = frozenset()


class Keymap(Protocol):
    """Turns one tick of input into an action of one action space."""

    uses_mouse: bool
    """True if mouse motion is part of the action (the loop then grabs the pointer)."""
    noop: Any
    """The action taken when the player does nothing."""

    def action(self, state: InputState) -> Any | None:
        """The action for this tick, or None if no bound key or button is in use."""

    def describe(self, action: Any) -> str:
        """A short human-readable name of an action, for the HUD."""

    def help(self) -> list[tuple[str, str]]:
        """(keys, meaning) lines for the help overlay."""

    def bound_keys(self) -> set[int]:
        """Every keyboard key this keymap reads (the loop checks they do not clash with its
        own control keys)."""


def key_label(key: int) -> str:
    return pygame.key.name(key) or f"key {key}"


# ---------------------------------------------------------------------------- Discrete


class DiscreteKeymap:
    """One key, one action of a Discrete space.

    The rule of crafter's GUI: a key that went down during the tick wins (so quick taps are
    never lost between frames), else the first held key in binding order, else nothing.
    Bindings map keys to indices 0..n-1 into `action_names`; the action returned is
    `start + index` (Gymnasium's `Discrete(n, start=...)`).
    """

    uses_mouse = False

    def __init__(self, bindings: dict[int, int], action_names: list[str], noop: int = 0,
                 start: int = 0):
        for key, index in bindings.items():
            if not 0 <= index < len(action_names):
                raise ValueError(f"key {key_label(key)!r} is bound to action {index}, outside "
                                 f"the {len(action_names)} actions {action_names}")
        self.bindings = dict(bindings)
        self.action_names = list(action_names)
        self.start = start
        self.noop_index = noop
        self.noop = start + noop

    def action(self, state: InputState) -> int | None:
        for key in state.pressed:
            if key in self.bindings:
                return self.start + self.bindings[key]
        for key, index in self.bindings.items():
            if key in state.held:
                return self.start + index
        return None

    def describe(self, action: Any) -> str:
        index = int(action) - self.start
        return self.action_names[index] if 0 <= index < len(self.action_names) else str(action)

    def help(self) -> list[tuple[str, str]]:
        by_action: dict[int, list[str]] = {}
        for key, index in self.bindings.items():
            by_action.setdefault(index, []).append(key_label(key))
        lines = [(", ".join(keys), self.action_names[i]) for i, keys in by_action.items()]
        lines.append(("(nothing)", self.action_names[self.noop_index]))
        return lines

    def bound_keys(self) -> set[int]:
        return set(self.bindings)


# Crafter's own GUI (crafter/run_gui.py, crafter 1.8.3): key -> action name.
CRAFTER_KEYS: dict[int, str] = {
    pygame.K_a: "move_left",
    pygame.K_d: "move_right",
    pygame.K_w: "move_up",
    pygame.K_s: "move_down",
    pygame.K_SPACE: "do",
    pygame.K_TAB: "sleep",
    pygame.K_r: "place_stone",
    pygame.K_t: "place_table",
    pygame.K_f: "place_furnace",
    pygame.K_p: "place_plant",
    pygame.K_1: "make_wood_pickaxe",
    pygame.K_2: "make_stone_pickaxe",
    pygame.K_3: "make_iron_pickaxe",
    pygame.K_4: "make_wood_sword",
    pygame.K_5: "make_stone_sword",
    pygame.K_6: "make_iron_sword",
}


def crafter_keymap(action_names: list[str]) -> DiscreteKeymap:
    """Crafter's keys for an env whose `action_names` are Crafter's (any order)."""
    missing = sorted({*CRAFTER_KEYS.values(), "noop"} - set(action_names))
    if missing:
        raise ValueError(f"not Crafter's actions: {missing} missing from {action_names}")
    index = {name: i for i, name in enumerate(action_names)}
    return DiscreteKeymap({k: index[n] for k, n in CRAFTER_KEYS.items()}, action_names,
                          noop=index["noop"])


# Digits first (action 0 on key 0), then letters: 36 actions reachable by keyboard.
NUMBER_KEYS: list[int] = [getattr(pygame, f"K_{c}") for c in "0123456789abcdefghijklmnopqrstuvwxyz"]


def number_keymap(space: spaces.Discrete, action_names: list[str] | None = None,
                  skip: set[int] = frozenset()) -> DiscreteKeymap:
    """The generic fallback for a Discrete space: key 0 takes action `start`, key 1 the next,
    ..., then a, b, c... `skip` leaves out keys the loop needs for itself. The first action
    is the noop, as in Gymnasium's `play`."""
    n = int(space.n)
    names = list(action_names) if action_names else [str(int(space.start) + i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} action names for a Discrete({n}) space")
    keys = [k for k in NUMBER_KEYS if k not in skip]
    if n > len(keys):
        raise ValueError(f"Discrete({n}) has more actions than the {len(keys)} number and "
                         "letter keys; pass a keymap for this env")
    return DiscreteKeymap({keys[i]: i for i in range(n)}, names, noop=0, start=int(space.start))


# ---------------------------------------------------------------------------- combinations


class CombinationKeymap:
    """Gymnasium's play convention: {tuple of keys: action}, as returned by an env's
    `get_keys_to_action()`. Keys may be pygame codes or one-character strings. The binding
    with the most keys among those all down wins (so "w"+"d" beats "w")."""

    uses_mouse = False

    def __init__(self, keys_to_action: dict[tuple, Any], noop: Any = 0):
        self.bindings: list[tuple[frozenset[int], Any]] = []
        for keys, action in keys_to_action.items():
            keys = (keys,) if isinstance(keys, (int, str)) else keys
            codes = frozenset(ord(k) if isinstance(k, str) else int(k)
                              for key in keys for k in (key if isinstance(key, str) else (key,)))
            self.bindings.append((codes, action))
        self.bindings.sort(key=lambda b: -len(b[0]))
        self.noop = noop

    def action(self, state: InputState) -> Any | None:
        down = state.held | set(state.pressed)
        for codes, action in self.bindings:
            if codes and codes <= down:
                return action
        return None

    def describe(self, action: Any) -> str:
        for codes, bound in self.bindings:
            if np.array_equal(np.asarray(bound), np.asarray(action)):
                return "+".join(sorted(key_label(k) for k in codes)) or str(action)
        return str(action)

    def help(self) -> list[tuple[str, str]]:
        return [("+".join(sorted(key_label(k) for k in codes)), str(action))
                for codes, action in self.bindings]

    def bound_keys(self) -> set[int]:
        return set().union(*(codes for codes, _ in self.bindings)) if self.bindings else set()


# ---------------------------------------------------------------------------- MineRL


# Minecraft's default controls, as OpenAI's VPT maps recorded keyboard events to MineRL
# buttons (Video PreTraining, `KEYBOARD_BUTTON_MAPPING`). Escape is left to the play loop.
MINERL_KEYS: dict[int, str] = {
    pygame.K_w: "forward",
    pygame.K_s: "back",
    pygame.K_a: "left",
    pygame.K_d: "right",
    pygame.K_SPACE: "jump",
    pygame.K_LSHIFT: "sneak",
    pygame.K_LCTRL: "sprint",
    pygame.K_e: "inventory",
    pygame.K_q: "drop",
    pygame.K_f: "swapHands",
    **{getattr(pygame, f"K_{i}"): f"hotbar.{i}" for i in range(1, 10)},
}
# pygame mouse buttons (1 left, 2 middle, 3 right) -> MineRL buttons, as in VPT.
MINERL_MOUSE: dict[int, str] = {1: "attack", 2: "pickItem", 3: "use"}
# VPT's `CAMERA_SCALER`: 360 degrees per 2400 mouse pixels.
CAMERA_DEGREES_PER_PIXEL = 360.0 / 2400.0


def _off(space: spaces.Space) -> Any:
    """The "not pressed" value of a sub-space (the lowest element)."""
    if isinstance(space, spaces.Discrete):
        return int(space.start)
    if isinstance(space, spaces.MultiDiscrete):
        return np.asarray(space.start, dtype=space.dtype).copy()
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(space.shape, dtype=space.dtype)
    if isinstance(space, spaces.Box):
        return np.clip(np.zeros(space.shape, dtype=space.dtype), space.low, space.high)
    raise TypeError(f"unsupported sub-space {space}")


def _on(space: spaces.Space) -> Any:
    """The "pressed" value of a button sub-space."""
    if isinstance(space, spaces.Discrete):
        return int(space.start) + 1
    if isinstance(space, spaces.MultiBinary):
        return np.ones(space.shape, dtype=space.dtype)
    if isinstance(space, spaces.Box):
        return np.clip(np.ones(space.shape, dtype=space.dtype), space.low, space.high)
    raise TypeError(f"unsupported button sub-space {space}")


def _is_button(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Discrete):
        return space.n == 2
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape)) == 1
    return isinstance(space, spaces.Box) and int(np.prod(space.shape)) == 1


@dataclass
class MouseLookKeymap:
    """A MineRL-style Dict action space: keyboard buttons (WASD, space jump, shift sneak,
    ctrl sprint, 1-9 hotbar, e inventory, q drop, f swap hands), mouse look for "camera"
    ([pitch, yaw] in degrees: moving the mouse down looks down, right turns right) and
    mouse buttons (left attack, right use, middle pick item).

    Buttons and camera are found by name in the space; other keys (e.g. MineRL v0's
    "craft"/"place" enums) stay at their lowest value and are listed as unbound in the help.
    Buttons are held actions, as in Minecraft: an action is on for every tick its key is down.
    """

    space: spaces.Dict
    degrees_per_pixel: float = CAMERA_DEGREES_PER_PIXEL
    camera_key: str = "camera"
    uses_mouse: bool = field(init=False, default=True)

    def __post_init__(self):
        if not isinstance(self.space, spaces.Dict):
            raise TypeError(f"MouseLookKeymap needs a Dict action space, got {self.space}")
        self.key_buttons = {k: b for k, b in MINERL_KEYS.items() if b in self.space.spaces}
        self.mouse_buttons = {m: b for m, b in MINERL_MOUSE.items() if b in self.space.spaces}
        for name in {*self.key_buttons.values(), *self.mouse_buttons.values()}:
            if not _is_button(self.space[name]):
                raise ValueError(f"action {name!r} is {self.space[name]}, expected a button "
                                 "(Discrete(2), MultiBinary(1) or a one-element Box)")
        camera = self.space.spaces.get(self.camera_key)
        if camera is not None and not (isinstance(camera, spaces.Box) and camera.shape == (2,)):
            raise ValueError(f"action {self.camera_key!r} is {camera}; mouse look needs a "
                             "Box of shape (2,) in degrees [pitch, yaw]")
        self.has_camera = camera is not None
        if not (self.key_buttons or self.mouse_buttons or self.has_camera):
            raise ValueError(f"no MineRL buttons or camera in the action space {self.space}")
        self.noop = {k: _off(s) for k, s in self.space.spaces.items()}

    def action(self, state: InputState) -> dict[str, Any] | None:
        down = state.held | set(state.pressed)
        clicks = state.buttons | set(state.clicked)
        on = {b for k, b in self.key_buttons.items() if k in down}
        on |= {b for m, b in self.mouse_buttons.items() if m in clicks}
        dx, dy = state.mouse_motion
        if not on and not (self.has_camera and (dx or dy)):
            return None
        action = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.noop.items()}
        for name in on:
            action[name] = _on(self.space[name])
        if self.has_camera:
            camera = self.space[self.camera_key]
            look = np.array([dy, dx], dtype=np.float64) * self.degrees_per_pixel
            action[self.camera_key] = np.clip(look, camera.low, camera.high).astype(camera.dtype)
        return action

    def describe(self, action: Any) -> str:
        parts = [k for k, v in action.items()
                 if k != self.camera_key and k in self.space.spaces
                 and _is_button(self.space[k]) and np.any(np.asarray(v) != np.asarray(_off(self.space[k])))]
        if self.has_camera:
            pitch, yaw = np.asarray(action[self.camera_key], dtype=float)
            if pitch or yaw:
                parts.append(f"look {pitch:+.1f},{yaw:+.1f}")
        return "+".join(parts) or "noop"

    def help(self) -> list[tuple[str, str]]:
        lines = [(key_label(k), b) for k, b in self.key_buttons.items()
                 if not b.startswith("hotbar.")]
        hotbar = [b.split(".")[1] for b in self.key_buttons.values() if b.startswith("hotbar.")]
        if hotbar:  # nine keys on one line
            lines.append((f"{hotbar[0]}-{hotbar[-1]}" if len(hotbar) > 1 else hotbar[0],
                          f"hotbar.{hotbar[0]}-{hotbar[-1]}" if len(hotbar) > 1
                          else f"hotbar.{hotbar[0]}"))
        names = {1: "left click", 2: "middle click", 3: "right click"}
        lines += [(names[m], b) for m, b in self.mouse_buttons.items()]
        if self.has_camera:
            lines.append(("mouse", f"{self.camera_key} (look)"))
        bound = {*self.key_buttons.values(), *self.mouse_buttons.values(), self.camera_key}
        unbound = [k for k in self.space.spaces if k not in bound]
        if unbound:
            lines.append(("(unbound)", ", ".join(unbound)))
        return lines

    def bound_keys(self) -> set[int]:
        return set(self.key_buttons)


# ---------------------------------------------------------------------------- choice


def keymap_for(env: gym.Env, reserved: set[int] = frozenset()) -> Keymap:
    """The keymap for an env: Crafter's keys if its `action_names` are Crafter's, mouse look
    for a MineRL-style Dict space, the env's own `get_keys_to_action()` if it has one, else
    number keys for a Discrete space. `reserved` are keys the caller uses for itself."""
    space = env.action_space
    names = _wrapper_attr(env, "action_names")
    if isinstance(space, spaces.Discrete) and names is not None and "noop" in names \
            and set(CRAFTER_KEYS.values()) <= set(names):
        return crafter_keymap(list(names))
    if isinstance(space, spaces.Dict):
        return MouseLookKeymap(space)
    keys_to_action = _wrapper_attr(env, "get_keys_to_action")
    if keys_to_action is not None:
        return CombinationKeymap(keys_to_action(), noop=_off(space))
    if isinstance(space, spaces.Discrete):
        return number_keymap(space, list(names) if names else None, skip=set(reserved))
    raise ValueError(f"no keymap for the action space {space} of {env}: play supports Discrete "
                     "spaces, MineRL-style Dict spaces and envs with get_keys_to_action()")


def _wrapper_attr(env: gym.Env, name: str) -> Any | None:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None
