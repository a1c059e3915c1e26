"""The `worldsim` command. Each subcommand lives in the module that does the work and exposes
`main(argv: list[str]) -> None`; this file only dispatches, so importing it is cheap."""

from __future__ import annotations

import importlib
import sys

# command words -> (module, one-line help). Two-word commands ("train vae") come first.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("worldsim.data.collect", "record episodes of a real env into an episode store"),
    "import": ("worldsim.data.minecraft", "import MineRL v0 or OpenAI VPT recordings"),
    "data info": ("worldsim.data.info", "summarise a dataset and write a contact sheet PNG"),
    "data verify": ("worldsim.data.info", "check every file of a dataset against its checksum"),
    "data merge": ("worldsim.data.info", "gather several datasets of one env into one"),
    "data label-achievements": ("worldsim.data.achievements",
                                "recover which achievement each transition unlocked (replay)"),
    "train vae": ("worldsim.training.train_vae", "train the frame VAE"),
    "encode": ("worldsim.training.encode", "write a dataset's latent cache with a trained VAE"),
    "train dynamics": ("worldsim.training.train_dynamics", "train the action-conditioned DiT"),
    "train reward": ("worldsim.training.train_reward", "train the reward and termination model"),
    "train refiner": ("worldsim.training.train_refiner",
                      "train the frame refiner (draws the next frame with the last in view)"),
    "bundle": ("worldsim.world_model", "assemble a simulator bundle from trained parts"),
    "eval": ("worldsim.evaluation.report", "evaluate a checkpoint against real data"),
    "play": ("envs.play", "play the learned simulator (and the real game) with pygame"),
    "dream": ("envs.dream_video", "render a dream rollout to mp4/gif"),
    "imagine": ("agents.imagine", "train an agent purely in the learned simulator"),
    "score": ("agents.score", "score an agent in the real game (Crafter score)"),
    "loop": ("agents.loop", "collect -> update world model -> train agent, repeated"),
    "bench": ("worldsim.evaluation.bench", "run the benchmark scripts and write one JSON file"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: worldsim COMMAND [ARGS...]   (worldsim COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            module_name, _ = COMMANDS[name]
            module = importlib.import_module(module_name)
            entry = getattr(module, "main_" + name.split()[-1], None) or module.main
            entry(argv[words:])
            return
    sys.exit(f"worldsim: unknown command {' '.join(argv[:2])!r}\n\n{usage()}")


if __name__ == "__main__":
    main()
