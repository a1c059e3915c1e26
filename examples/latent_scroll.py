"""How well a one-tile scroll of Crafter's view is a shift of the VAE's latent grid.

    python examples/latent_scroll.py --checkpoint worldsim/assets/crafter-default \
        --data data/crafter-heldout

Takes held-out transitions where a move scrolled the map by exactly one tile (checked on the
pixels) and compares the latent of the next frame with the latent of the frame before,
shifted along the move by 0, 1 and 2 latent cells, over the map rows. Prints each mean squared
error as a share of the latents' variance. At 64x64 Crafter's tile is 7 pixels, 1.75 cells of
a factor-4 VAE, so no whole-cell shift can be a scroll; at 72x72 it is 8 pixels, 2 cells, one
token of a DiT with 2x2 patches (docs/DESIGN-NOTES.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

VIEW_TILES, MAP_TILES = 9, 7  # Crafter's view: 9x9 tiles, the top 7 rows the map
# Crafter's move actions -> the way the view's content slides, (rows, columns)
CONTENT_SLIDES = {"move_left": (0, 1), "move_right": (0, -1), "move_up": (1, 0), "move_down": (-1, 0)}


def slid_error(before: np.ndarray, after: np.ndarray, dy: int, dx: int, power: int = 2) -> float:
    """Mean (squared, power 2; absolute, 1) error of `after` (..., H, W) against `before`
    with its content moved by (dy, dx), where both exist."""
    from worldsim.models.refiner import displaced

    b = torch.from_numpy(before.astype(np.float64))
    s = displaced(b, dy, dx, fill=torch.full_like(b, float("nan"))).numpy()  # NaN: slid in
    ok = ~np.isnan(s)
    return float((np.abs(s[ok] - after[ok]) ** power).mean())


def main() -> None:
    import worldsim
    from worldsim.data.store import EpisodeStore
    from worldsim.evaluation.report import action_names_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="worldsim/assets/crafter-default")
    parser.add_argument("--data", default="data/crafter-heldout")
    parser.add_argument("--scrolls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    wm = worldsim.load(args.checkpoint)
    store = EpisodeStore(args.data)
    names = action_names_of(store)
    before, after, slides = [], [], []
    for episode in store.split("val"):
        ep = store.load(episode)
        frames, actions = np.asarray(ep.frames), np.asarray(ep.actions["action"])
        tile = frames.shape[1] // VIEW_TILES
        for t, a in enumerate(actions):
            if names[int(a)] not in CONTENT_SLIDES:
                continue
            dy, dx = CONTENT_SLIDES[names[int(a)]]
            b, n = (frames[i, :MAP_TILES * tile].transpose(2, 0, 1) for i in (t, t + 1))
            # a scroll: the map slid by one tile (up to the player and the new edge)
            if (slid_error(b, n, dy * tile, dx * tile, power=1) < 3
                    and slid_error(b, n, 0, 0, power=1) > 10):
                before.append(frames[t]), after.append(frames[t + 1]), slides.append((dy, dx))
        if len(slides) >= args.scrolls:
            break
    if not slides:
        raise SystemExit(f"no one-tile scrolls among the validation episodes of {args.data}")
    with torch.no_grad():
        z0 = wm.encode(np.stack(before)).float().cpu().numpy()
        z1 = wm.encode(np.stack(after)).float().cpu().numpy()
    H = before[0].shape[0]
    cell = H / z0.shape[-1]
    tile = H // VIEW_TILES
    rows = int(MAP_TILES * tile / cell)
    z0, z1 = z0[..., :rows, :], z1[..., :rows, :]
    variance = float(z1.var())
    print(f"{args.checkpoint}: {H}x{H} frames, a tile is {tile} px = {tile / cell:g} latent cells; "
          f"{len(slides)} one-tile scrolls")
    for cells in (0, 1, 2):
        err = np.mean([slid_error(z0[i], z1[i], dy * cells, dx * cells)
                       for i, (dy, dx) in enumerate(slides)])
        print(f"  next latent vs latent before slid by {cells} cell(s): "
              f"error {err / variance:.3f} of the latent variance")


if __name__ == "__main__":
    main()
