"""Does the dream draw what an event changes? On every held-out transition that earned an
achievement (reward > 0.5), one step from the real context with the recorded action: the mean
absolute pixel change of the status bar (Crafter's inventory and health: the bottom 14 rows of
a 64x64 frame) from frame t, in the real next frame and in the dreamt one, both seen through
the VAE (decode(encode(frame))) so that they compare like with like. A dream that draws events
changes the bar as much as the game does; one that does not changes it by about nothing.

    python examples/event_drawing.py --checkpoint worldsim/assets/crafter-default \
        --data data/crafter [--strip strip.png]

Prints one JSON object; with --strip, a PNG of frame t | real t+1 | dream t+1 per row.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import worldsim
from worldsim.data.store import EpisodeStore
from worldsim.evaluation.fidelity import load_episodes, teacher_forced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bar-rows", type=int, default=14,
                        help="bottom pixel rows that hold the status bar")
    parser.add_argument("--max-transitions", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4],
                        help="sampler steps compared")
    parser.add_argument("--strip", default=None)
    args = parser.parse_args()
    wm = worldsim.load(args.checkpoint)
    store = EpisodeStore(args.data)
    episodes = load_episodes(store, store.split("val"))
    picks = np.array([(e, t) for e, ep in enumerate(episodes)
                      for t in np.flatnonzero(np.asarray(ep.rewards) > 0.5)])
    if len(picks) == 0:
        raise SystemExit(f"{args.data}: no held-out transition earned an achievement")
    picks = picks[np.unique(np.linspace(0, len(picks) - 1, args.max_transitions).astype(int))]
    run = teacher_forced(wm, episodes, picks, context=wm.context_frames, num_steps=args.steps)
    bar = slice(-args.bar_rows, None)

    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a[:, bar].astype(np.float32) - b[:, bar].astype(np.float32)).mean())

    # Each change is measured between frames drawn the same way, so that drawing noise does not
    # count as change: the real pair through the VAE, and the dream from the frame t it shows
    # (the real frame with a frame refiner, else the VAE's).
    result = {"transitions": len(picks),
              "bar_change_real": change(run.target_vae, run.current_vae),
              "bar_change_dream": {n: change(d, run.current_shown) for n, d in run.dream.items()},
              "bar_error_dream": {n: change(d, run.target_vae) for n, d in run.dream.items()}}
    print(json.dumps(result, indent=2))
    if args.strip:
        from PIL import Image

        steps, (H, W) = min(run.dream), run.current.shape[1:3]
        rows = [np.concatenate([run.current[i], run.target[i], run.dream[steps][i]], 1)
                for i in range(0, len(picks), max(1, len(picks) // 8))][:8]
        Image.fromarray(np.concatenate(rows, 0)).resize(
            (3 * W * 3, len(rows) * H * 3), Image.NEAREST).save(args.strip)


if __name__ == "__main__":
    main()
