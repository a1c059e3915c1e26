"""`worldsim encode`: write a dataset's latent cache with a trained VAE, so that dynamics
training never runs the encoder again.

    worldsim encode --vae RUN_OR_CHECKPOINT --data DATASET [--batch 256]

For every episode it writes DATASET/latents/<tag>/<episode>.npy, float16 (T+1, C, h, w),
the VAE's scaled latents (posterior means, unit variance per channel), through
`EpisodeStore.write_latents` (atomic). <tag> is the first 12 hex digits of the VAE's latent
fingerprint (`VAE.latent_fingerprint()`: its weight fingerprint, unless only its decoder was
refitted, which leaves the latents as they were), so two encoders never share a cache and
retraining a VAE never silently reuses stale latents. DATASET/latents/<tag>/vae.json describes the VAE
(checkpoint path, fingerprint, latent shape, shift and scale). Episodes already encoded are
skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldsim.data.store import EpisodeStore, write_json_atomic
from worldsim.models.vae import VAE
from worldsim.runtime import autocast, configure
from worldsim.training.checkpoint import recorded_path

TAG_LENGTH = 12


@dataclass
class EncodeConfig:
    """Encode every episode of a dataset into the latent cache."""

    vae: Path
    """VAE checkpoint directory, or a `worldsim train vae` run directory (newest checkpoint)."""
    data: Path
    """Episode store directory."""
    batch: int = 256
    """Frames per encoder forward pass."""
    device: str | None = None
    """Device; default CUDA if available, else CPU."""
    bf16: bool = False
    """bf16 autocast for the encoder (faster on CPUs with bf16 units; stored latents are
    float16 either way)."""
    threads: int | None = None
    """torch intra-op threads (default: $WORLDSIM_THREADS or torch's choice)."""


def latent_tag(vae: VAE) -> str:
    """The latent cache directory name of `vae`."""
    return vae.latent_fingerprint()[:TAG_LENGTH]


def vae_description(vae: VAE, path: str | Path, frame_shape: tuple[int, ...]) -> dict:
    """The content of latents/<tag>/vae.json."""
    H, W = frame_shape[:2]
    return {"path": recorded_path(path), "fingerprint": vae.latent_fingerprint(),
            "tag": latent_tag(vae), "latent_shape": list(vae.latent_shape(H, W)),
            "dtype": "float16", **vae.describe()}


def ensure_latents(vae: VAE, store: EpisodeStore, vae_path: str | Path, is_main: bool = True
                   ) -> str:
    """The latent cache tag of `vae` on `store`, encoding the episodes it lacks first (on the
    main process; other ranks of a distributed run cannot, and say how to). Training tasks
    that read latents call this at construction."""
    tag = latent_tag(vae)
    if any(not store.has_latents(tag, n) for n in store.names):
        if not is_main:
            raise RuntimeError(f"{store.root} lacks latents for VAE {tag}; run "
                               f"`worldsim encode --vae {vae_path} --data {store.root}` first")
        print(f"encoding {store.root} with VAE {tag} (the latent cache is missing)", flush=True)
        encode_dataset(vae, store, vae_path=vae_path)
    return tag


def encode_dataset(vae: VAE, store: EpisodeStore, batch: int = 256, bf16: bool = False,
                   vae_path: str | Path = "", progress: bool = True) -> dict:
    """Encode every episode of `store` not yet in the cache. Returns a summary dict
    ({"tag", "episodes", "skipped", "frames", "seconds", "frames_per_s"})."""
    frame_shape = store.frame_shape()
    vae.latent_shape(*frame_shape[:2])  # fails early if the factor does not divide H, W
    tag = latent_tag(vae)
    directory = store.latent_dir(tag)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "vae.json", vae_description(vae, vae_path, frame_shape))
    todo = [n for n in store.names if not store.has_latents(tag, n)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(store.length(n) + 1 for n in todo), unit="frame",
                   dynamic_ncols=True)
    frames_done, start = 0, time.perf_counter()
    for name in todo:
        frames = store.load(name).frames  # memory-mapped (T+1, H, W, 3)
        chunks = []
        for i in range(0, len(frames), batch):
            with autocast(vae.device, bf16):
                z = vae.encode_frames(np.asarray(frames[i:i + batch]))
            chunks.append(z.float().cpu().numpy().astype(np.float16))
            if bar is not None:
                bar.update(min(batch, len(frames) - i))
        store.write_latents(tag, name, np.concatenate(chunks))
        frames_done += len(frames)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    return {"tag": tag, "directory": str(directory), "episodes": len(todo),
            "skipped": len(store) - len(todo), "frames": frames_done,
            "seconds": round(seconds, 2),
            "frames_per_s": round(frames_done / seconds, 1) if frames_done else 0.0}


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(EncodeConfig, args=argv)
    configure(cfg.threads)
    from worldsim.runtime import choose_device

    vae = VAE.from_checkpoint(cfg.vae, device=choose_device(cfg.device))
    store = EpisodeStore(cfg.data)
    with torch.inference_mode():
        summary = encode_dataset(vae, store, cfg.batch, cfg.bf16, vae_path=vae.source)
    print(f"encoded {summary['episodes']} episodes ({summary['frames']} frames, "
          f"{summary['frames_per_s']} frames/s), skipped {summary['skipped']} already "
          f"encoded; latents in {summary['directory']}", flush=True)
