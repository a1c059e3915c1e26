"""Score a dream-trained agent in the real game twice: on the real frames, and on the real frames
as the world model draws them (encode, decode, then the bundle's refiner, as the dream shows its
own frames). If the second scores higher, what holds the agent back is how differently the two
look; if both score alike, it is what the agent learnt.

    python examples/agent_through_world_model.py --checkpoint runs/bundle-once-shipped \
        --agent runs/agents-shipped/carried300-s0/agent --episodes 20 --seed 1000

Prints one JSON object with both scores and their success rates (above 0). Episode i of both
runs is reset with seed + i, and the agent samples from a generator seeded alike, as
`worldsim score` does.
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import torch

import envs  # noqa: F401  (registers worldsim/*)
from agents.score import make_agent, play_episodes
from worldsim.world_model import WorldModel


class ThroughWorldModel(gym.ObservationWrapper):
    """Observations replaced by the world model's drawing of them: uint8 (H, W, 3) frames
    through the VAE and, when the bundle has one, the refiner (which reads what was shown
    before, so it starts from the real first frame as a dream does)."""

    def __init__(self, env: gym.Env, wm: WorldModel):
        super().__init__(env)
        self.wm, self.shown = wm, None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.shown = self.wm.render_start(obs[None], self.wm.encode(obs[None]))
        return self.shown.frames[0].cpu().numpy(), info

    def observation(self, observation):
        self.shown = self.wm.render(self.wm.encode(observation[None]), self.shown)
        return self.shown.frames[0].cpu().numpy()


def score(env: gym.Env, agent_dir: str, episodes: int, seed: int) -> dict:
    agent = make_agent(agent_dir, env.action_space, seed)
    result = play_episodes(env, agent, episodes, seed, agent_dir, "worldsim/Crafter-v0")
    return {"score": round(result.score, 3),
            "success_rates": {k: v for k, v in result.success_rates.items() if v > 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the bundle the agent dreamt in")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wm = WorldModel.load(args.checkpoint)
    real = gym.make("worldsim/Crafter-v0")
    result = {"agent": args.agent, "episodes": args.episodes, "seed": args.seed,
              "real_frames": score(real, args.agent, args.episodes, args.seed),
              "through_world_model": score(ThroughWorldModel(gym.make("worldsim/Crafter-v0"),
                                                             wm),
                                           args.agent, args.episodes, args.seed)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
