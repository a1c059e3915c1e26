"""Where the dream's out-and-back return differs from its start, per Crafter tile.

    python examples/out_and_back_tiles.py --checkpoint worldsim/assets/crafter-default \
        --data data/crafter-heldout

Runs the out-and-back walks of `worldsim eval` (`evaluation.fidelity.consistency`, the same
seeded starts and context) and keeps the walks where the real game came back to its start
(`evaluation.fidelity.clean_returns`). For each walk direction and k it prints the mean
squared error against the start frame per tile column (left/right walks) or tile row
(up/down walks), for the dream, the dream restarted without memory at the turning point, and
the real game.

If the dream only lacked memory, its error would sit on the tile line that left the view and
came back (the right column after move_left and back, the left one after move_right
and back); an error spread over every line says
that each step redraws the scrolled view a little differently (docs/DESIGN-NOTES.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

VIEW_TILES = 9  # Crafter draws a 9x9 grid of tiles: 7 pixels at 64x64 (the last pixel black), 8 at 72x72


def tile_errors(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Mean squared error of uint8 frames (N, H, W, 3) per tile line along `axis` (1 rows,
    2 columns) -> (lines,)."""
    other = tuple(d for d in (0, 1, 2, 3) if d != axis)
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=other)
    tile = a.shape[axis] // VIEW_TILES
    return np.array([err[i:i + tile].mean() for i in range(0, tile * VIEW_TILES, tile)])


def main() -> None:
    import worldsim
    from worldsim.data.store import EpisodeStore
    from worldsim.evaluation.fidelity import clean_returns, consistency
    from worldsim.evaluation.report import action_names_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="worldsim/assets/crafter-default")
    parser.add_argument("--data", default="data/crafter-heldout")
    parser.add_argument("--starts", type=int, default=96)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    wm = worldsim.load(args.checkpoint)
    store = EpisodeStore(args.data)
    episodes = [store.load(n) for n in store.split("val")]
    run = consistency(wm, store, episodes, context=args.context, ks=args.ks,
                      starts=args.starts, action_names=action_names_of(store))
    if isinstance(run, str):
        raise SystemExit(f"cannot run the out-and-back walks: {run}")
    out_moves = np.array([w[0] for w in run.walks])
    for k in args.ks:
        clean = clean_returns(run, k)
        for move, axis in (("move_left", 2), ("move_right", 2), ("move_up", 1), ("move_down", 1)):
            rows = clean & (out_moves == move)
            if not rows.any():
                continue
            line = "column" if axis == 2 else "row"
            print(f"k={k} {move} and back, {rows.sum()} clean walks, MSE per tile {line}:")
            for name, frames in (("dream", run.dream_return[k]),
                                 ("forgetful", run.forget_return[k]),
                                 ("real game", run.real_return[k])):
                errors = tile_errors(frames[rows], run.start[rows], axis)
                print(f"  {name:<10}", " ".join(f"{e:5.0f}" for e in errors))


if __name__ == "__main__":
    main()
