"""Play Crafter in a pygame window with worldsim's play loop, used as a library.

    python examples/play_crafter.py              # you play; F4 hands over to an agent and back
    python examples/play_crafter.py --twin       # two copies side by side, same actions

What `worldsim play --real worldsim/Crafter-v0 --agent sticky` does, spelled out: the loop
takes any Gymnasium env with RGB frames and a keymap (Crafter's own keys: WASD move, space
do, tab sleep, R T F P place, 1-6 make; F1 shows them all). Swap `twin` for
`make_dream(checkpoint)` (envs.dream_video) to play the learned simulator beside the game.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from envs.keymaps import keymap_for
from envs.play import DemoRecorder, Game, LoopSettings, PlayEnv, load_agent
from worldsim.data.collect import make_env


@dataclass
class Args:
    twin: bool = False
    """Show a second copy of the game beside the first (both get your actions)."""
    seed: int = 0
    """World seed of the first episode."""
    demos: Path | None = None
    """Record your episodes into this episode store (only when playing one game)."""
    max_frames: int | None = None
    """Quit after this many frames (for a quick check)."""


def main(args: Args) -> None:
    real = make_env("worldsim/Crafter-v0", size=64)
    twin = make_env("worldsim/Crafter-v0", size=64) if args.twin else None
    agent = load_agent("sticky", real.action_space, real.get_wrapper_attr("action_names"),
                       seed=args.seed)
    play_env = PlayEnv(real=real, dream=twin, agent=agent, seed=args.seed)
    demos = None
    if args.demos is not None and twin is None:
        demos = DemoRecorder(args.demos, "worldsim/Crafter-v0", real, real.observation_space.shape)
    settings = LoopSettings(fps=15, scale=8, show_help=True, max_frames=args.max_frames)
    stats = Game(play_env, keymap_for(real), settings, demos, title="Crafter").run()
    print(f"{stats.steps} steps, {stats.episodes} episodes, {stats.fps:.1f} fps; "
          f"demonstrations: {stats.demonstrations or 'none'}")
    play_env.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
