"""Frame VAE speed: encode and decode frames/s at batch 1 and 64, fp32 vs bf16 autocast,
1 vs 2 torch threads, weights in PyTorch's default layout vs channels-last (what
`WorldModel` uses), and the frame refiner that a bundle may run after each decode, all in
one run (timings on a shared machine drift 10-25% between runs,
so only compare numbers from the same run).

    python benchmarks/vae_speed.py [--vae RUN_OR_CHECKPOINT] [--refiner RUN_OR_CHECKPOINT]
                                   [--out vae_speed.json]

Each case times `repeats` calls after `warmup` calls and reports the median wall time per
call, frames/s from it, and the median process CPU time per call (which, unlike wall time,
excludes waiting for a core that another process holds; with 1 thread it is the cleanest
figure on a busy machine). Without --vae (--refiner) the default `VAEConfig`
(`RefinerConfig`) is timed with random weights (speed does not depend on the values). Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from worldsim.models.refiner import FrameRefiner, load_refiner
from worldsim.models.vae import VAE, VAEConfig
from worldsim.runtime import autocast, configure

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass
class VAESpeedConfig:
    """Time the frame VAE's encoder and decoder."""

    vae: Path | None = None
    """VAE checkpoint or training run; default: the default VAEConfig, random weights."""
    refiner: Path | None = None
    """Frame refiner checkpoint or training run; default: the default RefinerConfig."""
    height: int = 64
    """Frame height."""
    width: int = 64
    """Frame width."""
    batches: tuple[int, ...] = (1, 64)
    """Batch sizes to time."""
    threads: tuple[int, ...] = (1, 2)
    """torch thread counts to time."""
    layouts: tuple[str, ...] = ("contiguous", "channels_last")
    """Memory formats of the convolution weights to time."""
    repeats: int = 30
    """Timed calls per case at batch 1 (fewer at larger batches, at least 5)."""
    warmup: int = 3
    """Untimed calls before each case."""
    out: Path | None = None
    """Also write the JSON here."""


def time_calls(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) per call of `fn`."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def run(cfg: VAESpeedConfig) -> dict:
    configure()
    vae = (VAE.from_checkpoint(cfg.vae) if cfg.vae else VAE(VAEConfig())).eval()
    refiner = load_refiner(cfg.refiner)[0] if cfg.refiner else FrameRefiner().eval()
    C, h, w = vae.latent_shape(cfg.height, cfg.width)
    results = []
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        for batch in cfg.batches:
            frames = torch.randint(0, 256, (batch, cfg.height, cfg.width, 3), dtype=torch.uint8)
            latents = torch.randn(batch, C, h, w)
            repeats = max(5, cfg.repeats // max(1, batch // 8))
            for layout in cfg.layouts:
                for net in (vae, refiner):
                    net.to(memory_format=MEMORY_FORMATS[layout])
                for precision in ("fp32", "bf16"):
                    bf16 = precision == "bf16"
                    ops = {"encode": lambda f=frames: vae.encode_frames(f),
                           "decode": lambda z=latents: vae.decode_frames(z),
                           "refine": lambda f=frames: refiner.refine(f, f, f)}
                    for op, fn in ops.items():
                        def call(fn=fn, bf16=bf16):
                            with torch.inference_mode(), autocast("cpu", bf16):
                                fn()
                        wall, cpu = time_calls(call, repeats, cfg.warmup)
                        results.append({"op": op, "batch": batch, "precision": precision,
                                        "layout": layout, "threads": threads,
                                        "ms_per_call": round(wall * 1e3, 3),
                                        "ms_per_frame": round(wall * 1e3 / batch, 3),
                                        "frames_per_s": round(batch / wall, 1),
                                        "cpu_ms_per_call": round(cpu * 1e3, 3)})
    decode_1 = [r for r in results if r["op"] == "decode" and r["batch"] == 1]
    best = min(decode_1, key=lambda r: r["ms_per_call"]) if decode_1 else None
    return {
        "benchmark": "vae_speed",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_average": list(os.getloadavg())},
        "vae": {"source": getattr(vae, "source", None), "config": asdict(vae.cfg),
                "parameters": sum(p.numel() for p in vae.parameters()),
                "frame": [cfg.height, cfg.width, 3], "latent": [C, h, w]},
        "refiner": {"config": asdict(refiner.cfg),
                    "parameters": sum(p.numel() for p in refiner.parameters())},
        "results": results,
        "best_single_frame_decode": best,
    }


def main(argv: list[str] | None = None) -> dict:
    import tyro

    cfg = tyro.cli(VAESpeedConfig, args=argv)
    report = run(cfg)
    text = json.dumps(report, indent=2)
    print(text)
    if cfg.out:
        cfg.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
