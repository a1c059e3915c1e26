"""The real Crafter game (Hafner, 2021) as a Gymnasium environment: `worldsim/Crafter-v0`.

The `crafter` package (1.8.3) is wrapped rather than used directly because, as released, it
is not a Gymnasium env (old 4-tuple step, its own space types) and it is not reproducible:
see `_ReproducibleCrafter`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.window import HumanWindow

# The largest world seed crafter's own generator accepts (it reduces seeds modulo this).
_MAX_WORLD_SEED = 2**31 - 1
# Steps per crafter day (its Env._update_time: daylight = 1 - |cos(pi (step / 300 + 0.3))|^3).
DAY_LENGTH = 300


def daylight(step: np.ndarray | int) -> np.ndarray:
    """Crafter's daylight at game step `step` (crafter.Env._update_time): 1 at noon, 0 at
    its darkest (step 210, 510, ...)."""
    progress = (np.asarray(step) / DAY_LENGTH) % 1 + 0.3
    return 1 - np.abs(np.cos(np.pi * progress)) ** 3


def _as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An image size given as one int (square) or (height, width)."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _make_reproducible_crafter(**kwargs):
    """Build a `crafter.Env` whose simulation depends only on its seed and the actions.

    crafter 1.8.3 keeps the objects of each world chunk in a `set`, which iterates in an order
    given by the objects' memory addresses. Every 10 steps `Env._balance_object` lists a
    chunk's creatures from that set and despawns `creatures[random.randint(n)]`, so which
    creature disappears, and every random draw after it, changes from run to run; frames of
    two runs with the same seed and actions diverge after tens to hundreds of steps. Sorting
    the creatures by position (unique per object: the world holds one object per cell) makes
    the choice, and so the whole game, a function of the seed and the actions.
    """
    import crafter

    class _ReproducibleCrafter(crafter.Env):
        def _balance_object(self, chunk, objs, *args, **kw):
            ordered = sorted(objs, key=lambda obj: (int(obj.pos[0]), int(obj.pos[1])))
            return super()._balance_object(chunk, ordered, *args, **kw)

    return _ReproducibleCrafter(**kwargs)


class CrafterEnv(gym.Env):
    """Crafter, a 2D Minecraft-like survival game, through the Gymnasium API.

    ## Description
    The player explores a procedurally generated 64x64-tile world, collects resources, crafts
    tools, eats, drinks and sleeps, and fights zombies and skeletons. 22 achievements (collect
    wood, place a table, make a pickaxe, ... collect a diamond) measure progress.

    ## Action Space
    `Discrete(17)`; `action_names[a]` is the name of action `a`:

    | a | name          | a  | name               |
    |---|---------------|----|--------------------|
    | 0 | noop          | 9  | place_furnace      |
    | 1 | move_left     | 10 | place_plant        |
    | 2 | move_right    | 11 | make_wood_pickaxe  |
    | 3 | move_up       | 12 | make_stone_pickaxe |
    | 4 | move_down     | 13 | make_iron_pickaxe  |
    | 5 | do            | 14 | make_wood_sword    |
    | 6 | sleep         | 15 | make_stone_sword   |
    | 7 | place_stone   | 16 | make_iron_sword    |
    | 8 | place_table   |    |                    |

    ## Observation Space
    `Box(0, 255, (H, W, 3), uint8)`: the local 9x7-tile view around the player above a strip
    showing the inventory. `size` (default 64, or `(H, W)`) sets H and W.

    ## Rewards
    +1 the first time in an episode each achievement is unlocked, and +0.1 / -0.1 for every
    point of health gained / lost (crafter's reward). Returned as a Python `float`.

    ## Starting State
    A new world generated from a seed drawn from `self.np_random`; the player in the middle.

    ## Episode End
    `terminated` is True when the player dies (health reaches 0). The env itself never
    truncates: `gymnasium.make("worldsim/Crafter-v0")` adds a `TimeLimit` of 10,000 steps
    (crafter's own episode length), which sets `truncated`.

    ## Info
    `inventory` (dict name -> count), `achievements` (dict name -> count this episode),
    `player_pos` (int array (2,)), `discount` (0.0 on death), and on reset `world_seed`.
    Every call returns fresh objects.

    ## Arguments
    `size`: frame size, int or (height, width). `render_mode`: None, "rgb_array" (the
    observation) or "human" (a pygame window of `window_size` pixels). `area`, `view`: crafter's
    world size and view in tiles. `reward`: False makes every reward 0.0.
    `start_clock`: crafter's step counter at reset, which sets the time of day (a day lasts
    `DAY_LENGTH` = 300 steps and is darkest at step 210, 510, ...): 0 as in crafter, another
    int, or "random" for one drawn uniformly over a day at every reset (from the env's RNG,
    after the world seed, so the worlds stay those of the same seed at 0). Only the clock
    moves: the player starts as always. Crafter episodes all start in the morning and an agent
    that plays at random seldom lives to the next one (its median episode in the shipped data
    lasts 178 steps), so its recordings hold dusk and night but hardly a dawn; a random clock
    records every hour of the day under the same rules. The reset info holds `start_clock`.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(self, size: int | tuple[int, int] = 64, render_mode: str | None = None,
                 area: tuple[int, int] = (64, 64), view: tuple[int, int] = (9, 9),
                 reward: bool = True, window_size: int | tuple[int, int] = 512,
                 start_clock: int | str = 0):
        if not (start_clock == "random" or isinstance(start_clock, int | np.integer)
                and not isinstance(start_clock, bool) and start_clock >= 0):
            raise ValueError(f"start_clock must be a step count >= 0 or 'random', got "
                             f"{start_clock!r}")
        self.start_clock = start_clock
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or "
                             f"None, not {render_mode!r}")
        import crafter.constants

        self.size = _as_hw(size)
        if min(self.size) // max(view) < 2:
            # crafter draws inventory digits at 0.6 tile: a tile needs at least 2 pixels
            raise ValueError(f"Crafter frames need at least 2 pixels per tile of the "
                             f"{tuple(view)} view, i.e. {2 * max(view)}x{2 * max(view)}; "
                             f"got {self.size[0]}x{self.size[1]}")
        self.window_size = _as_hw(window_size)
        self.render_mode = render_mode
        h, w = self.size
        # crafter takes sizes as (width, height). length=None: the time limit is TimeLimit's
        # job, so `terminated` means death only. The seed is a placeholder replaced on every
        # reset (crafter would otherwise draw one from the global numpy RNG).
        self._game = _make_reproducible_crafter(area=tuple(area), view=tuple(view), size=(w, h),
                                                reward=reward, length=None, seed=0)
        self.action_names: tuple[str, ...] = tuple(crafter.constants.actions)
        self.achievement_names: tuple[str, ...] = tuple(crafter.constants.achievements)
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.action_names))
        self._last_obs: np.ndarray | None = None
        self._window: HumanWindow | None = None

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        world_seed = int(self.np_random.integers(0, _MAX_WORLD_SEED))
        # crafter seeds episode n's world with hash((seed, n)); pinning n to 1 makes the
        # world a function of world_seed alone, whatever happened before this reset.
        self._game._seed = world_seed
        self._game._episode = 0
        obs = np.asarray(self._game.reset(), dtype=np.uint8)
        clock = (int(self.np_random.integers(0, DAY_LENGTH)) if self.start_clock == "random"
                 else int(self.start_clock))
        if clock:
            self._game._step = clock
            self._game._update_time()  # the daylight of that hour (crafter's Env._update_time)
            obs = np.asarray(self._game.render(), dtype=np.uint8)
        self._last_obs = obs
        info = self._info()
        info["world_seed"] = world_seed
        info["start_clock"] = clock
        if self.render_mode == "human":
            self.render()
        return obs.copy(), info

    def step(self, action):
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        obs, reward, _, info = self._game.step(int(action))
        obs = np.asarray(obs, dtype=np.uint8)
        self._last_obs = obs
        terminated = bool(self._game._player.health <= 0)
        out = self._info(info)
        if self.render_mode == "human":
            self.render()
        return obs.copy(), float(reward), terminated, False, out

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode="
                            "'rgb_array' or 'human' to gymnasium.make")
            return None
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self.render_mode == "rgb_array":
            return self._last_obs.copy()
        return self._render_human()

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None

    # ------------------------------------------------------------------ helpers
    def _info(self, info: dict | None = None) -> dict[str, Any]:
        player = self._game._player
        return {
            "inventory": dict(player.inventory),
            "achievements": dict(player.achievements),
            # crafter hands out the player's own position array, mutated in place later
            "player_pos": np.array(player.pos, dtype=np.int64),
            "discount": float(info["discount"]) if info else 1.0,
        }

    def _render_human(self) -> None:
        if self._window is None:
            self._window = HumanWindow("Crafter", self.window_size, self.metadata["render_fps"])
        h, w = self.window_size
        # Drawing at window resolution calls crafter's renderer, which draws night-time noise
        # from the world's RNG; restore its state so watching never changes the game.
        rng = self._game._world.random
        state = rng.get_state()
        frame = np.asarray(self._game.render((w, h)), dtype=np.uint8)  # (h, w, 3)
        rng.set_state(state)
        self._window.show(frame)
