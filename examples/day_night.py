"""Does a Crafter dream keep the game's day and night? Dream brightness against the game clock.

    python examples/day_night.py --checkpoint worldsim/assets/crafter-default --data data/crafter-heldout

Crafter darkens the view by the clock: daylight = 1 - |cos(pi (t / 300 + 0.3))|^3 at game step
t, lowest at step 210 and every 300 steps after, and below 0.5 (where a per-pixel noise joins
a blue tint) for about 80 steps of each 300. A dream has no clock: it can only read the time
from the brightness of the frames in its window. This starts dreams from the first frames of
validation episodes (so dream step k is game step K - 1 + k), drives them with the
collector's sticky random policy, and prints per window of game steps the mean grey level of
the dream frames beside that of the recorded frames at the same game steps (every episode of
the dataset) and the clock's daylight. The recorded column ends where the data's episodes
do: a policy that dies in the first night (random play) leaves the data without mornings.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    import worldsim
    from envs.crafter import daylight
    from worldsim.data.store import EpisodeStore
    from worldsim.evaluation.fidelity import grey_levels, stability, stability_reference
    from worldsim.evaluation.report import action_names_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="worldsim/assets/crafter-default")
    parser.add_argument("--data", default="data/crafter-heldout",
                        help="a Crafter dataset: its validation episodes start the dreams")
    parser.add_argument("--reference", nargs="*", default=[],
                        help="more Crafter datasets whose frames join the recorded column at "
                             "their game clock (e.g. play collected with --env-kwargs "
                             "'{\"start_clock\": \"random\"}', which holds every hour)")
    parser.add_argument("--steps", type=int, default=900, help="dream steps")
    parser.add_argument("--dreams", type=int, default=8)
    parser.add_argument("--window", type=int, default=30, help="game steps per printed row")
    parser.add_argument("--guidance", type=float, default=None, help="default: the bundle's")
    parser.add_argument("--feedback", choices=("true", "false"), default=None,
                        help="default: the bundle's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    wm = worldsim.load(args.checkpoint)
    feedback = None if args.feedback is None else args.feedback == "true"
    store = EpisodeStore(args.data)
    K = wm.context_frames
    # The recorded frames' grey level at every game step (the clock: an episode's step plus
    # the clock it started at), over every episode.
    recorded: dict[int, list[float]] = {}
    starts = []
    for source in (store, *(EpisodeStore(path) for path in args.reference)):
        for split in ("val", "train"):
            for name in source.split(split):
                if source.length(name) == 0:
                    continue
                episode = source.load(name)
                clock = int(episode.info.get("start_clock", 0))
                for t, value in enumerate(grey_levels(episode.frames).mean(axis=(1, 2))):
                    recorded.setdefault(clock + t, []).append(float(value))
                if (source is store and split == "val" and len(starts) < args.dreams
                        and episode.length >= K and clock == 0):
                    starts.append(episode)
    if not starts:
        raise SystemExit(f"{args.data} has no validation episode of {K} frames or more")
    frames = np.stack([e.frames[:K] for e in starts])  # (N, K, H, W, 3): game steps 0..K-1
    actions = {k: np.stack([e.actions[k][:K - 1] for e in starts]) for k in starts[0].actions}
    # the collector's policy (Crafter's action weights, as in the training data), the
    # statistics of the stability report; "grey" is the mean grey level of each dream frame
    run = stability(wm, stability_reference(starts), steps=args.steps, every=args.steps,
                    action_names=action_names_of(store), seed=args.seed,
                    start=(frames, actions), guidance=args.guidance, feedback=feedback)
    dream = run.values["grey"]  # (N, steps): dream frame k+1 is game step K + k
    rows = []
    for k0 in range(0, args.steps, args.window):
        steps = np.arange(K + k0, K + min(k0 + args.window, args.steps))
        real = [v for t in steps for v in recorded.get(int(t), [])]
        rows.append({"game_steps": [int(steps[0]), int(steps[-1])],
                     "daylight": round(float(daylight(steps).mean()), 2),
                     "dream_grey": round(float(dream[:, k0:k0 + args.window].mean()), 1),
                     "recorded_grey": round(float(np.mean(real)), 1) if real else None,
                     "recorded_frames": len(real)})
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "dreams": len(starts),
                      "guidance": args.guidance, "feedback": feedback,
                      "longest_episode": max(recorded) if recorded else 0, "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
