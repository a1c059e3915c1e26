"""Speed of the dynamics model: training windows/s, one imagined step (KV-cached: the sampler's
evaluations + the append pass) at batch 1 and 32, the same step without a cache (every
evaluation recomputes the whole window) as the reference, and the cost of a step late in a
long rollout vs early. fp32 vs bf16 autocast, and the step in fp32 with its matrix products
on bf16 operands (`bf16_matmuls`, oneDNN's implicit bf16 for fp32 matmuls on a CPU). Random
weights (speed does not depend on them).
Prints one JSON object.

Settings that are compared with each other are timed interleaved (A, B, A, B, ...), so a
change in the load of a shared machine hits both alike; each figure is the median and the
best (least disturbed) of its calls.

    python benchmarks/dit_step.py                       # presets S and M, windows 8 and 16
    python benchmarks/dit_step.py --presets S --windows 8 --long-steps 200
    python benchmarks/dit_step.py --presets XS --windows 4 --train-batch 32 --train-iters 8 \
        --step-batches 1 --num-steps 2 --long-steps 0     # the shipped Crafter DiT's size
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from gymnasium import spaces

from worldsim.diffusion.edm import Denoiser
from worldsim.diffusion.sampling import get_sampler
from worldsim.diffusion.schedules import karras_sigmas
from worldsim.models.dit import DIT_PRESETS, Conditioning
from worldsim.models.dynamics import DynamicsConfig, DynamicsModel
from worldsim.models.transformer import TeacherForcingAttention
from worldsim.runtime import autocast, configure

CRAFTER_ACTIONS = spaces.Discrete(17)


@dataclass
class Config:
    presets: tuple[str, ...] = ("S", "M")
    """Size presets to measure (keys of DIT_PRESETS)."""
    windows: tuple[int, ...] = (8, 16)
    """Attention windows W (frames) to measure; training windows have W frames."""
    train_batch: int = 8
    """Training batch size (windows per step)."""
    train_iters: int = 4
    """Timed training iterations per setting (after one warm-up)."""
    step_batches: tuple[int, ...] = (1, 32)
    """Batch sizes of the imagined-step measurement."""
    step_iters: int = 6
    """Timed imagined steps per setting (after one warm-up)."""
    num_steps: int = 4
    """Sampler steps per frame (Euler: one network evaluation each) plus the append pass."""
    long_steps: int = 1000
    """Length of the batch-1 rollout whose late steps are compared with early ones."""
    latent: tuple[int, int, int] = (4, 16, 16)
    """Latent (C, h, w): a 64x64 frame through a factor-4 VAE."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    out: Path | None = None
    """Also write the JSON here (atomically)."""


def interleaved(fns: dict[str, Callable[[], object]], iters: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn `iters` times after one warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def ms(seconds: list[float]) -> dict:
    return {"median": round(1000 * statistics.median(seconds), 1),
            "best": round(1000 * min(seconds), 1)}


def rate(seconds: list[float], items: int) -> dict:
    return {"median": round(items / statistics.median(seconds), 2),
            "best": round(items / min(seconds), 2)}


def build(preset: str, window: int, latent: tuple[int, int, int]) -> DynamicsModel:
    torch.manual_seed(0)
    config = DynamicsConfig(dit=DIT_PRESETS[preset](window=window, in_channels=latent[0]))
    return DynamicsModel(config, CRAFTER_ACTIONS)


def random_actions(B: int, T: int) -> dict[str, torch.Tensor]:
    return {"action": torch.randint(0, CRAFTER_ACTIONS.n, (B, T))}


def training(model: DynamicsModel, batch: int, frames: int, iters: int, latent) -> dict:
    """Windows per second of a full training step (loss, backward, AdamW), fp32 vs bf16, and
    in bf16 with the noisy frames' attention in its fused form (`scaled_dot_product_attention`
    per frame) against the explicit one a CPU uses (`TeacherForcingAttention`)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = (torch.randn(batch, frames, *latent), random_actions(batch, frames - 1),
            torch.zeros(batch, frames - 1), torch.zeros(batch, frames - 1, dtype=torch.bool))

    def one(bf16: bool, explicit: bool | None = None) -> None:
        TeacherForcingAttention.prefer_explicit = explicit
        try:
            with autocast("cpu", bf16):
                loss, _ = model.loss(*data)
        finally:
            TeacherForcingAttention.prefer_explicit = None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = interleaved({"fp32": lambda: one(False), "bf16": lambda: one(True),
                         "bf16_fused_attention": lambda: one(True, explicit=False)}, iters)
    return {f"train_windows_per_s_{k}": rate(v, batch) for k, v in times.items()}


@contextlib.contextmanager
def bf16_matmuls():
    """fp32 matrix products run with bf16 operands and fp32 sums inside the block (oneDNN's
    `fp32_precision = "bf16"`, process-wide, so restored on leaving): no casts in Python, but
    oneDNN converts the fp32 weights on every call. Measured as a step of the shipped DiT at
    batch 1 it was slower than plain fp32 (docs/DESIGN-NOTES.md), so the simulator does not
    use it; kept here so that the comparison can be rerun."""
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def precision(setting: bool | str):
    """The context of a precision setting: False fp32, True bf16 autocast, "bf16_matmuls"."""
    return bf16_matmuls() if setting == "bf16_matmuls" else autocast("cpu", setting)


class CachedStepper:
    """Takes one KV-cached step of a batch of B rollouts per call (started from a full window
    of context unless `context` says otherwise)."""

    def __init__(self, model: DynamicsModel, B: int, bf16: bool | str, num_steps: int, latent,
                 context: int | None = None):
        self.model, self.bf16, self.num_steps = model, bf16, num_steps
        self.generator = torch.Generator().manual_seed(0)
        K = context or model.config.dit.window - 1
        with precision(bf16):
            self.state = model.start(torch.randn(B, K, *latent), random_actions(B, K - 1),
                                     self.generator)
        self.actions = {"action": torch.randint(0, CRAFTER_ACTIONS.n, (B,))}

    def __call__(self):
        with precision(self.bf16):
            return self.model.step(self.state, self.actions, self.generator,
                                   num_steps=self.num_steps)


def uncached_stepper(model: DynamicsModel, B: int, bf16: bool, num_steps: int,
                     latent) -> Callable[[], object]:
    """The same step without a cache: every network evaluation runs the whole window (W-1
    context frames + the new one, each with the frame before it as its `previous` input),
    then one more pass for the heads."""
    dcfg = model.config.diffusion
    W = model.config.dit.window
    context = torch.randn(B, W - 1, *latent)
    emb = model.embed_actions(random_actions(B, W - 1), W).detach()
    denoiser = Denoiser(model.dit, dcfg.sigma_data)
    ctx_sigma = torch.full((B, W - 1), dcfg.context_sigma)
    previous = torch.cat([context[:, :1], context], 1)  # (B, W, ...): the frame before each
    sigmas = karras_sigmas(num_steps, dcfg.sample_sigma_min, dcfg.sample_sigma_max, dcfg.rho)

    def whole_window(x, sigma, cond):
        xs = torch.cat([context, x], 1)
        return denoiser(xs, torch.cat([ctx_sigma, sigma[:, None]], 1),
                        Conditioning(emb, previous=previous))[:, -1:]

    @torch.no_grad()
    def step():
        with autocast("cpu", bf16):
            x = get_sampler("euler")(whole_window, torch.randn(B, 1, *latent) * sigmas[0],
                                     sigmas, None)
            return whole_window(x, torch.full((B,), dcfg.context_sigma), None)
    return step


def imagined_steps(model: DynamicsModel, batches: tuple[int, ...], iters: int, num_steps: int,
                   latent) -> dict:
    model.eval()
    out: dict = {}
    for B in batches:
        fns: dict[str, Callable[[], object]] = {
            f"step_ms_b{B}_{name}": CachedStepper(model, B, bf16, num_steps, latent)
            for name, bf16 in (("fp32", False), ("bf16", True), ("bf16_matmuls", "bf16_matmuls"))}
        if B == 1:  # the no-cache reference, at batch 1
            fns.update({f"uncached_step_ms_b1_{name}": uncached_stepper(model, 1, bf16,
                                                                        num_steps, latent)
                        for name, bf16 in (("fp32", False), ("bf16", True))})
        out.update({k: ms(v) for k, v in interleaved(fns, iters).items()})
    return out


def long_rollout(model: DynamicsModel, steps: int, bf16: bool, num_steps: int, latent) -> dict:
    """Per-step cost late in one batch-1 rollout (steps - 10 .. steps) vs early in another
    (5 .. 15), timed interleaved."""
    model.eval()
    late = CachedStepper(model, 1, bf16, num_steps, latent, context=1)
    for _ in range(steps - 12):  # advance the long rollout (the warm-up adds one more)
        late()
    early = CachedStepper(model, 1, bf16, num_steps, latent, context=1)
    for _ in range(4):
        early()
    times = interleaved({"early": early, "late": late}, 11)
    e, lt = ms(times["early"]), ms(times["late"])
    return {"steps": steps, "bf16": bf16,
            "frames_generated": {"early": int(early.state.position[0]) - 1,
                                 "late": int(late.state.position[0]) - 1},
            "ms_early": e, "ms_late": lt,
            "ratio_late_over_early": {k: round(lt[k] / e[k], 3) for k in e},
            "cache_bytes": late.state.cache.nbytes()}


def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(Config, args=argv)
    configure(threads=cfg.threads or None)
    latent = tuple(cfg.latent)
    result: dict = {
        "benchmark": "dit_step",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "latent": list(latent), "train_batch": cfg.train_batch,
        "sampler": f"euler, {cfg.num_steps} steps + 1 append pass",
        "note": "median and best of interleaved calls; training in windows of W frames per s",
        "presets": {},
    }
    for preset in cfg.presets:
        entry: dict = {}
        for window in cfg.windows:
            model = build(preset, window, latent)
            entry.setdefault("params", sum(p.numel() for p in model.parameters()))
            w = {"tokens_per_frame": (latent[1] // 2) * (latent[2] // 2),
                 **training(model, cfg.train_batch, window, cfg.train_iters, latent),
                 **imagined_steps(model, cfg.step_batches, cfg.step_iters, cfg.num_steps,
                                  latent)}
            print(f"{preset} W={window}: {w}", file=sys.stderr, flush=True)
            entry[f"window_{window}"] = w
        if cfg.long_steps:
            window = cfg.windows[0]
            w = entry[f"window_{window}"]
            bf16 = w["step_ms_b1_bf16"]["median"] < w["step_ms_b1_fp32"]["median"]
            entry["long_rollout"] = {"window": window, **long_rollout(
                build(preset, window, latent), cfg.long_steps, bf16, cfg.num_steps, latent)}
            print(f"{preset} long rollout: {entry['long_rollout']}", file=sys.stderr, flush=True)
        result["presets"][preset] = entry
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if cfg.out is not None:
        tmp = cfg.out.with_name(cfg.out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, cfg.out)
    return result


if __name__ == "__main__":
    main()
