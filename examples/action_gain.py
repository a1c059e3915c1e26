"""How much a dynamics model reads the action, on windows of recorded play.

    python examples/action_gain.py --checkpoint worldsim/assets/crafter-default --data data/crafter

Takes validation windows of the model's length from a dataset, and measures the denoising loss
with each window's own actions against the same windows and noise under another window's
actions (`DynamicsModel.action_gain`), averaged over a few noise draws: 0 when the prediction
ignores the action. Prints JSON. The training evaluation logs the same measure on its own
validation windows as `val_action_gain`.

The loss is taken at the default training noise levels for the model's sigma_data, so models
trained with `--noise-shift` compare with the others (`--levels model` takes the model's own,
as `val_action_gain` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch


def main() -> None:
    from worldsim.data.store import EpisodeStore, WindowDataset, collate
    from worldsim.diffusion.edm import default_train_p_mean
    from worldsim.models.vae import VAE
    from worldsim.runtime import autocast
    from worldsim.training.encode import ensure_latents
    from worldsim.training.train_dynamics import windows_to_device
    from worldsim.world_model import load_dynamics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="worldsim/assets/crafter-default",
                        help="a bundle (its dynamics and VAE)")
    parser.add_argument("--data", default="data/crafter",
                        help="a dataset, encoded with the bundle's VAE if it is not yet")
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3, help="noise draws averaged")
    parser.add_argument("--levels", choices=("default", "model"), default="default",
                        help="training noise levels of the loss: the defaults for the model's "
                             "sigma_data, or the model's own (shifted by --noise-shift)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_dynamics(args.checkpoint)
    levels = model.config.diffusion
    if args.levels == "default":
        levels = dataclasses.replace(levels, train_p_mean=default_train_p_mean(levels.sigma_data),
                                     train_second_share=0.0)
        model.config = dataclasses.replace(model.config, diffusion=levels)
    vae_path = f"{args.checkpoint}/vae"
    store = EpisodeStore(args.data)
    tag = ensure_latents(VAE.from_checkpoint(vae_path), store, vae_path)
    windows = WindowDataset(store, "val", length=model.config.dit.window, latents=tag)
    picks = np.unique(np.linspace(0, len(windows) - 1, args.windows).astype(int))
    batch = windows_to_device("cpu", collate([windows[i] for i in picks]))
    window = (batch["latents"], batch["actions"], batch["rewards"], batch["terminated"])
    with autocast(torch.device("cpu"), True):
        gain = np.mean([model.action_gain(*window, seed=seed) for seed in range(args.seeds)])
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "windows": len(picks),
                      "seeds": args.seeds, "train_p_mean": levels.train_p_mean,
                      "action_gain": float(gain)}, indent=1))


if __name__ == "__main__":
    main()
