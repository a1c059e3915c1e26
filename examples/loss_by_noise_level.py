"""The denoising loss of dynamics models at fixed noise levels, on the same windows.

    python examples/loss_by_noise_level.py --checkpoints worldsim/assets/crafter-default \
        runs/two-hour-mixed/bundle --data data/crafter-heldout

A sampler evaluates the network at a few levels only: the shipped sampling at the first level
of its schedule, where the action decides the next frame, and at 0.36, where the second Euler
step draws the detail (texture, the player's sprite). A model trained with `--noise-shift`
sees fewer training frames at the low levels. This takes validation windows of the models'
length and measures each model's EDM-weighted denoising loss (the training loss, every frame,
both layouts, no action dropout) with every frame at one level, under the same noise draws,
and prints JSON: per model and level the loss and the share of its training levels at or
below that level.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys

import numpy as np
import torch


def main() -> None:
    from worldsim.data.store import EpisodeStore, WindowDataset, collate
    from worldsim.diffusion.schedules import training_share_at_or_below
    from worldsim.models.vae import VAE
    from worldsim.training.encode import ensure_latents
    from worldsim.training.train_dynamics import windows_to_device
    from worldsim.world_model import load_dynamics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["worldsim/assets/crafter-default"],
                        help="bundles (their dynamics and VAE); the VAEs must be the same")
    parser.add_argument("--data", default="data/crafter-heldout",
                        help="a dataset, encoded with the bundles' VAE if it is not yet")
    parser.add_argument("--levels", type=float, nargs="+",
                        default=[0.033, 0.1, 0.36, 1.0, 2.15])
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=2, help="noise draws averaged")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae_path = f"{args.checkpoints[0]}/vae"
    vae = VAE.from_checkpoint(vae_path)
    store = EpisodeStore(args.data)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        tag = ensure_latents(vae, store, vae_path)
    results = {}
    for checkpoint in args.checkpoints:  # refused if not trained on the first one's VAE
        model, _ = load_dynamics(checkpoint, vae_fingerprint=vae.latent_fingerprint())
        own = model.config.diffusion
        windows = WindowDataset(store, "val", length=model.config.dit.window, latents=tag)
        picks = np.unique(np.linspace(0, len(windows) - 1, args.windows).astype(int))
        batch = windows_to_device("cpu", collate([windows[i] for i in picks]))
        rows = {}
        for level in args.levels:
            fixed = dataclasses.replace(own, train_p_mean=math.log(level), train_p_std=0.0,
                                        train_second_share=0.0, train_sigma_min=0.0,
                                        train_sigma_max=math.inf)
            model.config = dataclasses.replace(model.config, diffusion=fixed)
            with torch.no_grad():
                losses = [model.loss(batch["latents"], batch["actions"], batch["rewards"],
                                     batch["terminated"],
                                     torch.Generator().manual_seed(seed),
                                     action_dropout=False)[1]["diffusion_loss"]
                          for seed in range(args.seeds)]
            share = training_share_at_or_below(
                level, p_mean=own.train_p_mean, p_std=own.train_p_std,
                second_share=own.train_second_share, second_p_mean=own.train_second_p_mean)
            rows[str(level)] = {"loss": float(np.mean(losses)), "train_share_at_or_below": share}
        model.config = dataclasses.replace(model.config, diffusion=own)
        results[checkpoint] = {"sigma_data": own.sigma_data, "train_p_mean": own.train_p_mean,
                               "train_second_share": own.train_second_share,
                               "windows": len(picks), "levels": rows}
    print(json.dumps({"data": args.data, "seeds": args.seeds, "models": results}, indent=1))


if __name__ == "__main__":
    main()
