"""What repeated VAE round trips (decode, then encode) do to real frames, with no dynamics
model at all: the loop a re-encoding simulator runs once per imagined step.

    python examples/vae_round_trips.py --vae worldsim/assets/crafter-default/vae runs/vae-refit \
        --data data/crafter-heldout --out docs/long-dreams/vae_round_trips.png

Encodes `--frames` held-out frames (evenly spaced over the dataset), repeats the round trip
up to the largest of `--trips`, and prints, per VAE and trip count, the mean absolute pixel
error (grey levels), the mean PSNR against the real frames and the frames' sharpness (the
stability statistic's), as JSON; `--darkest 0.05` takes the frames from the darkest 5% (the
nights, whose random texture a decoder may draw flat). The PNG shows the
first 8 frames: real, then after each trip count, one block per VAE. A decoder that is no
projection onto the frames its encoder saw lets the error compound (docs/DESIGN-NOTES.md, VAE).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    from PIL import Image, ImageDraw

    from worldsim.data.store import EpisodeStore
    from worldsim.evaluation.fidelity import grey_levels, sharpness
    from worldsim.evaluation.metrics import frame_metrics
    from worldsim.models.vae import VAE
    from worldsim.runtime import configure
    from worldsim.training.train_vae import round_trips

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", nargs="+", required=True, help="VAE checkpoints to compare")
    parser.add_argument("--data", required=True, help="episode store with real frames")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--trips", type=int, nargs="+", default=[1, 10, 50, 100, 200])
    parser.add_argument("--labels", nargs="+", help="names of the VAEs in the PNG (default: paths)")
    parser.add_argument("--out", help="PNG of the first 8 frames per VAE")
    parser.add_argument("--darkest", type=float, default=1.0,
                        help="take the frames from this darkest share of the dataset (by mean "
                             "grey level; 0.05: nights), else from all of it")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    configure(args.threads)

    store = EpisodeStore(args.data)
    # evenly spaced over the dataset's frames (episode by episode), or over its darkest share
    index = [(n, t) for n in store.names for t in range(store.length(n) + 1)]
    if args.darkest < 1.0:
        grey = np.concatenate([grey_levels(np.asarray(store.load(n).frames)).mean(axis=(1, 2))
                               for n in store.names])
        index = [index[i] for i in np.flatnonzero(grey <= np.quantile(grey, args.darkest))]
    picks = np.linspace(0, len(index) - 1, args.frames).astype(int)
    real = np.stack([np.asarray(store.load(index[i][0]).frames[index[i][1]]) for i in picks])

    labels = args.labels or args.vae
    if len(labels) != len(args.vae):
        parser.error(f"{len(args.vae)} VAEs but {len(labels)} labels")
    results, blocks = {}, []
    for path, label in zip(args.vae, labels, strict=True):
        vae = VAE.from_checkpoint(path)
        with torch.no_grad():
            drawn = round_trips(vae, real, tuple(args.trips))
        results[label] = {
            str(trips): {"mae": round(float(np.abs(frames.astype(float) - real).mean()), 3),
                         "psnr": round(frame_metrics(torch.from_numpy(real), torch.from_numpy(
                             frames))["psnr"].mean().item(), 2),
                         "sharpness": round(float(sharpness(frames).mean()), 2)}
            for trips, frames in drawn.items()}
        rows = [real[:8], *(drawn[t][:8] for t in args.trips)]
        block = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
        image = Image.fromarray(np.pad(block, ((14, 0), (60, 0), (0, 0)),
                                       constant_values=255))
        draw = ImageDraw.Draw(image)
        draw.text((62, 1), label, fill=(0, 0, 0))
        for i, row in enumerate(["real", *(f"{t} trips" for t in args.trips)]):
            draw.text((2, 14 + i * real.shape[1] + real.shape[1] // 2 - 5), row, fill=(0, 0, 0))
        blocks.append(np.asarray(image))
    print(json.dumps({"frames": len(real), "data": args.data, "darkest": args.darkest,
                      "real_sharpness": round(float(sharpness(real).mean()), 2),
                      "round_trips": results}, indent=2))
    if args.out:
        grid = np.concatenate(blocks, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2),
                                     Image.NEAREST).save(args.out)


if __name__ == "__main__":
    main()
