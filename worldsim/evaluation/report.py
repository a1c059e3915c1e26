"""`worldsim eval`: evaluate a checkpoint bundle against real validation data and write a
report: metrics.json, report.md and PNG figures (plus a GIF of dream vs real).

    worldsim eval --checkpoint BUNDLE --data DATASET [--out DIR] [--episodes N] [--quick]
    worldsim eval --checkpoint BUNDLE --parts teacher_forced open_loop     # some parts only

Parts (DESIGN.md, "Evaluation protocol"), each beside references measured on the same frames:

    vae              VAE reconstruction PSNR / SSIM of validation frames
    teacher_forced   next frame from K real frames at 1, 2, 4, 8, 16 sampler steps, beside
                     copy-last and the VAE round trip of the real frame (the decoder's ceiling)
    open_loop        PSNR / SSIM against horizon (1, 8, 32, 128) with the recorded actions
    reward           precision / recall of nonzero rewards and of terminations
    controllability  inverse-dynamics accuracy on dream vs real transitions (Discrete actions)
    consistency      walk k steps out and back; the returning view vs the start frame
    stability        a long dream's frame statistics against the spread of real frames

Defaults measure the full protocol (several minutes on a CPU); `--quick` shrinks every
sample for a smoke run. Every part is seeded (`--seed`): the same command gives the same
numbers. The timing of each part is printed and saved.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Frames of the real-vs-dream GIF (the open loop's first steps): enough to see the world
# scroll, small enough for a README.
GIF_FRAMES = 64
# How the report names the precision it ran at (`EvalConfig.precision`).
PRECISION_NAMES = {False: ", fp32", True: ", bf16 autocast",
                   "frames": ", bf16 autocast on the frame networks (DiT in fp32)"}

# Consistency compares views by the PSNR of the mean MSE over starts (see part_consistency).
CONSISTENCY_PSNR = "psnr_of_mean_mse"

PARTS = ("vae", "teacher_forced", "open_loop", "reward", "controllability", "consistency",
         "stability")

# Sample sizes of a full run and of --quick. A full run's teacher-forced sample of 512
# transitions gives a standard error of ~0.1 dB on mean PSNR; the open loop's 16 rollouts
# ~0.3 dB at long horizons; 2000 steps of stability is the target. The out-and-back
# walks need 96 starts: only about a third of real k=4 walks come back (35 of 96 in the shipped
# model's report; the rest are blocked by trees, water or stone), and 16 left 4 to compare on.
FULL = {"tf_transitions": 512, "rollouts": 16, "reward_negatives": 2048, "vae_frames": 2048,
        "idm_steps": 3000, "idm_real_transitions": 5000, "consistency_starts": 96,
        "stability_steps": 2000, "stability_rollouts": 4}
QUICK = {"tf_transitions": 24, "rollouts": 2, "reward_negatives": 64, "vae_frames": 64,
         "idm_steps": 200, "idm_real_transitions": 256, "consistency_starts": 2,
         "stability_steps": 100, "stability_rollouts": 1}


@dataclass
class EvalConfig:
    """Evaluate a world-model bundle against real validation episodes."""

    checkpoint: Path
    """Checkpoint bundle directory (`worldsim.load` reads it)."""
    data: Path | None = None
    """Episode store to evaluate on (its validation split); default: the dataset recorded in
    the bundle's config."""
    out: Path | None = None
    """Output directory (default: BUNDLE/eval if writable, else ./eval-<bundle name>)."""
    episodes: int | None = None
    """Use only this many validation episodes (evenly spread; default: all)."""
    quick: bool = False
    """Small samples everywhere (a smoke run); explicit sizes below still win."""
    parts: tuple[str, ...] = PARTS
    """Parts to run: vae teacher_forced open_loop reward controllability consistency
    stability."""
    seed: int = 0
    """Seed of every sample and of the model's noise."""
    device: str | None = None
    """Device (default: CUDA if available, else CPU)."""
    bf16: bool = False
    """Run the model under bf16 autocast; default fp32."""
    bf16_frames: bool = False
    """Run only the frame networks (VAE, refiner, reward model) under bf16 autocast, the DiT in
    fp32 (the dream env's bf16="frames", `worldsim play --bf16-frames`)."""
    threads: int = 0
    """torch threads (0: $WORLDSIM_THREADS or torch's default)."""
    context: int = 0
    """Real context frames K given to the model (0: the DiT's window minus one)."""
    guidance: float | None = None
    """Classifier-free guidance scale on the action for every dream (None: the bundle's)."""
    sampling_steps: int | None = None
    """Sampler steps per dream frame for every dream but teacher forcing, which compares the
    counts of --tf-steps (None: the bundle's). More steps draw a sample where one step draws
    the expected frame (docs/DESIGN-NOTES.md, long dreams)."""
    refiner_blend: Literal["soft", "hard"] | None = None
    """How the refiner blends its sources (None: the bundle's setting; see `worldsim bundle
    --refiner-blend`)."""
    feedback: bool | None = None
    """Dreams continue from the encoding of the refiner's frames (None: the bundle's setting;
    see `worldsim bundle --feedback`)."""
    batch_size: int = 32
    """Rows per model call."""
    tf_transitions: int | None = None
    """Teacher-forced transitions, evenly spread over the validation episodes (512; quick 24)."""
    tf_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Sampler step counts (Euler: network evaluations) compared in teacher forcing."""
    horizons: tuple[int, ...] = (1, 8, 32, 128)
    """Open-loop horizons; those longer than the episodes allow are skipped."""
    rollouts: int | None = None
    """Open-loop rollouts (16; quick 2)."""
    reward_negatives: int | None = None
    """Transitions without reward or termination sampled for the heads' precision (every
    rewarded or terminal transition is used) (2048; quick 64)."""
    vae_frames: int | None = None
    """Validation frames for VAE reconstruction (2048; quick 64)."""
    idm_steps: int | None = None
    """Training steps of the inverse-dynamics model if it is not cached (3000; quick 200)."""
    idm_batch_size: int = 64
    """Batch size of the inverse-dynamics model's training."""
    idm_cache: Path | None = None
    """Where trained inverse-dynamics models are cached (default: DATA/idm if writable,
    else OUT/idm)."""
    idm_real_transitions: int | None = None
    """Real validation transitions the inverse-dynamics model is scored on (5000; quick 256)."""
    consistency_ks: tuple[int, ...] = (1, 2, 4, 8)
    """Walk lengths k (k steps out, k back)."""
    consistency_starts: int | None = None
    """Start states of the out-and-back walks (96; quick 2)."""
    replay: bool = True
    """Replay the real game from each episode's seed for the consistency reference."""
    stability_steps: int | None = None
    """Length of the stability dream (2000; quick 100)."""
    stability_rollouts: int | None = None
    """Parallel stability dreams (4; quick 1)."""
    stability_every: int = 250
    """Snapshot and table interval of the stability dream (shrunk for short dreams)."""
    gif: bool = True
    """Also write a GIF of real vs dream (open loop)."""

    def size(self, name: str) -> int:
        """A sample size: the explicit value, else the quick or full default."""
        value = getattr(self, name)
        return int(value) if value is not None else (QUICK if self.quick else FULL)[name]

    @property
    def precision(self) -> bool | str:
        """The `bf16` setting the model runs under (`worldsim.runtime.autocast`)."""
        from worldsim.runtime import bf16_setting

        return bf16_setting(self.bf16, self.bf16_frames)


# ---------------------------------------------------------------------- small helpers
def _json_safe(value: Any) -> Any:
    """numpy scalars to Python, non-finite floats to None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _f(value: Any, digits: int = 2) -> str:
    """A table cell: a number to `digits` decimals, '–' for missing / NaN."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{100 * v:.1f}%" if math.isfinite(v) else "–"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shown_path(path: str | Path) -> str:
    """A path as a report shows it: relative to the working directory when inside it (so a
    report committed beside the project names no machine's directories), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def action_names_of(store) -> list[str] | None:
    """Names of a Discrete action space's actions, from the env (its `action_names`), or
    None when the env cannot be made here or does not name them."""
    from gymnasium import spaces

    if not isinstance(store.action_space, spaces.Discrete):
        return None
    try:
        from worldsim.data.collect import make_env

        env = make_env(store.env_id, store.frame_shape()[:2], store.meta.get("env_kwargs") or {})
    except Exception:  # an env missing here only costs the names
        return None
    try:
        names = getattr(env.unwrapped, "action_names", None)
    finally:
        env.close()
    if names is None or len(names) != store.action_space.n:
        return None
    return [str(n) for n in names]


# ---------------------------------------------------------------------- the evaluation
class Evaluation:
    """One evaluation run: loads the model and data once, runs the requested parts, and
    collects metrics, figures and report sections."""

    def __init__(self, cfg: EvalConfig, log=print):
        import torch

        import worldsim
        from worldsim.data.store import EpisodeStore
        from worldsim.evaluation.fidelity import load_episodes, spread
        from worldsim.runtime import configure
        from worldsim.spaces import space_to_json

        unknown = sorted(set(cfg.parts) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
        self.cfg, self.log = cfg, log
        configure(cfg.threads or None)
        self.wm = worldsim.load(cfg.checkpoint, device=cfg.device)
        if cfg.guidance is not None:
            self.wm.guidance = float(cfg.guidance)
        if cfg.sampling_steps is not None:
            if cfg.sampling_steps < 1:
                raise ValueError(f"--sampling-steps must be at least 1, got {cfg.sampling_steps}")
            self.wm.num_steps = int(cfg.sampling_steps)
        if (cfg.refiner_blend == "hard" or cfg.feedback) and self.wm.refiner is None:
            raise ValueError(f"--refiner-blend hard and --feedback change how the frame refiner "
                             f"is used; {cfg.checkpoint} has no refiner")
        if cfg.refiner_blend is not None and self.wm.refiner is not None:
            self.wm.refiner.hard_blend = cfg.refiner_blend == "hard"
        if cfg.feedback is not None:
            self.wm.feedback = bool(cfg.feedback)
        data = cfg.data or self.wm.config.get("data", {}).get("path")
        if data is None:
            raise ValueError(f"{cfg.checkpoint} records no dataset; pass --data")
        self.data = Path(data)
        self.store = EpisodeStore(self.data)
        if space_to_json(self.store.action_space) != space_to_json(self.wm.action_space):
            raise ValueError(f"{self.data} has the action space {self.store.action_space}, "
                             f"the model {cfg.checkpoint} takes {self.wm.action_space}")
        if self.store.frame_shape() != tuple(self.wm.observation_space.shape):
            raise ValueError(f"{self.data} holds frames of shape {self.store.frame_shape()}, "
                             f"the model {cfg.checkpoint} makes "
                             f"{tuple(self.wm.observation_space.shape)}")
        names = [n for n in self.store.split("val") if self.store.length(n) > 0]
        if not names:
            raise ValueError(f"{self.data} has no validation episodes")
        if cfg.episodes is not None:
            names = [names[i] for i in spread(len(names), cfg.episodes)]
        self.val_names = names
        self.episodes = load_episodes(self.store, names)
        self.context = max(1, min(cfg.context or self.wm.window - 1, self.wm.window - 1))
        self.heads_steps = int(self.wm.num_steps)
        self.out = self._out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        self.action_names = action_names_of(self.store)
        self.metrics: dict[str, Any] = {}
        self.sections: dict[str, str] = {}
        self.figures: dict[str, str] = {}
        self.timing: dict[str, float] = {}
        self._tf_run = None
        torch.manual_seed(cfg.seed)

    def _guidance_note(self) -> str:
        g = self.wm.guidance
        note = "" if g == 1 else (f", with classifier-free guidance {g:g} on the action (each "
                                  "sampler step runs the network on twice the rows)")
        if self.wm.refiner is not None and self.wm.refiner.hard_blend:
            note += ("; the frame refiner takes each pixel from its most likely source (hard "
                     "blend)")
        if self.wm.feedback:
            note += ("; each dream continues from the encoding of the frame the refiner shows "
                     "(feedback), not of the plain decode")
        return note

    def _out_dir(self) -> Path:
        if self.cfg.out is not None:
            return Path(self.cfg.out)
        bundle = Path(self.cfg.checkpoint)
        if os.access(bundle, os.W_OK):
            return bundle / "eval"
        return Path.cwd() / f"eval-{bundle.resolve().name}"

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        self.log(f"[eval] {name} ...")
        start = time.perf_counter()
        yield
        self.timing[name] = time.perf_counter() - start
        self.log(f"[eval] {name}: {self.timing[name]:.1f} s")

    def _figure(self, name: str, image) -> str:
        from worldsim.evaluation.plots import save_image

        save_image(image, self.out / name)
        self.figures[name] = name
        return name

    # ------------------------------------------------------------------ runs
    def run(self) -> dict[str, Any]:
        total = time.perf_counter()
        for part in PARTS:
            if part in self.cfg.parts:
                with self._timed(part):
                    getattr(self, f"part_{part}")()
        self.timing["total"] = time.perf_counter() - total
        self.write()
        return self.metrics

    def teacher_forced_run(self):
        """The teacher-forced run shared by `teacher_forced` and `controllability`: the
        sampler sweep, and the same steps under a different (counterfactual) action."""
        if self._tf_run is None:
            from gymnasium import spaces

            from worldsim.evaluation.fidelity import (
                all_transitions,
                derive_seed,
                spread,
                teacher_forced,
            )

            rows = all_transitions(self.episodes)
            picks = rows[spread(len(rows), self.cfg.size("tf_transitions"))]
            counter = None
            space = self.wm.action_space
            if isinstance(space, spaces.Discrete) and space.n > 1:
                # a uniformly drawn action other than the recorded one
                rng = np.random.default_rng(derive_seed(self.cfg.seed, 5))
                real = np.array([self.episodes[e].actions["action"][t] for e, t in picks])
                shift = rng.integers(1, space.n, len(picks))
                counter = {"action": (real - space.start + shift) % space.n + space.start}
            self._tf_run = teacher_forced(
                self.wm, self.episodes, picks, context=self.context,
                num_steps=self.cfg.tf_steps, heads_steps=self.heads_steps,
                counterfactual_actions=counter, batch_size=self.cfg.batch_size,
                seed=self.cfg.seed, bf16=self.cfg.precision)
        return self._tf_run

    # ------------------------------------------------------------------ parts
    def part_vae(self) -> None:
        from worldsim.evaluation.fidelity import (
            all_transitions,
            pair_metrics,
            round_trip,
            spread,
            summary,
        )
        from worldsim.evaluation.plots import frame_grid

        rows = all_transitions(self.episodes)
        rows = rows[spread(len(rows), self.cfg.size("vae_frames"))]
        real = np.stack([np.asarray(self.episodes[e].frames[t]) for e, t in rows])
        recon = round_trip(self.wm, real, self.cfg.precision)
        m = summary(pair_metrics(real, recon))
        self.metrics["vae"] = m
        show = spread(len(real), 8)
        fig = self._figure("vae_reconstruction.png", frame_grid(
            [real[show], recon[show]], ["real", "VAE"], scale=2,
            title="VAE reconstruction of validation frames"))
        self.sections["vae"] = (
            "## VAE reconstruction\n\n"
            f"{m['frames']} validation frames, encoded and decoded.\n\n"
            + _table(["PSNR (dB)", "PSNR of mean MSE (dB)", "SSIM"],
                     [[_f(m["psnr"]), _f(m["psnr_of_mean_mse"]), _f(m["ssim"], 3)]])
            + f"\n\n![VAE]({fig})\n")

    def part_teacher_forced(self) -> None:
        from worldsim.evaluation.fidelity import spread, teacher_forced_metrics
        from worldsim.evaluation.plots import Series, frame_grid, line_plot, stack_images

        run = self.teacher_forced_run()
        m = teacher_forced_metrics(run)
        self.metrics["teacher_forced"] = m
        steps = sorted(int(n) for n in m["num_steps"])
        plots = []
        for part, label in (("all", "all transitions"),
                            ("changed", "transitions where the frame changes")):
            ys = [m["num_steps"][str(n)][part]["psnr"] for n in steps]
            plots.append(line_plot([
                Series("dream", steps, ys),
                Series("copy-last", steps, [m["copy_last"][part]["psnr"]] * len(steps), dashed=True,
                       markers=False),
                Series("VAE ceiling", steps, [m["vae_ceiling"][part]["psnr"]] * len(steps),
                       dashed=True,
                       markers=False),
            ], title=f"Teacher-forced next-frame PSNR, {label}", xlabel="network evaluations "
               "per frame (Euler steps)", ylabel="PSNR (dB)", log_x=True))
        fig = self._figure("teacher_forced.png", stack_images(plots))
        changed = np.flatnonzero(run.changed)
        show = changed[spread(len(changed), 8)] if len(changed) else spread(len(run.picks), 8)
        strip = self._figure("teacher_forced_strip.png", frame_grid(
            [run.current[show], run.target[show], run.dream[self.heads_steps][show],
             run.target_vae[show]],
            ["frame t", "real t+1", f"dream t+1 ({self.heads_steps} steps)", "VAE of t+1"],
            title="Teacher-forced next frames (transitions where the frame changes, evenly "
                  "spread)"))
        rows = []
        for n in steps:
            e = m["num_steps"][str(n)]
            rows.append([f"dream, {n} step{'s' * (n > 1)}" + (" (default)" if n ==
                                                              self.heads_steps else ""),
                         _f(e["all"]["psnr"]), _f(e["all"]["ssim"], 3),
                         _f(e["all"]["psnr_of_mean_mse"]), _f(e["changed"]["psnr"]),
                         _f(e["changed"]["ssim"], 3), _f(e["changed"]["psnr_gap_vs_copy_last_db"])])
        if self.wm.refiner is not None:
            e = m["dream_decoded"]
            rows.append([f"dream, {self.heads_steps} step{'s' * (self.heads_steps > 1)}, plain "
                         "VAE decode (no frame refiner)", _f(e["all"]["psnr"]),
                         _f(e["all"]["ssim"], 3), _f(e["all"]["psnr_of_mean_mse"]),
                         _f(e["changed"]["psnr"]), _f(e["changed"]["ssim"], 3),
                         _f(e["changed"]["psnr_gap_vs_copy_last_db"])])
        for name, key in (("copy-last baseline", "copy_last"),
                          ("copy-last through the VAE (a dream of no change)", "copy_last_vae"),
                          ("VAE round trip (ceiling)", "vae_ceiling")):
            e = m[key]
            rows.append([name, _f(e["all"]["psnr"]), _f(e["all"]["ssim"], 3),
                         _f(e["all"]["psnr_of_mean_mse"]), _f(e["changed"]["psnr"]),
                         _f(e["changed"]["ssim"], 3), ""])
        self.sections["teacher_forced"] = (
            "## Teacher-forced next frame\n\n"
            f"{m['transitions']} transitions evenly spread over {len(self.episodes)} validation "
            f"episodes; the model gets the {m['context_frames']} real frames up to t (fewer at "
            "an episode's start) and the real action a_t, and predicts frame t+1. "
            f"{_pct(m['changed_share'])} of these transitions change the frame at all; on the "
            "others copy-last is exact and its PSNR is capped at 100 dB, so its mean PSNR over "
            "all transitions is inflated. The columns on changed transitions and the PSNR of "
            "the mean MSE are not distorted that way.\n\n"
            + _table(["predictor", "PSNR all", "SSIM all", "PSNR of mean MSE all",
                      "PSNR changed", "SSIM changed", "gap vs copy-last, changed (dB)"], rows)
            + f"\n\n![teacher forced]({fig})\n\n![strip]({strip})\n")

    def part_open_loop(self) -> None:
        from worldsim.evaluation.fidelity import open_loop, open_loop_metrics, spread
        from worldsim.evaluation.plots import (
            Series,
            frame_grid,
            line_plot,
            save_gif,
            stack_images,
        )

        run = open_loop(self.wm, self.episodes, context=self.context,
                        horizons=self.cfg.horizons, rollouts=self.cfg.size("rollouts"),
                        batch_size=self.cfg.batch_size, seed=self.cfg.seed, bf16=self.cfg.precision)
        if run is None:
            self.metrics["open_loop"] = {"skipped": "no validation episode is long enough"}
            self.sections["open_loop"] = ("## Open loop\n\nSkipped: no validation episode has "
                                          f"{self.context + 1} frames.\n")
            return
        m = open_loop_metrics(run)
        if self.wm.reencode:  # the same rollouts without it: what re-encoding changes
            plain = open_loop(self.wm, self.episodes, context=self.context,
                              horizons=self.cfg.horizons, rollouts=self.cfg.size("rollouts"),
                              batch_size=self.cfg.batch_size, seed=self.cfg.seed,
                              bf16=self.cfg.precision, reencode=False)
            m["without_reencoding"] = {h: e["dream"] for h, e in
                                       open_loop_metrics(plain)["horizons"].items()}
        self.metrics["open_loop"] = m
        c = m["curve"]
        plots = [line_plot([Series("dream", c["step"], c[f"dream_{k}"]),
                            Series("copy-last", c["step"], c[f"copy_last_{k}"], dashed=True),
                            Series("VAE round trip", c["step"], c[f"vae_{k}"], dashed=True)],
                           title=f"Open-loop {k.upper()} against horizon ({m['rollouts']} "
                                 "rollouts, recorded actions)",
                           xlabel="steps after the last real frame", ylabel=k.upper(),
                           log_x=True) for k in ("psnr", "ssim")]
        fig = self._figure("open_loop.png", stack_images(plots))
        L = run.real.shape[1]
        cols = [s for s in (1, 2, 4, 8, 16, 32, 64, 128) if s <= L]
        shown = min(4, len(run.starts))
        grid_rows, labels = [], []
        for r in range(shown):
            grid_rows += [run.real[r, [s - 1 for s in cols]], run.dream[r, [s - 1 for s in cols]]]
            labels += [f"real {r + 1}", f"dream {r + 1}"]
        strip = self._figure("open_loop_strip.png", frame_grid(
            grid_rows, labels, [f"t+{s}" for s in cols],
            title="Real vs dream, open loop from the same real context and actions"))
        gif_line = ""
        if self.cfg.gif:
            rows = spread(len(run.starts), 2)
            side = np.concatenate([np.concatenate([run.real[r], run.dream[r]], axis=2)
                                   for r in rows], axis=1)  # (L, rows*H, 2W, 3)
            save_gif(side[:GIF_FRAMES], self.out / "dream_vs_real.gif", fps=8, scale=2)
            self.figures["dream_vs_real.gif"] = "dream_vs_real.gif"
            gif_line = "\n\n![real (left) vs dream (right)](dream_vs_real.gif)"
        rows = []
        plain = m.get("without_reencoding")
        for h in run.horizons:
            e = m["horizons"][str(h)]
            rows.append([h, _f(e["dream"]["psnr"]), _f(e["copy_last"]["psnr"]),
                         _f(e["vae"]["psnr"]), _f(e["dream"]["psnr_gap_vs_copy_last_db"]),
                         _f(e["dream"]["ssim"], 3), _f(e["copy_last"]["ssim"], 3),
                         _f(e["vae"]["ssim"], 3)]
                        + ([_f(plain[str(h)]["psnr"]), _f(plain[str(h)]["ssim"], 3)]
                           if plain else []))
        plain_note = (" The last two columns run the same rollouts without re-encoding (each "
                      "sampled latent kept as sampled instead of passed through the VAE)."
                      if plain else "")
        skipped = (f" Horizons {m['skipped_horizons']} are skipped: no validation episode is "
                   "that long." if m["skipped_horizons"] else "")
        self.sections["open_loop"] = (
            "## Open loop\n\n"
            f"{m['rollouts']} rollouts from {m['context_frames']} real frames at seeded random "
            "points of the validation episodes, then only the recorded actions: frame t+h is "
            "compared with the real one. Copy-last predicts the last real frame forever; the "
            "VAE round trip of the real frame is the decoder's ceiling." + skipped
            + plain_note + "\n\n"
            + _table(["horizon", "PSNR dream", "PSNR copy-last", "PSNR VAE", "gap (dB)",
                      "SSIM dream", "SSIM copy-last", "SSIM VAE"]
                     + (["PSNR, no re-encoding", "SSIM, no re-encoding"] if plain else []),
                     rows)
            + f"\n\n![open loop]({fig})\n\n![strip]({strip}){gif_line}\n")

    def part_reward(self) -> None:
        from worldsim.evaluation.fidelity import (
            derive_seed,
            reward_model_on_recorded_frames,
            reward_termination_metrics,
            reward_termination_picks,
            teacher_forced,
        )

        picks = reward_termination_picks(self.episodes, self.cfg.size("reward_negatives"),
                                         np.random.default_rng(derive_seed(self.cfg.seed, 3)))
        run = teacher_forced(self.wm, self.episodes, picks.picks, context=self.context,
                             heads_steps=self.heads_steps, batch_size=self.cfg.batch_size,
                             seed=derive_seed(self.cfg.seed, 4), bf16=self.cfg.precision)
        m = reward_termination_metrics(run, picks)
        recorded = None
        if self.wm.reward_model is not None:
            from worldsim.runtime import autocast

            with autocast(self.wm.device, self.cfg.precision):
                recorded = reward_termination_metrics(
                    reward_model_on_recorded_frames(self.wm, run, self.cfg.batch_size), picks)
            m["reward_model_on_recorded_frames"] = recorded
        self.metrics["reward"] = m
        events = (("nonzero reward", "reward_nonzero"), ("positive reward", "reward_positive"),
                  ("negative reward", "reward_negative"), ("termination", "termination"))
        rows = [[name, m[key]["positives"], _f(m[key]["precision"], 3), _f(m[key]["recall"], 3),
                 _f(m[key]["f1"], 3)] for name, key in events]
        recorded_text = "" if recorded is None else (
            "\n\nThe same reward model reading the recorded frame t+1 instead of the sampled one "
            "(what it can do when the frame shows the event):\n\n"
            + _table(["event", "real events", "precision", "recall", "F1"],
                     [[name, recorded[key]["positives"], _f(recorded[key]["precision"], 3),
                       _f(recorded[key]["recall"], 3), _f(recorded[key]["f1"], 3)]
                      for name, key in events])
            + f"\n\nExpected reward there: {_f(recorded['expected_reward_achievement'], 3)} on "
              f"achievements, {_f(recorded['expected_reward_plain'], 4)} without an event.")
        who = ("the bundle's reward model (reading the frame before and the sampled frame)"
               if self.wm.reward_model is not None else "the dynamics model's heads")
        self.sections["reward"] = (
            "## Reward and termination\n\n"
            "Teacher-forced: from the real context the model steps with the real action "
            f"({self.heads_steps} sampler steps) and {who} predicts the transition's reward "
            "(the most likely value of its distribution) and termination (probability above "
            f"{m['termination_threshold']}). Every rewarded or terminal validation transition is "
            f"evaluated, and {m['negatives_sampled']} of the others, weighted so that precision "
            f"counts false alarms over all {m['transitions_represented']:.0f} transitions.\n\n"
            + _table(["event", "real events", "precision", "recall", "F1"], rows)
            + f"\n\nReward mean absolute error (expected value, weighted): "
              f"{_f(m['reward_mae_weighted'], 4)}. Expected reward on transitions that unlock an "
              f"achievement: {_f(m['expected_reward_achievement'], 3)}; on transitions without "
              f"any event: {_f(m['expected_reward_plain'], 4)} (what an agent in imagination "
              "learns from)." + recorded_text + "\n")

    def part_controllability(self) -> None:
        import torch

        from worldsim.evaluation.fidelity import spread
        from worldsim.evaluation.idm import (
            IDMConfig,
            Transitions,
            accuracy_table,
            default_cache_root,
            load_or_train_idm,
            num_discrete_actions,
        )
        from worldsim.evaluation.plots import bar_plot

        try:
            n = num_discrete_actions(self.wm.action_space)
        except ValueError as e:
            self.metrics["controllability"] = {"skipped": str(e)}
            self.sections["controllability"] = f"## Controllability\n\nSkipped: {e}.\n"
            return
        names = self.action_names or [str(a) for a in range(n)]
        config = IDMConfig(steps=self.cfg.size("idm_steps"), batch_size=self.cfg.idm_batch_size,
                           seed=self.cfg.seed)
        cache = self.cfg.idm_cache or default_cache_root(self.data, self.out / "idm")
        idm, info = load_or_train_idm(self.store, cache, config, self.wm.device, log=self.log)
        torch.manual_seed(self.cfg.seed)
        # Real validation transitions (a larger sample than the dream's, for per-action rates).
        val = Transitions(self.store, self.val_names)
        a, b, y = val.gather(spread(len(val), self.cfg.size("idm_real_transitions")))
        real_all = accuracy_table(idm.predict(a, b), y, n, names)
        run = self.teacher_forced_run()
        target = run.actions["action"].astype(np.int64) - int(self.wm.action_space.start)
        pred = {"real": idm.predict(run.current, run.target),
                "vae": idm.predict(run.current_vae, run.target_vae),
                "dream": idm.predict(run.current_shown, run.dream[self.heads_steps])}
        tables = {k: accuracy_table(v, target, n, names) for k, v in pred.items()}
        right = pred["real"] == target
        where = accuracy_table(pred["dream"][right], target[right], n, names)
        counter = None
        if run.counterfactual is not None:
            alt = run.counterfactual_actions["action"].astype(np.int64) - int(
                self.wm.action_space.start)
            counter = accuracy_table(idm.predict(run.current_shown, run.counterfactual), alt, n,
                                     names)
        ratio = tables["dream"]["accuracy"] / tables["real"]["accuracy"] \
            if tables["real"]["accuracy"] > 0 else float("nan")
        ratio_vae = tables["dream"]["accuracy"] / tables["vae"]["accuracy"] \
            if tables["vae"]["accuracy"] > 0 else float("nan")
        # the same dream transitions sampled with each step count of the teacher-forced run
        by_steps = {str(k): accuracy_table(idm.predict(run.current_shown, frames), target, n,
                                           names)["accuracy"] / max(tables["real"]["accuracy"], 1e-9)
                    for k, frames in sorted(run.dream.items())}
        m = {"idm": info, "real_validation": real_all, "paired": tables,
             "ratio_dream_to_real_by_sampler_steps": by_steps,
             "dream_where_real_right": where, "counterfactual": counter,
             "ratio_dream_to_real": ratio, "ratio_dream_to_vae": ratio_vae, "target_ratio": 0.9,
             "transitions": len(target)}
        self.metrics["controllability"] = m
        fig = self._figure("controllability.png", bar_plot(
            names, {"real": [tables["real"]["per_action"][a]["accuracy"] for a in names],
                    "VAE round trip": [tables["vae"]["per_action"][a]["accuracy"] for a in names],
                    "dream": [tables["dream"]["per_action"][a]["accuracy"] for a in names]},
            title=f"Inverse-dynamics accuracy per action ({len(target)} transitions)",
            ylabel="accuracy"))
        rows = [[a, real_all["per_action"][a]["count"], _pct(real_all["per_action"][a]["accuracy"]),
                 tables["real"]["per_action"][a]["count"],
                 _pct(tables["real"]["per_action"][a]["accuracy"]),
                 _pct(tables["vae"]["per_action"][a]["accuracy"]),
                 _pct(tables["dream"]["per_action"][a]["accuracy"]),
                 _pct(where["per_action"][a]["accuracy"]),
                 _pct(counter["per_action"][a]["accuracy"]) if counter else "–"]
                for a in names]
        trained = (f"trained now ({info.get('train_seconds', 0):.0f} s)" if info["trained_now"]
                   else "loaded from the cache")
        self.sections["controllability"] = (
            "## Action controllability\n\n"
            "An inverse-dynamics model (IDM: a small CNN reading frames t and t+1 and their "
            "difference) is trained once on real transitions of the training split and cached "
            f"by the data's fingerprint (`{info['path']}`, {trained}). It then names the action "
            "of real validation transitions and of dream transitions: the next frame imagined "
            "from the real context with the recorded action. The dream's pair is (frame t as "
            "the simulator shows it after a reset there, dream frame t+1): "
            + ("the real frame t, since this bundle's frame refiner draws each frame with the "
               "one before in view" if self.wm.refiner is not None else
               "the VAE round trip of frame t") + ". The 'VAE round trip' column, both frames "
            "through the decoder, isolates what the decoder alone costs.\n\n"
            + _table(["IDM on", "accuracy", "macro accuracy", "transitions"], [
                ["real, all validation transitions", _pct(real_all["accuracy"]),
                 _pct(real_all["macro_accuracy"]), real_all["count"]],
                ["real, the dream's transitions", _pct(tables["real"]["accuracy"]),
                 _pct(tables["real"]["macro_accuracy"]), tables["real"]["count"]],
                ["VAE round trip of those", _pct(tables["vae"]["accuracy"]),
                 _pct(tables["vae"]["macro_accuracy"]), tables["vae"]["count"]],
                ["dream", _pct(tables["dream"]["accuracy"]), _pct(tables["dream"]["macro_accuracy"]),
                 tables["dream"]["count"]],
                ["dream, where the IDM is right on real", _pct(where["accuracy"]),
                 _pct(where["macro_accuracy"]), where["count"]],
                ["dream under another (random) action", _pct(counter["accuracy"]) if counter
                 else "–", _pct(counter["macro_accuracy"]) if counter else "–",
                 counter["count"] if counter else 0]])
            + f"\n\n**Dream / real accuracy: {_pct(ratio)}** (target at least 90%); dream / VAE "
              f"round trip: {_pct(ratio_vae)}. With other sampler steps: "
            + ", ".join(f"{k} steps {_pct(v)}" for k, v in by_steps.items()) + ".\n\n"
            "Many actions have no visible effect in many states (in Crafter: `noop` and `do` "
            "facing grass look the same, moving into water or a tree only turns the player, "
            "crafting without a table changes nothing), so no IDM can name them from two frames "
            "and real accuracy is far below 100%. The row 'where the IDM is right on real' "
            "counts only transitions whose action is visible, and asks whether the dream shows "
            "it too. The counterfactual row steps the same context with a different, random "
            "action: a model that ignored actions and replayed the recorded future would fail "
            "it.\n\n"
            + _table(["action", "val count", "real (val)", "paired count", "real", "VAE",
                      "dream", "dream where real right", "dream, counterfactual"], rows)
            + f"\n\n![controllability]({fig})\n")

    def part_consistency(self) -> None:
        from worldsim.evaluation.fidelity import consistency, consistency_metrics
        from worldsim.evaluation.plots import Series, frame_grid, line_plot

        run = consistency(self.wm, self.store, self.episodes, context=self.context,
                          ks=self.cfg.consistency_ks, starts=self.cfg.size("consistency_starts"),
                          action_names=self.action_names, seed=self.cfg.seed,
                          bf16=self.cfg.precision, replay=self.cfg.replay)
        if isinstance(run, str):
            self.metrics["consistency"] = {"skipped": run}
            self.sections["consistency"] = f"## Consistency\n\nSkipped: {run}.\n"
            return
        m = consistency_metrics(run)
        self.metrics["consistency"] = m
        ks = run.ks
        k_entries = [m["k"][str(k)] for k in ks]
        series = [Series("dream vs start", ks,
                         [e["dream_vs_start"][CONSISTENCY_PSNR] for e in k_entries]),
                  Series("forgetful dream vs start", ks,
                         [e["forget_vs_start"][CONSISTENCY_PSNR] for e in k_entries], dashed=True)]
        if all("real_vs_start" in e for e in k_entries):
            series += [Series("real game vs start", ks,
                              [e["real_vs_start"][CONSISTENCY_PSNR] for e in k_entries]),
                       Series("dream vs real return", ks,
                              [e["dream_vs_real_return"][CONSISTENCY_PSNR] for e in k_entries])]
        series.append(Series("unrelated real view", ks,
                             [m["unrelated_view"][CONSISTENCY_PSNR]] * len(ks),
                             dashed=True, markers=False))
        fig = self._figure("consistency.png", line_plot(
            series, title=f"Out and back: the returning view ({m['starts']} starts)",
            xlabel="k (k steps out, k back)", ylabel="PSNR to the start frame (dB)", log_x=True))
        k_show = max([k for k in ks if k <= 4] or ks[:1])
        shown = min(4, len(run.starts))
        rows = []
        for s in range(shown):
            rows.append(np.stack([run.start[s], run.real_turn[k_show][s], run.dream_turn[k_show][s],
                                  run.real_return[k_show][s], run.dream_return[k_show][s],
                                  run.forget_return[k_show][s]]))
        strip = self._figure("consistency_strip.png", frame_grid(
            rows, [f"{run.walks[s][0]}" for s in range(shown)],
            ["start", "real turn", "dream turn", "real back", "dream back", "forgetful back"],
            title=f"k = {k_show}: out and back"))
        table = []
        for k, e in zip(ks, k_entries, strict=True):
            table.append([k, _f(e["dream_vs_start"][CONSISTENCY_PSNR]),
                          _f(e["forget_vs_start"][CONSISTENCY_PSNR]),
                          _f(e["dream_minus_forget_psnr_db"]),
                          _f(e.get("real_vs_start", {}).get(CONSISTENCY_PSNR)),
                          _f(e.get("dream_vs_real_return", {}).get(CONSISTENCY_PSNR)),
                          e.get("clean", {}).get("starts", "–"),
                          _f(e.get("clean", {}).get("dream_vs_start", {}).get(CONSISTENCY_PSNR)),
                          _f(e.get("clean", {}).get("forget_vs_start", {}).get(CONSISTENCY_PSNR)),
                          _f(e.get("clean", {}).get("real_vs_start", {}).get(CONSISTENCY_PSNR))])
        self.sections["consistency"] = (
            "## Consistency (out and back)\n\n"
            f"From {m['starts']} real start states (with {m['context_frames']} frames of real "
            "context) the dream walks k steps one way and k steps back "
            f"({', '.join(m['walks'])}); its returning view is compared with the start frame. "
            f"The real game does the same walk ({m['replay']}); blocked moves (water, trees, "
            "stone) or creatures make even the real return differ, so 'clean' repeats the "
            f"numbers on the starts where the real game came back (its return within "
            f"{m['clean_return_psnr_db']:.0f} dB PSNR of the start). The model that forgets is "
            "the same dream restarted at the turning point from its own frame alone: it has "
            "to invent whatever of the start is out of view there. The model's attention window "
            f"is {self.wm.window} frames, so walks with 2k >= {self.wm.window} end with the "
            "start frame out of its window. An unrelated real view scores "
            f"{_f(m['unrelated_view'][CONSISTENCY_PSNR])} dB. Every figure is the PSNR of the "
            "mean MSE over the starts: a mean of per-start PSNR would count a view returned "
            "pixel for pixel as 100 dB, which the frame refiner gives wherever it copies the "
            "start frame.\n\n"
            + _table(["k", "dream vs start", "forgetful vs start", "dream - forgetful (dB)",
                      "real game vs start", "dream vs real return", "clean starts",
                      "clean: dream", "clean: forgetful", "clean: real game"], table)
            + f"\n\n![consistency]({fig})\n\n![strip]({strip})\n")

    def part_stability(self) -> None:
        from worldsim.evaluation.fidelity import (
            STATISTIC_HELP,
            STATISTICS,
            stability,
            stability_metrics,
            stability_reference,
        )
        from worldsim.evaluation.plots import Series, frame_grid, line_plot, stack_images

        steps = self.cfg.size("stability_steps")
        every = self.cfg.stability_every if steps >= 2 * self.cfg.stability_every \
            else max(1, steps // 8)
        reference = stability_reference(self.episodes, self.wm, seed=self.cfg.seed,
                                        bf16=self.cfg.precision,
                                        crafter_player="crafter" in self.store.env_id.lower())
        run = stability(self.wm, reference, steps=steps,
                        rollouts=self.cfg.size("stability_rollouts"), every=every,
                        action_names=self.action_names, seed=self.cfg.seed, bf16=self.cfg.precision)
        m = stability_metrics(run, reference, every)
        if self.wm.reencode:  # the same dreams without it: what re-encoding changes
            plain = stability(self.wm, reference, steps=steps,
                              rollouts=self.cfg.size("stability_rollouts"), every=every,
                              action_names=self.action_names, seed=self.cfg.seed,
                              bf16=self.cfg.precision, reencode=False)
            plain_metrics = stability_metrics(plain, reference, every)
            m["without_reencoding"] = plain_metrics["in_distribution"]
            m["without_reencoding_moving"] = plain_metrics["moving"]
            m["without_reencoding_scrolling"] = plain_metrics["scrolling"]
        self.metrics["stability"] = m
        plot_window = max(1, steps // 50)
        starts = list(range(0, steps, plot_window))
        plots = []
        for name in STATISTICS:
            v = run.values[name]
            p = reference.percentiles(name)
            ys = [float(np.nanmean(v[:, s:s + plot_window])) for s in starts]
            xs = [s + 1 for s in starts]
            plots.append(line_plot([
                Series("dream", xs, ys, markers=False),
                Series("real p50 (band p1-p99)", xs, [p["p50"]] * len(xs), dashed=True,
                       markers=False, band=([p["p1"]] * len(xs), [p["p99"]] * len(xs)))],
                title=f"{name} over a {steps}-step dream", xlabel="dream step",
                ylabel=name, size=(720, 300)))
        fig = self._figure("stability.png", stack_images(plots))
        frames = self._figure("stability_frames.png", frame_grid(
            list(run.snapshots), [f"dream {r + 1}" for r in range(len(run.snapshots))],
            [f"{s}" for s in run.snapshot_steps],
            title=f"A {steps}-step dream, every {every} steps (0 = the last real frame)"))
        ind, plain = m["in_distribution"], m.get("without_reencoding")
        moving, scrolling, player = m["moving"], m["scrolling"], m.get("player_visible")
        rows = [[s, _pct(share), _pct(moves), _pct(scrolls)] for s, share, moves, scrolls in zip(
            m["statistics"][STATISTICS[0]]["window_start"], ind["dream_share_per_window"],
            moving["dream_share_per_window"], scrolling["dream_share_per_window"], strict=True)]
        player_note = ""
        if player:
            for row, share in zip(rows, player["dream_share_per_window"], strict=True):
                row.append(_pct(share))
            player_note = (" Crafter keeps its player on the centre tile of the view; a frame "
                           "shows the player when that tile is as close to a real player tile "
                           "as all but 1% of real non-player tiles are, which holds for "
                           f"{_pct(player['real_share'])} of real frames.")
        plain_note = ""
        if plain:
            for row, share in zip(rows, plain["dream_share_per_window"], strict=True):
                row.append(_pct(share))
            plain_note = (f" The same dreams without re-encoding (each sampled latent kept as "
                          f"sampled): {_pct(plain['dream_share'])} overall, "
                          f"{_pct(plain['dream_share_last_window'])} in the last window.")
        stat_rows = [[f"{name} ({STATISTIC_HELP[name]})", _f(m["statistics"][name]["real"]["p1"]),
                      _f(m["statistics"][name]["real"]["p50"]),
                      _f(m["statistics"][name]["real"]["p99"]),
                      _f(m["statistics"][name]["real"]["mean"]),
                      _f(m["statistics"][name]["dream_mean"][0]),
                      _f(m["statistics"][name]["dream_mean"][-1]),
                      _pct(m["statistics"][name]["dream_inside_share_all"])]
                     for name in STATISTICS]
        self.sections["stability"] = (
            "## Stability\n\n"
            f"{m['rollouts']} dream(s) of {steps} steps from the bundle's real start contexts "
            "under the data collector's sticky random policy. Each dream frame is described by "
            "three statistics that the usual ways of collapsing move far outside what real "
            "frames show: a colour-histogram distance to the mean real frame (Crafter draws a "
            "few flat tile colours; drifting into a wash of one colour, into noise or "
            "saturation moves it), sharpness (blurring into mush lowers it, noise raises it) "
            "and change to the previous frame (a frozen dream has none, a flickering one too "
            "much). The reference is the VAE round trip of real validation frames, since every "
            "dream frame passes through the decoder. A frame is in distribution when all three "
            "lie within the real frames' p1..p99 range; real frames themselves are in "
            f"distribution {_pct(ind['real_share'])} of the time by that rule. Real frames "
            "often do not change at all (standing still, `do` on grass), so a single frozen "
            "frame is not out of distribution; a frozen dream shows as a window mean of "
            "'change' far below the real mean. A dream can also keep every frame in range and "
            "stop moving, frozen or emptied into plain grass; so each step counts as moving "
            f"when its change exceeds {moving['threshold']:g} grey levels (the view scrolled "
            f"or much of it changed), which {_pct(moving['real_share'])} of real steps do. It "
            "can also churn, blobs appearing and dissolving in place; so a moving step counts "
            "as scrolling when the previous frame shifted by at most "
            f"{scrolling['max_shift']} pixels along x or y matches (within "
            f"{scrolling['tolerance']:g} grey levels) more than "
            f"{scrolling['explained']:.0%} of the pixels that changed: the view moved as a "
            f"whole, as {_pct(scrolling['real_share'])} of real steps do.{player_note}\n\n"
            f"**In distribution: {_pct(ind['dream_share'])} of dream frames overall; "
            f"{_pct(ind['dream_share_first_window'])} in the first {every} steps, "
            f"{_pct(ind['dream_share_last_window'])} in the last. Scrolling: "
            f"{_pct(scrolling['dream_share'])} of dream steps overall, "
            f"{_pct(scrolling['dream_share_last_window'])} in the last window (real "
            f"{_pct(scrolling['real_share'])}); moving: {_pct(moving['dream_share'])} and "
            f"{_pct(moving['dream_share_last_window'])} (real "
            f"{_pct(moving['real_share'])}).**{plain_note}\n\n"
            + _table(["statistic", "real p1", "real p50", "real p99", "real mean",
                      "dream mean, first window",
                      "dream mean, last window", "dream inside p1..p99"], stat_rows)
            + "\n\n" + _table(["steps from", "dream frames in distribution", "dream steps moving",
                                 "dream steps scrolling"]
                                + (["dream frames showing the player"] if player else [])
                                + (["in distribution without re-encoding"] if plain else []),
                                rows)
            + f"\n\n![stability]({fig})\n\n![frames]({frames})\n")

    # ------------------------------------------------------------------ output
    def headline(self) -> str:
        """The summary table at the top of the report."""
        rows = []
        tf = self.metrics.get("teacher_forced")
        if tf:
            d = tf["num_steps"].get(str(self.heads_steps), {})
            if d:
                rows.append([f"teacher-forced PSNR, changed frames ({self.heads_steps} steps)",
                             _f(d["changed"]["psnr"]), _f(tf["copy_last"]["changed"]["psnr"]),
                             _f(tf["vae_ceiling"]["changed"]["psnr"])])
                if "copy_last_vae" in tf:
                    rows.append(["... copy-last through the VAE instead (a dream of no change)",
                                 "", _f(tf["copy_last_vae"]["changed"]["psnr"]), ""])
                rows.append(["teacher-forced PSNR, all frames (copy-last capped at 100 dB)",
                             _f(d["all"]["psnr"]), _f(tf["copy_last"]["all"]["psnr"]),
                             _f(tf["vae_ceiling"]["all"]["psnr"])])
        ol = self.metrics.get("open_loop", {})
        for h, e in ol.get("horizons", {}).items():
            rows.append([f"open-loop PSNR at step {h}", _f(e["dream"]["psnr"]),
                         _f(e["copy_last"]["psnr"]), _f(e["vae"]["psnr"])])
        ct = self.metrics.get("controllability", {})
        if "paired" in ct:
            rows.append(["IDM accuracy (dream / real)", _pct(ct["paired"]["dream"]["accuracy"]),
                         "", _pct(ct["paired"]["real"]["accuracy"]) + " real"])
            rows.append(["IDM dream / real ratio (target >= 90%)", _pct(ct["ratio_dream_to_real"]),
                         "", ""])
        cs = self.metrics.get("consistency", {})
        k4 = cs.get("k", {}).get("4")
        if k4:
            rows.append(["consistency k=4: return vs start, PSNR of mean MSE (forgetful dream "
                         "in the "
                         "copy-last column)", _f(k4["dream_vs_start"][CONSISTENCY_PSNR]),
                         _f(k4["forget_vs_start"][CONSISTENCY_PSNR]),
                         _f(k4.get("real_vs_start", {}).get(CONSISTENCY_PSNR)) + " real game"])
        st = self.metrics.get("stability", {})
        if "in_distribution" in st:
            rows.append([f"stability: frames in distribution, last window of {st['steps']} "
                         "steps", _pct(st["in_distribution"]["dream_share_last_window"]), "",
                         _pct(st["in_distribution"]["real_share"]) + " real"])
            if "without_reencoding" in st:
                rows.append(["... the same dreams without re-encoding",
                             _pct(st["without_reencoding"]["dream_share_last_window"]), "", ""])
            if "scrolling" in st:
                for key, what in (("moving", f"move (change > {st['moving']['threshold']:g} "
                                             "grey levels)"),
                                  ("scrolling", "scroll (the view moves as a whole)")):
                    rows.append([f"stability: steps that {what}, last window",
                                 _pct(st[key]["dream_share_last_window"]), "",
                                 _pct(st[key]["real_share"]) + " real"])
            if "player_visible" in st:
                rows.append(["stability: frames showing the player, first / last window",
                             f"{_pct(st['player_visible']['dream_share_per_window'][0])} / "
                             f"{_pct(st['player_visible']['dream_share_last_window'])}", "",
                             _pct(st["player_visible"]["real_share"]) + " real"])
        rw = self.metrics.get("reward", {})
        if "reward_nonzero" in rw:
            rows.append(["nonzero reward precision / recall",
                         f"{_f(rw['reward_nonzero']['precision'])} / "
                         f"{_f(rw['reward_nonzero']['recall'])}", "", ""])
            rows.append(["termination precision / recall",
                         f"{_f(rw['termination']['precision'])} / "
                         f"{_f(rw['termination']['recall'])}", "", ""])
            rec = rw.get("reward_model_on_recorded_frames")
            if rec is not None:
                rows.append(["reward model on recorded next frames: nonzero reward / "
                             "termination recall (precision)",
                             f"{_f(rec['reward_nonzero']['recall'])} "
                             f"({_f(rec['reward_nonzero']['precision'])}) / "
                             f"{_f(rec['termination']['recall'])} "
                             f"({_f(rec['termination']['precision'])})", "", ""])
        vae = self.metrics.get("vae")
        if vae:
            rows.append(["VAE reconstruction PSNR / SSIM", "", "",
                         f"{_f(vae['psnr'])} / {_f(vae['ssim'], 3)}"])
        return _table(["measure", "ours", "copy-last", "ceiling / real"], rows)

    def write(self) -> None:
        import worldsim
        from worldsim.data.store import write_json_atomic

        cfg = self.cfg
        resolved = {**dataclasses.asdict(cfg), **{k: cfg.size(k) for k in FULL}}
        self.metrics = {
            "checkpoint": shown_path(cfg.checkpoint),
            "data": shown_path(self.data),
            "validation_episodes": len(self.episodes),
            "validation_transitions": int(sum(ep.length for ep in self.episodes)),
            "context_frames": self.context, "window": self.wm.window,
            "default_sampler_steps": self.heads_steps,
            "guidance": self.wm.guidance, "feedback": self.wm.feedback,
            "refiner_blend": (None if self.wm.refiner is None else
                              "hard" if self.wm.refiner.hard_blend else "soft"),
            "config": resolved, "worldsim_version": worldsim.__version__,
            "timing_s": dict(self.timing), "figures": sorted(self.figures),
            **self.metrics}
        write_json_atomic(self.out / "metrics.json", _json_safe(self.metrics))
        timing = _table(["part", "seconds"], [[k, _f(v, 1)] for k, v in self.timing.items()])
        md = [f"# Evaluation of `{Path(cfg.checkpoint).resolve().name}`\n",
              f"Checkpoint `{shown_path(cfg.checkpoint)}`, data `{shown_path(self.data)}`: "
              f"{len(self.episodes)} validation episodes "
              f"({self.metrics['validation_transitions']} transitions). The model sees "
              f"{self.context} real context frames (attention window {self.wm.window}) and "
              f"samples with {self.heads_steps} Euler steps unless said otherwise"
              f"{self._guidance_note()}. Seed "
              f"{cfg.seed}{', quick settings' if cfg.quick else ''}"
              f"{PRECISION_NAMES[cfg.precision]}.\n",
              "Reproduce: `worldsim eval " + " ".join(self._argv()) + "`\n",
              "## Summary\n", self.headline() + "\n"]
        md += [self.sections[p] for p in PARTS if p in self.sections]
        md += ["## Timing\n", timing + "\n"]
        _write_text(self.out / "report.md", "\n".join(md))

    def _argv(self) -> list[str]:
        """The command-line arguments that repeat this run (settings that differ from the
        defaults, the dataset made explicit)."""
        argv = ["--checkpoint", str(self.cfg.checkpoint), "--data", str(self.data)]
        for f in dataclasses.fields(EvalConfig):
            if f.name in ("checkpoint", "data"):
                continue
            value = getattr(self.cfg, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if value == default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool) and default is not None:
                argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
            elif isinstance(value, (tuple, list)):
                argv += [flag, *(str(v) for v in value)]
            else:
                argv += [flag, str(value)]
        return argv


def evaluate(cfg: EvalConfig, log=print) -> dict[str, Any]:
    """Run the evaluation `cfg` describes; returns the metrics (also written to OUT)."""
    evaluation = Evaluation(cfg, log)
    metrics = evaluation.run()
    log(f"[eval] wrote {evaluation.out / 'metrics.json'}, {evaluation.out / 'report.md'} and "
        f"{len(evaluation.figures)} figures")
    return metrics


def main(argv: list[str] | None = None) -> None:
    import tyro

    from worldsim.world_model import CheckpointError

    cfg = tyro.cli(EvalConfig, args=argv)
    try:
        evaluate(cfg, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        sys.exit(f"worldsim eval: {e}")


if __name__ == "__main__":
    main()
