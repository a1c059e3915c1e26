"""The play loop, headless (SDL_VIDEODRIVER=dummy, set by conftest): scripted key events give
the expected actions, frames are drawn, recordings, screenshots and demonstrations are written,
side by side stays in step and re-syncs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from PIL import Image

from envs.keymaps import (
    CAMERA_DEGREES_PER_PIXEL,
    CRAFTER_KEYS,
    CombinationKeymap,
    DiscreteKeymap,
    InputState,
    MouseLookKeymap,
    crafter_keymap,
    keymap_for,
    number_keymap,
)
from envs.play import (
    DemoRecorder,
    Game,
    InputTracker,
    LoopSettings,
    PlayEnv,
)
from worldsim.data.collect import make_env
from worldsim.data.store import EpisodeStore

pygame = pytest.importorskip("pygame")

CRAFTER = "worldsim/Crafter-v0"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def action_names() -> list[str]:
    import crafter.constants

    return list(crafter.constants.actions)


def crafter_env() -> gym.Env:
    return make_env(CRAFTER, size=64)


class ActionLog(gym.Wrapper):
    """Remembers every action it is stepped with."""

    def __init__(self, env):
        super().__init__(env)
        self.actions: list = []

    def step(self, action):
        self.actions.append(action)
        return self.env.step(action)


class CopyLastFrameEnv(gym.Env):
    """The copy-last-frame baseline world model: it shows the last frame it was started from,
    whatever the action. Stands in for the dream (it honours reset(options={"frames"}))."""

    metadata = {"render_modes": []}

    def __init__(self, action_space: spaces.Space, shape=(64, 64, 3)):
        self.action_space = action_space
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.frame = np.zeros(shape, np.uint8)
        self.options_seen: list[dict] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.options_seen.append(options or {})
        if options and "frames" in options:
            self.frame = np.asarray(options["frames"])[-1].copy()
        return self.frame.copy(), {"predicted_termination": 0.25}

    def step(self, action):
        return self.frame.copy(), 0.0, False, False, {"predicted_termination": 0.25}


def key(k: int, down: bool = True):
    return pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=k, mod=0)


def scripted(events_at: dict[int, list]):
    """A `Game.run` script posting `events_at[frame]` at the start of that frame."""
    def script(frame: int) -> None:
        for event in events_at.get(frame, []):
            pygame.event.post(event)
    return script


# ---------------------------------------------------------------------------- keymaps


def test_crafter_keymap_is_crafters_gui(action_names):
    km = crafter_keymap(action_names)
    assert km.noop == action_names.index("noop")
    for k, name in CRAFTER_KEYS.items():
        assert action_names[km.action(InputState(pressed=(k,), held=frozenset({k})))] == name
    assert km.action(InputState()) is None
    # crafter's GUI keys, spelled out: WASD, space, tab, R T F P, 1-6
    spelled = {pygame.K_w: "move_up", pygame.K_a: "move_left", pygame.K_s: "move_down",
               pygame.K_d: "move_right", pygame.K_SPACE: "do", pygame.K_TAB: "sleep",
               pygame.K_r: "place_stone", pygame.K_t: "place_table", pygame.K_f: "place_furnace",
               pygame.K_p: "place_plant", pygame.K_1: "make_wood_pickaxe",
               pygame.K_6: "make_iron_sword"}
    for k, name in spelled.items():
        assert km.describe(km.action(InputState(held=frozenset({k})))) == name


def test_pressed_key_wins_over_held(action_names):
    km = crafter_keymap(action_names)
    state = InputState(pressed=(pygame.K_SPACE,), held=frozenset({pygame.K_a}))
    assert action_names[km.action(state)] == "do"  # a tap within the frame is not lost
    state = InputState(held=frozenset({pygame.K_d, pygame.K_a}))
    assert action_names[km.action(state)] == "move_left"  # binding order, as crafter's GUI


def test_number_keymap_offsets_and_skips():
    km = number_keymap(spaces.Discrete(5, start=2))
    assert km.action(InputState(pressed=(pygame.K_0,))) == 2
    assert km.action(InputState(pressed=(pygame.K_4,))) == 6
    assert km.noop == 2 and km.describe(6) == "6"
    km = number_keymap(spaces.Discrete(12), skip={pygame.K_a})
    assert km.action(InputState(pressed=(pygame.K_b,))) == 10
    with pytest.raises(ValueError, match="more actions"):
        number_keymap(spaces.Discrete(40))


def test_mouse_look_keymap_on_the_minecraft_space():
    from worldsim.data.minecraft_actions import minecraft_action_space

    space = minecraft_action_space()
    km = MouseLookKeymap(space)
    assert space.contains(km.noop) and km.uses_mouse
    assert km.action(InputState()) is None
    state = InputState(held=frozenset({pygame.K_w, pygame.K_SPACE}), clicked=(1,),
                       mouse_motion=(100.0, -40.0))
    action = km.action(state)
    assert space.contains(action)
    on = {k for k, v in action.items() if k != "camera" and v == 1}
    assert on == {"forward", "jump", "attack"}
    # [pitch, yaw]: moving the mouse up (dy < 0) looks up, right (dx > 0) turns right
    np.testing.assert_allclose(action["camera"], [-40 * CAMERA_DEGREES_PER_PIXEL,
                                                  100 * CAMERA_DEGREES_PER_PIXEL], rtol=1e-6)
    assert km.describe(action) == "attack+forward+jump+look -6.0,+15.0"
    held_right = km.action(InputState(buttons=frozenset({3})))
    assert held_right["use"] == 1 and held_right["attack"] == 0
    huge = km.action(InputState(mouse_motion=(1e6, 0.0)))
    assert space.contains(huge) and huge["camera"][1] == 180.0  # clipped to the Box
    assert ("(unbound)", "ESC") in km.help()  # Esc belongs to the loop


def test_mouse_look_keymap_rejects_a_bad_camera():
    with pytest.raises(ValueError, match="camera"):
        MouseLookKeymap(spaces.Dict({"forward": spaces.Discrete(2), "camera": spaces.Discrete(3)}))


def test_combination_keymap_prefers_the_longest_match():
    km = CombinationKeymap({(pygame.K_w,): 1, (pygame.K_w, pygame.K_d): 2, "s": 3}, noop=0)
    assert km.action(InputState(held=frozenset({pygame.K_w}))) == 1
    assert km.action(InputState(held=frozenset({pygame.K_w, pygame.K_d}))) == 2
    assert km.action(InputState(pressed=(ord("s"),))) == 3
    assert km.action(InputState()) is None


def test_keymap_for_picks_by_env():
    env = crafter_env()
    assert isinstance(keymap_for(env), DiscreteKeymap)
    assert keymap_for(env).describe(5) == "do"
    cartpole = gym.make("CartPole-v1")
    km = keymap_for(cartpole)
    assert km.action(InputState(pressed=(pygame.K_1,))) == 1
    with pytest.raises(ValueError, match="no keymap"):
        keymap_for(gym.make("Pendulum-v1"))


def test_input_tracker_holds_keys_between_events():
    tracker = InputTracker()
    state, commands = tracker.poll([key(pygame.K_a), key(pygame.K_F2)])
    assert state.pressed == (pygame.K_a,) and pygame.K_a in state.held
    assert [c.name for c in commands] == ["PAUSE"]
    state, _ = tracker.poll([])
    assert state.pressed == () and pygame.K_a in state.held
    state, _ = tracker.poll([key(pygame.K_a, down=False)])
    assert pygame.K_a not in state.held
    motion = pygame.event.Event(pygame.MOUSEMOTION, rel=(3, -2), pos=(0, 0), buttons=(0, 0, 0))
    state, _ = tracker.poll([motion, motion])
    assert state.mouse_motion == (6, -4)


def test_keymap_may_not_bind_control_keys(action_names):
    play_env = PlayEnv(real=CopyLastFrameEnv(spaces.Discrete(3)))
    km = DiscreteKeymap({pygame.K_F1: 1}, ["a", "b", "c"])
    with pytest.raises(ValueError, match="f1"):
        Game(play_env, km)


# ---------------------------------------------------------------------------- the loop


def test_scripted_keys_give_crafters_actions_and_frames_are_drawn(action_names, tmp_path):
    env = ActionLog(crafter_env())
    play_env = PlayEnv(real=env, seed=0)
    game = Game(play_env, keymap_for(env), LoopSettings(fps=0, max_frames=8, record_dir=tmp_path))
    checked = []

    def check_screen(frame: int) -> None:
        # what the previous tick drew: every panel pixel is an 8x8 block of the env's frame
        if frame in (1, 5):
            expected = play_env.primary.frame.repeat(8, axis=0).repeat(8, axis=1)
            rect = game.screen.panel_rect(0)
            shown = game.screen.pixels()[rect.y:rect.bottom, rect.x:rect.right]
            np.testing.assert_array_equal(shown, expected)
            assert shown.shape == (512, 512, 3) and shown.std() > 0
            checked.append(frame)

    events = scripted({
        0: [key(pygame.K_a)],                                   # press a -> move_left
        1: [key(pygame.K_a, down=False)],                       # released -> noop
        2: [key(pygame.K_SPACE), key(pygame.K_SPACE, False)],   # a tap inside one frame -> do
        3: [key(pygame.K_w)],                                   # held for two frames
        5: [key(pygame.K_w, False), key(pygame.K_TAB)],
        6: [key(pygame.K_TAB, False), key(pygame.K_1)],
        7: [key(pygame.K_1, False)],
    })

    def script(frame):
        check_screen(frame)
        events(frame)

    stats = game.run(script)
    names = [action_names[a] for a in env.actions]
    assert names == ["move_left", "noop", "do", "move_up", "move_up", "sleep",
                     "make_wood_pickaxe", "noop"]
    assert checked == [1, 5] and stats.frames == 8 and stats.steps == 8


def test_pause_step_reset_and_wait(tmp_path):
    env = ActionLog(CopyLastFrameEnv(spaces.Discrete(17)))
    play_env = PlayEnv(real=env)
    game = Game(play_env, number_keymap(spaces.Discrete(17)),
                LoopSettings(fps=0, max_frames=6, record_dir=tmp_path))
    stats = game.run(scripted({
        0: [key(pygame.K_F2)],              # pause: no step
        2: [key(pygame.K_F3)],              # step once while paused
        3: [key(pygame.K_F2), key(pygame.K_RETURN)],  # resume and reset
    }))
    assert stats.steps == 1 + 3 and stats.episodes == 2

    env.actions.clear()
    game = Game(play_env, number_keymap(spaces.Discrete(17)),
                LoopSettings(fps=0, max_frames=4, wait=True, record_dir=tmp_path))
    stats = game.run(scripted({1: [key(pygame.K_3), key(pygame.K_3, False)]}))
    assert env.actions == [3] and stats.steps == 1  # turn-based: only the key press steps


class FixedAgent:
    def __init__(self, action):
        self.action, self.resets = action, 0

    def reset(self):
        self.resets += 1

    def act(self, observation):
        assert observation.shape == (64, 64, 3)
        return self.action


def test_agent_takes_control_and_gives_it_back(tmp_path):
    env = ActionLog(CopyLastFrameEnv(spaces.Discrete(17)))
    play_env = PlayEnv(real=env, agent=FixedAgent(5))
    game = Game(play_env, number_keymap(spaces.Discrete(17)),
                LoopSettings(fps=0, max_frames=5, record_dir=tmp_path))
    game.run(scripted({0: [key(pygame.K_2)], 1: [key(pygame.K_F4)], 3: [key(pygame.K_F4)]}))
    # human 2 (held), agent 5, agent 5, human 2 (still held), human 2
    assert env.actions == [2, 5, 5, 2, 2]
    assert play_env.agent.resets == 1


def test_screen_recording_is_a_valid_video(tmp_path):
    env = crafter_env()
    for fmt in ("mp4", "gif"):
        game = Game(PlayEnv(real=env, seed=1), keymap_for(env),
                    LoopSettings(fps=0, max_frames=9, record_dir=tmp_path, video_format=fmt))
        # recording starts on frame 2 and stops on frame 7: 5 drawn frames
        stats = game.run(scripted({2: [key(pygame.K_F9)], 7: [key(pygame.K_F9)]}))
        (path,) = stats.recordings
        assert path.endswith(f".{fmt}")
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 5
        w, h = game.screen.size
        assert w == 512 and h > 512 and frames[0].shape == (h, w, 3)
        if fmt == "gif":  # palette frames are exact: the game panel matches a screenshot
            assert frames[-1][:512, :512].std() > 0
    assert not list(tmp_path.glob(".tmp-*"))


def test_screenshot_is_written(tmp_path):
    env = CopyLastFrameEnv(spaces.Discrete(17))
    game = Game(PlayEnv(real=env), number_keymap(spaces.Discrete(17)),
                LoopSettings(fps=0, max_frames=3, record_dir=tmp_path / "shots", show_help=True))
    stats = game.run(scripted({1: [key(pygame.K_F12)]}))
    (path,) = stats.screenshots
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] == 512 and image.shape[0] > 512
    assert image[:512, :512].max() > 0  # the help overlay's text is on the black frame


def test_real_game_played_alone_lands_in_the_episode_store(tmp_path, action_names):
    env = crafter_env()
    demos = DemoRecorder(tmp_path / "demos", CRAFTER, env, env.observation_space.shape)
    play_env = PlayEnv(real=env, seed=7)
    game = Game(play_env, keymap_for(env), LoopSettings(fps=0, max_frames=7, record_dir=tmp_path),
                demos=demos)
    stats = game.run(scripted({0: [key(pygame.K_d)], 2: [key(pygame.K_d, False)],
                               4: [key(pygame.K_RETURN)]}))
    store = EpisodeStore(tmp_path / "demos")
    assert store.env_id == CRAFTER and len(store) == 2 == len(stats.demonstrations)
    assert sorted(store.names) == stats.demonstrations  # names sort in the order played
    first, second = (store.load(n) for n in stats.demonstrations)
    assert first.length == 4 and second.length == 3
    assert [action_names[a] for a in first.actions["action"]] == [
        "move_right", "move_right", "noop", "noop"]
    assert first.truncated[-1] and not first.truncated[:-1].any()  # cut by the reset
    assert first.frames.shape == (5, 64, 64, 3)
    fresh = crafter_env()
    np.testing.assert_array_equal(first.frames[0], fresh.reset(seed=7)[0])  # its reset frame
    assert store.episode_meta(first_name := sorted(store.names)[0])["info"]["policy"] == "human"
    assert store.episode_meta(first_name)["info"]["seed"] == 7


def test_side_by_side_same_actions_same_start_and_resync(tmp_path):
    # Two real games from one seed stand in for real and dream: same actions, same frames.
    real, twin = crafter_env(), ActionLog(crafter_env())
    play_env = PlayEnv(real=real, dream=twin, seed=3)
    game = Game(play_env, keymap_for(real), LoopSettings(fps=0, max_frames=6, record_dir=tmp_path))
    same = []
    game.run(lambda frame: same.append(np.array_equal(*(p.frame for p in play_env.panels)))
             or (pygame.event.post(key(pygame.K_s)) if frame == 1 else None))
    assert all(same) and len(twin.actions) == 6 and twin.actions[1:] == [4] * 5
    assert game.screen.size[0] == 2 * 512 + 8

    # A dream that honours reset(options={"frames"}): F5 restarts it from the real frames.
    real = crafter_env()
    dream = CopyLastFrameEnv(real.action_space)
    play_env = PlayEnv(real=real, dream=dream, context_frames=3, seed=4)
    game = Game(play_env, keymap_for(real), LoopSettings(fps=0, max_frames=7, record_dir=tmp_path))
    real_frames = []

    def script(frame):
        real_frames.append(play_env.panels[0].frame.copy())
        scripted({0: [key(pygame.K_a)], 5: [key(pygame.K_F5)]})(frame)

    game.run(script)
    start = dream.options_seen[0]["frames"]
    assert start.shape == (1, 64, 64, 3)  # the dream starts from the real first frame
    np.testing.assert_array_equal(start[0], real_frames[0])
    resync = dream.options_seen[1]
    # the last 3 real frames (after steps 3, 4, 5) and the 2 actions between them
    assert resync["frames"].shape == (3, 64, 64, 3) and list(resync["actions"]) == [1, 1]
    np.testing.assert_array_equal(resync["frames"], np.stack(real_frames[3:6]))
    np.testing.assert_array_equal(play_env.panels[1].frame, real_frames[5])  # held since
    assert play_env.panels[1].note == "re-synced at step 5"
    assert play_env.panels[1].steps == play_env.panels[0].steps == 7


def test_side_by_side_needs_one_action_space():
    with pytest.raises(ValueError, match="one action space"):
        PlayEnv(real=CopyLastFrameEnv(spaces.Discrete(3)), dream=CopyLastFrameEnv(spaces.Discrete(4)))


def test_hud_shows_predicted_termination(tmp_path):
    env = CopyLastFrameEnv(spaces.Discrete(17))
    game = Game(PlayEnv(dream=env), number_keymap(spaces.Discrete(17)),
                LoopSettings(fps=0, max_frames=2, record_dir=tmp_path))
    game.run()
    lines = [text for text, _ in game._panel_lines(game.env.primary)]
    assert any("p(termination) 0.25" in t for t in lines)
    assert any("dream" in t and "step 2" in t for t in lines)


# ---------------------------------------------------------------------------- CLI


def _cli(*args, cwd: Path, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    return subprocess.run([sys.executable, "-m", "worldsim.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_plays_the_real_game_and_exits_by_itself(tmp_path):
    out = _cli("play", "--real", CRAFTER, "--agent", "random", "--agent-first", "--max-steps",
               "6", "--fps", "0", "--record", "--record-dir", str(tmp_path), "--seed", "1",
               cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 6 and result["played"] == f"real: {CRAFTER}"
    (video,) = result["recordings"]
    with av.open(video) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    store = EpisodeStore(tmp_path / "demonstrations")
    assert [store.length(n) for n in store.names] == [6]


def test_cli_without_a_checkpoint_plays_the_bundled_model(tmp_path):
    from envs.world_model_env import DEFAULT_CHECKPOINT

    out = _cli("play", "--max-frames", "2", "--fps", "0", "--sampling-steps", "1", cwd=tmp_path)
    if (DEFAULT_CHECKPOINT / "config.json").exists():
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["played"].startswith("dream") and result["frames"] == 2
    else:  # a checkout without the shipped model says what to do instead
        assert out.returncode != 0
        assert "--checkpoint" in out.stderr and "--real" in out.stderr


def test_cli_with_a_missing_checkpoint_names_it(tmp_path):
    out = _cli("play", "--checkpoint", str(tmp_path / "missing"), cwd=tmp_path)
    assert out.returncode != 0 and "missing" in out.stderr


def test_example_runs(tmp_path):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    out = subprocess.run([sys.executable, str(REPO / "examples" / "play_crafter.py"),
                          "--max-frames", "3", "--demos", str(tmp_path / "demos")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "3 steps" in out.stdout and len(EpisodeStore(tmp_path / "demos")) == 1


def test_minecraft_style_dict_actions_with_mouse(tmp_path):
    from worldsim.data.minecraft_actions import minecraft_action_space

    space = minecraft_action_space()
    env = ActionLog(CopyLastFrameEnv(space))
    demos = DemoRecorder(tmp_path / "mc", "test/Minecraft", env, (64, 64, 3))
    game = Game(PlayEnv(real=env), keymap_for(env),
                LoopSettings(fps=0, max_frames=3, record_dir=tmp_path), demos=demos)
    motion = pygame.event.Event(pygame.MOUSEMOTION, rel=(20, 10), pos=(5, 5), buttons=(0, 0, 0))
    click = pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(5, 5))
    game.run(scripted({1: [key(pygame.K_w), motion, click]}))
    noop, look, held = env.actions
    assert all(v == 0 for k, v in noop.items() if k != "camera") and not noop["camera"].any()
    assert look["forward"] == 1 and look["attack"] == 1
    np.testing.assert_allclose(look["camera"], [10 * CAMERA_DEGREES_PER_PIXEL,
                                                20 * CAMERA_DEGREES_PER_PIXEL], rtol=1e-6)
    assert held["forward"] == 1 and held["attack"] == 1 and not held["camera"].any()
    store = EpisodeStore(tmp_path / "mc")
    ep = store.load(store.names[0])
    assert list(ep.actions["forward"]) == [0, 1, 1] and ep.actions["camera"].shape == (3, 2)


def test_sampling_steps_and_bf16_reach_the_dream(tiny_bundle):
    from envs.play import PlayConfig, build
    from worldsim.runtime import has_bf16_matrix_units

    game, _ = build(PlayConfig(checkpoint=tiny_bundle, sampling_steps=1))
    assert game.env.dream.unwrapped._sim.num_sampling_steps == 1
    game, _ = build(PlayConfig(checkpoint=tiny_bundle, bf16_frames=False))
    assert game.env.dream.unwrapped._sim.num_sampling_steps is None  # the bundle's
    assert game.env.dream.unwrapped._sim.bf16 is False
    game, _ = build(PlayConfig(checkpoint=tiny_bundle))  # frames in bf16 where it pays
    assert game.env.dream.unwrapped._sim.bf16 == ("frames" if has_bf16_matrix_units("cpu")
                                                  else False)
    game, _ = build(PlayConfig(checkpoint=tiny_bundle, bf16=True))
    assert game.env.dream.unwrapped._sim.bf16 is True
    game, _ = build(PlayConfig(checkpoint=tiny_bundle, bf16_frames=True))
    assert game.env.dream.unwrapped._sim.bf16 == "frames"
    assert game.env.dream.unwrapped._sim.guidance is None  # the bundle's
    game, _ = build(PlayConfig(checkpoint=tiny_bundle, guidance=2.5))
    assert game.env.dream.unwrapped._sim.guidance == 2.5
