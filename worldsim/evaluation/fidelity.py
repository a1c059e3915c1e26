"""How faithful a world model's dreams are to real play, measured on recorded episodes.

Every measure runs the model through `WorldModel` (encode -> start -> step -> decode) exactly
as the environments do, and sets it beside references measured on the same frames:

- teacher-forced next frame: real context of K frames -> the next frame, at several sampler
  step counts, beside copy-last (predict that nothing changes) and the VAE round trip of the
  real next frame (the ceiling: every dream frame passes through the decoder);
- open loop: K real frames, then the recorded actions only, compared at horizons 1..128;
- reward and termination heads: precision / recall on held-out transitions;
- consistency: walk k steps out and back; the returning view against the start frame, the
  real game's return (replayed from the episode's seed) and a dream that forgot the start;
- stability: per-frame statistics of a long dream against the spread of real frames.

Data moves as small dataclasses of uint8 frames (N, H, W, 3) so that the report can compute
metrics and draw pictures from one run. Every function is seeded: the same arguments give
the same numbers.

Array letters: N transitions, R rollouts, L rollout length, S start states, H W frame size.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldsim.data.store import Episode, EpisodeStore
from worldsim.evaluation.metrics import frame_metrics
from worldsim.runtime import autocast
from worldsim.spaces import stack_actions, unstack_action

# Frames per call of the SSIM computation: its five Gaussian-filtered statistics of a batch
# are held at once in float64 (~0.5 MB per 64x64 frame).
METRIC_CHUNK = 256


# ---------------------------------------------------------------------- helpers
def derive_seed(*keys: int) -> int:
    """A 32-bit seed from several integers (a part's seed, a chunk number, ...)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint32)[0])


def make_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(derive_seed(*keys))


def pair_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR (dB), SSIM and MSE (in [0, 255] units) per frame of uint8 (..., H, W, 3) pairs:
    {"psnr": (N,), "ssim": (N,), "mse": (N,)} with N the product of the leading dims."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.shape != fake.shape:
        raise ValueError(f"frames differ in shape: {real.shape} vs {fake.shape}")
    real = real.reshape(-1, *real.shape[-3:])
    fake = fake.reshape(-1, *fake.shape[-3:])
    out: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "mse": []}
    for i in range(0, len(real), METRIC_CHUNK):
        a, b = real[i:i + METRIC_CHUNK], fake[i:i + METRIC_CHUNK]
        m = frame_metrics(torch.from_numpy(np.ascontiguousarray(a)),
                          torch.from_numpy(np.ascontiguousarray(b)))
        out["psnr"].append(m["psnr"].numpy())
        out["ssim"].append(m["ssim"].numpy())
        out["mse"].append(((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3)))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def summary(m: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of per-frame metrics: mean PSNR (the papers' convention; identical frames count
    as 100 dB, metrics.py's cap), the PSNR of the mean MSE (not dominated by identical frames),
    mean SSIM, the standard error of the mean PSNR, and the frame count."""
    n = len(m["psnr"])
    if n == 0:
        return {"psnr": float("nan"), "psnr_of_mean_mse": float("nan"), "ssim": float("nan"),
                "psnr_sem": float("nan"), "frames": 0}
    mse = float(np.mean(m["mse"]))
    return {"psnr": float(np.mean(m["psnr"])),
            "psnr_of_mean_mse": 10 * math.log10(255.0**2 / max(mse, 1e-10)),
            "ssim": float(np.mean(m["ssim"])),
            "psnr_sem": float(np.std(m["psnr"]) / math.sqrt(n)) if n > 1 else 0.0,
            "frames": n}


def subset(m: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in m.items()}


def load_episodes(store: EpisodeStore, names: Sequence[str]) -> list[Episode]:
    return [store.load(n) for n in names]


def all_transitions(episodes: Sequence[Episode]) -> np.ndarray:
    """Every transition as rows (episode, t), int64 (N, 2): frame t -> frame t+1."""
    rows = [np.stack([np.full(ep.length, e), np.arange(ep.length)], 1)
            for e, ep in enumerate(episodes) if ep.length > 0]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def spread(total: int, n: int) -> np.ndarray:
    """min(n, total) indices evenly spaced over range(total) (deterministic, no clumping)."""
    if total <= 0 or n <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))


def _actions_at(episodes: Sequence[Episode], rows: np.ndarray, offset: int = 0
                ) -> dict[str, np.ndarray]:
    """{key: (N, ...)} the actions a_{t+offset} of rows (episode, t)."""
    keys = list(episodes[0].actions)
    return {k: np.stack([np.asarray(episodes[e].actions[k][t + offset]) for e, t in rows])
            for k in keys}


# ---------------------------------------------------------------------- teacher forcing
@dataclass
class TeacherForcedRun:
    """One imagined step from real context for each of N transitions (episode, t): the
    context is the K real frames up to t (fewer at an episode's start) and the actions between
    them; the step takes the real a_t.

    current, target:          uint8 (N, H, W, 3) real frames t and t+1
    current_vae, target_vae:  their VAE round trips (decode(encode(frame)))
    current_shown:            frame t as the simulator shows it after a reset there (the real
                              frame with a frame refiner, else its round trip)
    dream:                    {sampler steps: uint8 (N, H, W, 3)} the predicted frame t+1 as
                              the simulator shows it (through the refiner if it has one)
    dream_decoded:            the VAE's plain decode of the heads_steps prediction (without
                              the refiner; the same as its `dream` when there is none)
    heads_steps:              the step count whose reward / termination are recorded
    reward_mode, reward_mean, termination_prob: (N,) the heads after that step (most likely
                              support value, expected value, probability of termination)
    counterfactual:           uint8 (N, H, W, 3) frame t+1 dreamt under other actions
                              (`counterfactual_actions`), with heads_steps, or None
    """

    picks: np.ndarray
    context: int
    current: np.ndarray
    target: np.ndarray
    current_vae: np.ndarray
    target_vae: np.ndarray
    current_shown: np.ndarray
    dream: dict[int, np.ndarray]
    dream_decoded: np.ndarray
    actions: dict[str, np.ndarray]
    rewards: np.ndarray
    terminated: np.ndarray
    heads_steps: int
    reward_mode: np.ndarray
    reward_mean: np.ndarray
    termination_prob: np.ndarray
    counterfactual_actions: dict[str, np.ndarray] | None = None
    counterfactual: np.ndarray | None = None

    @property
    def changed(self) -> np.ndarray:
        """(N,) bool: the real frame changes in this transition (copy-last is not exact)."""
        return (self.current != self.target).reshape(len(self.current), -1).any(axis=1)


def teacher_forced(wm, episodes: Sequence[Episode], picks: np.ndarray, *, context: int,
                   num_steps: Sequence[int] = (), heads_steps: int | None = None,
                   counterfactual_actions: dict[str, np.ndarray] | None = None,
                   batch_size: int = 32, seed: int = 0, bf16: bool = False) -> TeacherForcedRun:
    """Run one step from real context for every pick (see `TeacherForcedRun`). The context of
    each pick is encoded and run through the model once; each sampler setting then steps
    from a copy of that state, so settings differ only in the sampler."""
    picks = np.asarray(picks, dtype=np.int64).reshape(-1, 2)
    if len(picks) == 0:
        raise ValueError("teacher forcing needs at least one transition")
    if context < 1:
        raise ValueError(f"context must be at least 1 frame, got {context}")
    heads_steps = int(heads_steps or wm.num_steps)
    settings = sorted({int(n) for n in num_steps} | {heads_steps})
    N = len(picks)
    H, W = episodes[0].frames.shape[1:3]
    frames = {name: np.zeros((N, H, W, 3), np.uint8)
              for name in ("current", "target", "current_vae", "target_vae", "current_shown",
                           "dream_decoded")}
    dream = {n: np.zeros((N, H, W, 3), np.uint8) for n in settings}
    counter = np.zeros((N, H, W, 3), np.uint8) if counterfactual_actions is not None else None
    reward_mode, reward_mean, term = (np.zeros(N, np.float32) for _ in range(3))
    support = wm.reward_support
    ks = np.minimum(context, picks[:, 1] + 1)
    chunk_id = 0
    # Rows with the same context length share a batch (the model takes one K per call).
    for k in np.unique(ks):
        rows_k = np.flatnonzero(ks == k)
        for i in range(0, len(rows_k), batch_size):
            rows = rows_k[i:i + batch_size]
            window = np.stack([np.asarray(episodes[e].frames[t - k + 1:t + 2])
                               for e, t in picks[rows]])  # (B, k+1, H, W, 3)
            ctx_actions = {key: np.stack([np.asarray(episodes[e].actions[key][t - k + 1:t])
                                          for e, t in picks[rows]])
                           for key in episodes[0].actions}
            step_actions = _actions_at(episodes, picks[rows])
            with autocast(wm.device, bf16):
                latents = wm.encode(window)  # (B, k+1, C, h, w)
                decoded = wm.decode(latents[:, -2:])
                round_trip = decoded.cpu().numpy()
                shown = wm.render_start(window[:, -2], latents[:, -2], decoded[:, 0])
                state = wm.start(latents[:, :k], ctx_actions,
                                 make_generator(wm.device, seed, chunk_id, 0))
                for n in settings:
                    g = make_generator(wm.device, seed, chunk_id, 1, n)
                    out = wm.step(state.clone(), step_actions, g, num_steps=n, shown=shown)
                    rendered = out.shown
                    dream[n][rows] = rendered.frames.cpu().numpy()
                    if n == heads_steps:
                        frames["dream_decoded"][rows] = rendered.decoded.cpu().numpy()
                        probs = out.reward_probs.float()
                        reward_mode[rows] = support[probs.argmax(-1)].cpu().numpy()
                        if out.achievement_reward is not None:
                            reward_mode[rows] += out.achievement_reward.round().cpu().numpy()
                        reward_mean[rows] = out.reward.float().cpu().numpy()
                        term[rows] = out.termination_prob.float().cpu().numpy()
                if counter is not None:
                    alt = {key: v[rows] for key, v in counterfactual_actions.items()}
                    g = make_generator(wm.device, seed, chunk_id, 2)
                    out = wm.step(state.clone(), alt, g, num_steps=heads_steps, shown=shown)
                    counter[rows] = out.shown.frames.cpu().numpy()
            frames["current"][rows] = window[:, -2]
            frames["target"][rows] = window[:, -1]
            frames["current_vae"][rows] = round_trip[:, 0]
            frames["target_vae"][rows] = round_trip[:, 1]
            frames["current_shown"][rows] = shown.frames.cpu().numpy()
            chunk_id += 1
    rewards = np.array([episodes[e].rewards[t] for e, t in picks], np.float32)
    terminated = np.array([episodes[e].terminated[t] for e, t in picks], bool)
    return TeacherForcedRun(picks=picks, context=context, dream=dream,
                            actions=_actions_at(episodes, picks), rewards=rewards,
                            terminated=terminated, heads_steps=heads_steps,
                            reward_mode=reward_mode, reward_mean=reward_mean,
                            termination_prob=term, counterfactual_actions=counterfactual_actions,
                            counterfactual=counter, **frames)


def teacher_forced_metrics(run: TeacherForcedRun) -> dict[str, Any]:
    """PSNR / SSIM of the predicted next frame per sampler setting, beside copy-last, copy-last
    through the VAE (the last frame's round trip: what a dream that predicts no change shows,
    since every dream frame passes through the decoder) and the VAE ceiling, over all
    transitions and over those where the frame changes."""
    changed = run.changed
    copy = pair_metrics(run.target, run.current)
    copy_vae = pair_metrics(run.target, run.current_vae)
    ceiling = pair_metrics(run.target, run.target_vae)

    def both(m):
        return {"all": summary(m), "changed": summary(subset(m, changed))}

    out: dict[str, Any] = {
        "transitions": len(run.picks), "context_frames": run.context,
        "changed_share": float(changed.mean()),
        "copy_last": both(copy), "copy_last_vae": both(copy_vae), "vae_ceiling": both(ceiling),
        "num_steps": {}}
    for n, frames in sorted(run.dream.items()):
        m = both(pair_metrics(run.target, frames))
        for part in ("all", "changed"):
            m[part]["psnr_gap_vs_copy_last_db"] = m[part]["psnr"] - out["copy_last"][part]["psnr"]
            m[part]["psnr_gap_vs_copy_last_vae_db"] = (m[part]["psnr"]
                                                       - out["copy_last_vae"][part]["psnr"])
            m[part]["psnr_of_mean_mse_gap_vs_copy_last_db"] = (
                m[part]["psnr_of_mean_mse"] - out["copy_last"][part]["psnr_of_mean_mse"])
        out["num_steps"][str(n)] = m
    plain = both(pair_metrics(run.target, run.dream_decoded))
    for part in ("all", "changed"):
        plain[part]["psnr_gap_vs_copy_last_db"] = plain[part]["psnr"] - out["copy_last"][part]["psnr"]
    out["dream_decoded"] = plain  # the heads_steps prediction without the frame refiner
    return out


# ---------------------------------------------------------------------- reward / termination
@dataclass
class StratifiedPicks:
    """Transitions for the heads, from `reward_termination_picks`.

    picks:   int64 (N, 2) rows (episode, t)
    weights: (N,) how many transitions each pick stands for: 1 for the certain stratum
             (every transition with a nonzero reward or a termination), the inverse sampling
             fraction for the sampled others, so weighted counts estimate counts over all
             transitions (Horvitz-Thompson)
    sampled: (N,) bool, the pick comes from the sampled stratum
    """

    picks: np.ndarray
    weights: np.ndarray
    sampled: np.ndarray


def reward_termination_picks(episodes: Sequence[Episode], negatives: int,
                             rng: np.random.Generator) -> StratifiedPicks:
    """Every transition with a nonzero reward or a termination (rare, so all of them) and a
    uniform sample of `negatives` of the others (see `StratifiedPicks`)."""
    rows = all_transitions(episodes)
    rewards = np.array([episodes[e].rewards[t] for e, t in rows], np.float32)
    terminated = np.array([episodes[e].terminated[t] for e, t in rows], bool)
    positive = (rewards != 0) | terminated
    pos, neg = rows[positive], rows[~positive]
    take = min(len(neg), max(0, negatives))
    chosen = neg[np.sort(rng.choice(len(neg), take, replace=False))] if take else neg[:0]
    weights = np.concatenate([np.ones(len(pos)),
                              np.full(len(chosen), len(neg) / take if take else 0.0)])
    sampled = np.concatenate([np.zeros(len(pos), bool), np.ones(len(chosen), bool)])
    return StratifiedPicks(np.concatenate([pos, chosen]), weights, sampled)


def precision_recall(pred: np.ndarray, true: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Weighted precision, recall and F1 of boolean predictions (each row counts `w` times)."""
    tp = float(w[pred & true].sum())
    fp = float(w[pred & ~true].sum())
    fn = float(w[~pred & true].sum())
    precision = tp / (tp + fp) if tp + fp > 0 else float("nan")
    recall = tp / (tp + fn) if tp + fn > 0 else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if precision + recall > 0 and math.isfinite(precision + recall) else float("nan"))
    return {"precision": precision, "recall": recall, "f1": f1,
            "positives": int(true.sum()), "predicted_positives_est": tp + fp}


def reward_termination_metrics(run: TeacherForcedRun, picks: StratifiedPicks,
                               threshold: float = 0.5) -> dict[str, Any]:
    """Precision / recall of nonzero rewards (the head's most likely support value is not 0),
    split by sign, and of terminations (probability above `threshold`), from a run on
    `reward_termination_picks`. Weighted (see `StratifiedPicks`), so precision counts the
    false alarms of all negatives, not only of the sampled ones."""
    w = np.asarray(picks.weights, np.float64)
    if len(w) != len(run.rewards):
        raise ValueError(f"{len(w)} weights for a run of {len(run.rewards)} transitions")
    r, pred = run.rewards, run.reward_mode
    return {
        "transitions_evaluated": len(r),
        "transitions_represented": float(w.sum()),
        "negatives_sampled": int(picks.sampled.sum()),
        "heads_steps": run.heads_steps,
        "reward_nonzero": precision_recall(pred != 0, r != 0, w),
        "reward_positive": precision_recall(pred > 0, r > 0, w),
        "reward_negative": precision_recall(pred < 0, r < 0, w),
        "termination": precision_recall(run.termination_prob > threshold, run.terminated, w),
        "termination_threshold": threshold,
        "reward_mae_weighted": float((w * np.abs(run.reward_mean - r)).sum() / w.sum()),
        # what an agent trained on expected rewards sees: their mean where the data has an
        # achievement (+1 or more) and where it has no event at all
        "expected_reward_achievement": _weighted_mean(run.reward_mean, w, r >= 0.5),
        "expected_reward_plain": _weighted_mean(run.reward_mean, w, (r == 0) & ~run.terminated),
    }


@torch.no_grad()
def reward_model_on_recorded_frames(wm, run: TeacherForcedRun, batch_size: int = 256
                                    ) -> TeacherForcedRun:
    """`run` with its reward and termination read by the bundle's reward model from the real
    frames t and t+1 instead of the sampled frame t+1: what the reward model itself can do,
    apart from what the dynamics model draws."""
    support = wm.reward_support.cpu().numpy()
    mode, mean, term = [], [], []
    for i in range(0, len(run.current), batch_size):
        rows = slice(i, i + batch_size)
        actions = wm.action_tensors({k: v[rows] for k, v in run.actions.items()},
                                    (len(run.current[rows]),))
        pred = wm.reward_model.predict(wm.encode(run.current[rows]), actions,
                                       wm.encode(run.target[rows]))
        # Achievements (with an unlock head) pay as if none was unlocked before.
        once = 0.0 if pred.achievement_reward is None else \
            pred.achievement_reward.float().cpu().numpy()
        mode.append(support[pred.reward_probs.argmax(-1).cpu().numpy()] + np.round(once))
        mean.append(pred.reward.float().cpu().numpy())
        term.append(pred.termination_prob.float().cpu().numpy())
    return dataclasses.replace(run, reward_mode=np.concatenate(mode),
                               reward_mean=np.concatenate(mean),
                               termination_prob=np.concatenate(term))


def _weighted_mean(values: np.ndarray, w: np.ndarray, rows: np.ndarray) -> float | None:
    return float((w[rows] * values[rows]).sum() / w[rows].sum()) if rows.any() else None


# ---------------------------------------------------------------------- open loop
@dataclass
class OpenLoopRun:
    """R rollouts: K real frames s .. s+K-1 (and the actions between them), then L imagined
    steps with the recorded actions a_{s+K-1} ...

    real, dream, real_vae: uint8 (R, L, H, W, 3), frame s+K+i at index i
    last_context:          uint8 (R, H, W, 3) real frame s+K-1 (what copy-last predicts)
    """

    starts: np.ndarray
    context: int
    horizons: list[int]
    real: np.ndarray
    dream: np.ndarray
    real_vae: np.ndarray
    last_context: np.ndarray
    skipped_horizons: list[int] = field(default_factory=list)


def open_loop(wm, episodes: Sequence[Episode], *, context: int, horizons: Sequence[int],
              rollouts: int, num_steps: int | None = None, batch_size: int = 16, seed: int = 0,
              bf16: bool = False, reencode: bool | None = None) -> OpenLoopRun | None:
    """Roll the model out open loop from real starts (see `OpenLoopRun`). Horizons longer
    than any episode allows are skipped; starts are drawn (seeded) from the episodes long
    enough for the longest remaining one. None if no episode holds K+1 frames. `reencode`:
    overrides the bundle's re-encoding (`WorldModel.step`)."""
    room = max((ep.length + 1 - context for ep in episodes), default=0)
    kept = sorted(h for h in set(horizons) if 1 <= h <= room)
    skipped = sorted(h for h in set(horizons) if h not in kept)
    if not kept or rollouts < 1:
        return None
    L = kept[-1]
    eligible = [e for e, ep in enumerate(episodes) if ep.length + 1 >= context + L]
    rng = np.random.default_rng(derive_seed(seed, 11))
    starts = []
    for r in range(rollouts):
        e = eligible[r % len(eligible)]
        starts.append((e, int(rng.integers(0, episodes[e].length + 2 - context - L))))
    starts = np.array(starts, np.int64)
    R = len(starts)
    H, W = episodes[0].frames.shape[1:3]
    real = np.stack([np.asarray(episodes[e].frames[s + context:s + context + L]) for e, s in starts])
    last = np.stack([np.asarray(episodes[e].frames[s + context - 1]) for e, s in starts])
    dream = np.zeros((R, L, H, W, 3), np.uint8)
    for c, i in enumerate(range(0, R, batch_size)):
        rows = starts[i:i + batch_size]
        ctx = np.stack([np.asarray(episodes[e].frames[s:s + context]) for e, s in rows])
        ctx_actions = {k: np.stack([np.asarray(episodes[e].actions[k][s:s + context - 1])
                                    for e, s in rows]) for k in episodes[0].actions}
        with autocast(wm.device, bf16):
            latents = wm.encode(ctx)
            state = wm.start(latents, ctx_actions, make_generator(wm.device, seed, c, 0))
            shown = wm.render_start(ctx[:, -1], latents[:, -1])
            g = make_generator(wm.device, seed, c, 1)
            for j in range(L):
                acts = {k: np.stack([np.asarray(episodes[e].actions[k][s + context - 1 + j])
                                     for e, s in rows]) for k in episodes[0].actions}
                shown = wm.step(state, acts, g, num_steps=num_steps, reencode=reencode,
                                shown=shown).shown
                dream[i:i + batch_size, j] = shown.frames.cpu().numpy()
    real_vae = round_trip(wm, real.reshape(-1, H, W, 3), bf16).reshape(real.shape)
    return OpenLoopRun(starts=starts, context=context, horizons=kept, real=real, dream=dream,
                       real_vae=real_vae, last_context=last, skipped_horizons=skipped)


def open_loop_metrics(run: OpenLoopRun) -> dict[str, Any]:
    """Per horizon: PSNR / SSIM of the dream, copy-last (the last context frame) and the VAE
    round trip against the real frame; and the whole per-step curve (means over rollouts)."""
    R, L = run.real.shape[:2]
    copy_frames = np.broadcast_to(run.last_context[:, None], run.real.shape)
    per = {name: {k: v.reshape(R, L) for k, v in pair_metrics(run.real, fake).items()}
           for name, fake in (("dream", run.dream), ("copy_last", copy_frames),
                              ("vae", run.real_vae))}
    horizons = {}
    for h in run.horizons:
        horizons[str(h)] = {name: summary({k: v[:, h - 1] for k, v in m.items()})
                            for name, m in per.items()}
        horizons[str(h)]["dream"]["psnr_gap_vs_copy_last_db"] = (
            horizons[str(h)]["dream"]["psnr"] - horizons[str(h)]["copy_last"]["psnr"])
    curve = {"step": list(range(1, L + 1))}
    for name, m in per.items():
        curve[f"{name}_psnr"] = m["psnr"].mean(0).tolist()
        curve[f"{name}_ssim"] = m["ssim"].mean(0).tolist()
    return {"rollouts": R, "context_frames": run.context, "horizons": horizons,
            "skipped_horizons": run.skipped_horizons, "curve": curve}


# ---------------------------------------------------------------------- consistency
# Out-and-back walks: (out, back) action names. Rows alternate between them.
WALKS = (("move_left", "move_right"), ("move_right", "move_left"),
         ("move_up", "move_down"), ("move_down", "move_up"))


@dataclass
class ConsistencyRun:
    """S start states (episode, t) with K real context frames up to t; for each k a walk of k
    steps out then k back (rows alternate between the WALKS directions).

    start:          uint8 (S, H, W, 3) real frame t (where every walk begins and should end)
    dream_turn / dream_return:  {k: (S, H, W, 3)} the dream after k and after 2k steps
    forget_return:  {k: (S, H, W, 3)} a dream that forgot: restarted from the dream's own
                    turning-point frame alone (no memory of the start), then k steps back
    real_turn / real_return:    {k: (S, H, W, 3)} the real game replayed from the episode's
                    seed and walked the same way; real_valid {k: (S,) bool} where that worked
    other:          uint8 (S, H, W, 3) real frames from elsewhere (an unrelated-view floor)
    """

    ks: list[int]
    starts: np.ndarray
    walks: list[tuple[str, str]]
    context: int
    start: np.ndarray
    dream_turn: dict[int, np.ndarray]
    dream_return: dict[int, np.ndarray]
    forget_return: dict[int, np.ndarray]
    real_turn: dict[int, np.ndarray]
    real_return: dict[int, np.ndarray]
    real_valid: dict[int, np.ndarray]
    other: np.ndarray
    replay_note: str


def _replay(store: EpisodeStore, episode: Episode, t: int, env_cache: dict):
    """The real env in the state of frame t of `episode` (reset with the episode's recorded
    seed, then its recorded actions), or a string saying why not."""
    seed = episode.info.get("seed")
    if seed is None:
        return "the episode's info holds no reset seed"
    if "env" not in env_cache:
        from worldsim.data.collect import make_env

        try:
            # no time limit: the walk may run past where the recorded episode was cut
            env_cache["env"] = make_env(store.env_id, store.frame_shape()[:2],
                                        store.meta.get("env_kwargs") or {},
                                        max_episode_steps=10**9)
        except Exception as e:  # any env construction failure means: no replay
            return f"the env {store.env_id!r} cannot be made here ({type(e).__name__}: {e})"
    env = env_cache["env"]
    obs, _ = env.reset(seed=int(seed))
    for i in range(t):
        obs, *_ = env.step(unstack_action(env.action_space, episode.actions, i))
    if not np.array_equal(obs, episode.frames[t]):
        return "replaying the recorded actions from the seed does not reproduce the frames"
    return env


def consistency(wm, store: EpisodeStore, episodes: Sequence[Episode], *, context: int,
                ks: Sequence[int], starts: int, action_names: Sequence[str] | None,
                num_steps: int | None = None, seed: int = 0, bf16: bool = False,
                replay: bool = True) -> ConsistencyRun | str:
    """The out-and-back test (see `ConsistencyRun`); a string saying why when it cannot run
    (no move actions of these names, no episode long enough)."""
    from gymnasium import spaces

    if not isinstance(wm.action_space, spaces.Discrete) or action_names is None:
        return "needs a Discrete action space with named move actions (Crafter's)"
    index = {name: i + int(wm.action_space.start) for i, name in enumerate(action_names)}
    walks = [w for w in WALKS if w[0] in index and w[1] in index]
    if not walks:
        return f"no move actions among the action names {list(action_names)}"
    eligible = [e for e, ep in enumerate(episodes) if ep.length >= context]
    if not eligible or starts < 1:
        return f"no validation episode has {context + 1} frames"
    rng = np.random.default_rng(derive_seed(seed, 21))
    picks = []
    for _ in range(starts):
        e = eligible[int(rng.integers(len(eligible)))]
        picks.append((e, int(rng.integers(context - 1, episodes[e].length))))
    picks = np.array(picks, np.int64)
    row_walks = [walks[i % len(walks)] for i in range(len(picks))]
    out_a = np.array([index[w[0]] for w in row_walks], np.int64)
    back_a = np.array([index[w[1]] for w in row_walks], np.int64)
    S = len(picks)
    ctx = np.stack([np.asarray(episodes[e].frames[t - context + 1:t + 1]) for e, t in picks])
    ctx_actions = {k: np.stack([np.asarray(episodes[e].actions[k][t - context + 1:t])
                                for e, t in picks]) for k in episodes[0].actions}
    start = ctx[:, -1].copy()
    dream_turn, dream_return, forget_return = {}, {}, {}
    with autocast(wm.device, bf16):
        latents = wm.encode(ctx)
        state0 = wm.start(latents, ctx_actions, make_generator(wm.device, seed, 0))
        shown0 = wm.render_start(start, latents[:, -1])
        for k in ks:
            state, shown = state0.clone(), shown0
            g = make_generator(wm.device, seed, 1, k)
            for _ in range(k):
                step = wm.step(state, {"action": out_a}, g, num_steps=num_steps, shown=shown)
                turn, shown = step.latents, step.shown
            dream_turn[k], turned = shown.frames.cpu().numpy(), shown
            for _ in range(k):
                shown = wm.step(state, {"action": back_a}, g, num_steps=num_steps,
                                shown=shown).shown
            dream_return[k] = shown.frames.cpu().numpy()
            # The same dream with its memory cut at the turning point: it sees only the view
            # it reached, so whatever of the start is out of that view must be invented.
            forget = wm.start(turn[:, None], None, make_generator(wm.device, seed, 2, k))
            shown = turned
            for _ in range(k):
                shown = wm.step(forget, {"action": back_a}, g, num_steps=num_steps,
                                shown=shown).shown
            forget_return[k] = shown.frames.cpu().numpy()
    H, W = start.shape[1:3]
    real_turn = {k: np.zeros((S, H, W, 3), np.uint8) for k in ks}
    real_return = {k: np.zeros((S, H, W, 3), np.uint8) for k in ks}
    real_valid = {k: np.zeros(S, bool) for k in ks}
    reasons: dict[str, int] = {}
    if replay:
        env_cache: dict = {}
        for s, (e, t) in enumerate(picks):
            env = _replay(store, episodes[e], int(t), env_cache)
            if isinstance(env, str):
                reasons[env] = reasons.get(env, 0) + 1
                continue
            for k in ks:
                walker = copy.deepcopy(env)  # the game state at t, walked once per k
                alive = True
                for step in range(2 * k):
                    action = int(out_a[s] if step < k else back_a[s])
                    obs, _, terminated, _, _ = walker.step(action)
                    alive &= not terminated
                    if step == k - 1:
                        real_turn[k][s] = obs
                real_return[k][s] = obs
                real_valid[k][s] = alive
        if "env" in env_cache:
            env_cache["env"].close()
    else:
        reasons["replay disabled"] = S
    note = ("real game replayed from each episode's seed" if not reasons else
            "; ".join(f"{n} of {S} starts: {why}" for why, n in reasons.items()))
    # Unrelated real views: a random frame of another episode (of the same one if only one).
    other = np.zeros_like(start)
    for s, (e, _) in enumerate(picks):
        o = (e + 1 + int(rng.integers(len(episodes) - 1))) % len(episodes) \
            if len(episodes) > 1 else e
        other[s] = episodes[o].frames[int(rng.integers(episodes[o].length + 1))]
    return ConsistencyRun(ks=list(ks), starts=picks, walks=row_walks, context=context,
                          start=start, dream_turn=dream_turn, dream_return=dream_return,
                          forget_return=forget_return, real_turn=real_turn,
                          real_return=real_return, real_valid=real_valid, other=other,
                          replay_note=note)


# The real game counts as having come back to its start view when its own returning frame is
# this close to the start (what differs then is the player's facing and moving creatures);
# walks blocked by water, trees or stone land elsewhere and are reported apart.
CLEAN_RETURN_PSNR_DB = 25.0


def clean_returns(run: ConsistencyRun, k: int) -> np.ndarray:
    """(S,) bool: the starts whose real k-step walk out and back ran and came back to within
    CLEAN_RETURN_PSNR_DB of the start frame."""
    valid = run.real_valid[k]
    clean = np.zeros(len(valid), bool)
    if valid.any():
        real = pair_metrics(run.start[valid], run.real_return[k][valid])
        clean[np.flatnonzero(valid)] = real["psnr"] >= CLEAN_RETURN_PSNR_DB
    return clean


def consistency_metrics(run: ConsistencyRun) -> dict[str, Any]:
    """Per k: the returning view against the start frame for the dream, the real game, the
    dream that forgot, and unrelated real frames; the dream's return against the real
    return; all, and on the starts where the real game itself came back (clean)."""
    floor = pair_metrics(run.start, run.other)
    out: dict[str, Any] = {"starts": len(run.starts), "context_frames": run.context,
                           "replay": run.replay_note, "walks": sorted({f"{a}/{b}" for a, b
                                                                       in run.walks}),
                           "clean_return_psnr_db": CLEAN_RETURN_PSNR_DB,
                           "unrelated_view": summary(floor), "k": {}}
    for k in run.ks:
        dream = pair_metrics(run.start, run.dream_return[k])
        forget = pair_metrics(run.start, run.forget_return[k])
        valid = run.real_valid[k]
        entry: dict[str, Any] = {"dream_vs_start": summary(dream),
                                 "forget_vs_start": summary(forget),
                                 "real_games": int(valid.sum())}
        # By the PSNR of the mean MSE: a mean of per-start PSNR counts exact copies as 100 dB.
        entry["dream_minus_forget_psnr_db"] = (entry["dream_vs_start"]["psnr_of_mean_mse"]
                                               - entry["forget_vs_start"]["psnr_of_mean_mse"])
        if valid.any():
            real = pair_metrics(run.start[valid], run.real_return[k][valid])
            vs_real = pair_metrics(run.real_return[k][valid], run.dream_return[k][valid])
            entry["real_vs_start"] = summary(real)
            entry["dream_vs_real_return"] = summary(vs_real)
            returned = clean_returns(run, k)  # (S,), within the valid starts
            rows, clean = np.flatnonzero(returned), returned[valid]
            entry["clean"] = {
                "starts": int(clean.sum()),
                "dream_vs_start": summary(subset(dream, rows)),
                "forget_vs_start": summary(subset(forget, rows)),
                "real_vs_start": summary(subset(real, clean)),
            }
        out["k"][str(k)] = entry
    return out


# ---------------------------------------------------------------------- stability
# Bins per colour channel of the histogram statistic: 16 separate Crafter's few flat tile
# colours (grass, sand, water, stone, tree, darkness) while staying well filled at 64x64.
HISTOGRAM_BINS = 16
STATISTICS = ("colour_distance", "sharpness", "change")
STATISTIC_HELP = {
    "colour_distance": "total-variation distance of the frame's colour histogram to the mean "
                       "histogram of real frames (0..1)",
    "sharpness": "mean absolute luminance gradient (grey levels per pixel)",
    "change": "mean absolute difference to the previous frame (grey levels)",
}
# A step "moves" when its frame differs from the previous one by more than this mean grey
# level. Real play is bimodal here: the view scrolls by a tile (5-10 grey levels) or little
# changes (a creature, the HUD: under 1). Under the collector's sticky random policy 37% of
# recorded steps move (52% of move actions; the rest walk into obstacles). A dream can keep every
# frame in range and still stop moving, frozen or emptied into plain grass; the share of
# moving steps shows it.
MOVING_CHANGE = 2.0
# A moving step "scrolls" when the previous frame shifted by at most SCROLL_MAX_SHIFT pixels
# along x or y matches (within SCROLL_TOLERANCE grey levels) more than half of the pixels
# that changed: the view moved as a whole (Crafter scrolls by one 7-pixel tile). A dream can
# also change every step by churning, blobs appearing and dissolving in place, which moves
# without scrolling. The tolerance admits the decoder's blur: 94% of the moving steps of
# real frames through the VAE scroll by this rule (93% at 8 grey levels, where dream frames
# blur out of the match).
SCROLL_MAX_SHIFT = 8
SCROLL_TOLERANCE = 16.0
SCROLL_EXPLAINED = 0.5
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def grey_levels(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., H, W): the grey level of every pixel (ITU-R 601
    luma weights), the image every grey-level statistic here is measured on."""
    return np.asarray(frames).astype(np.float32) @ GREY_WEIGHTS


def sharpness(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N,): the mean absolute difference of neighbouring pixels' grey
    levels, rows and columns averaged (STATISTIC_HELP["sharpness"])."""
    grey = grey_levels(frames)
    return (np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))
            + np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))) / 2


def colour_histograms(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> per-channel normalised histograms (N, 3, HISTOGRAM_BINS)."""
    frames = np.asarray(frames)
    bins = (frames.astype(np.int64) * HISTOGRAM_BINS) // 256  # (N, H, W, 3)
    N = len(frames)
    flat = bins.reshape(N, -1, 3) + np.arange(3) * HISTOGRAM_BINS  # per channel offsets
    counts = np.stack([np.bincount(f.ravel(), minlength=3 * HISTOGRAM_BINS) for f in flat])
    counts = counts.reshape(N, 3, HISTOGRAM_BINS).astype(np.float64)
    return counts / counts.sum(axis=2, keepdims=True)


def frame_statistics(frames: np.ndarray, previous: np.ndarray | None,
                     reference_histogram: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame statistics (N,) of uint8 frames (N, H, W, 3): those of STATISTIC_HELP, the
    share a shift explains ("shift_explained", shift_explained_share) and the mean grey
    level ("grey", which the histogram already judges). `previous` (N, H, W, 3) gives
    "change" and "shift_explained" (NaN without it)."""
    frames = np.asarray(frames)
    hist = colour_histograms(frames)
    colour = 0.5 * np.abs(hist - reference_histogram[None]).sum(axis=2).mean(axis=1)
    grey = grey_levels(frames)  # (N, H, W)
    sharp = sharpness(frames)
    if previous is None:
        change = shift_explained = np.full(len(frames), np.nan)
    else:
        prev = grey_levels(previous)
        change = np.abs(grey - prev).mean(axis=(1, 2))
        shift_explained = shift_explained_share(grey, prev)
    return {"colour_distance": colour, "sharpness": sharp, "change": change,
            "shift_explained": shift_explained, "grey": grey.mean(axis=(1, 2))}


def shift_explained_share(grey: np.ndarray, previous: np.ndarray,
                          max_shift: int = SCROLL_MAX_SHIFT,
                          tolerance: float = SCROLL_TOLERANCE) -> np.ndarray:
    """Grey frames (N, H, W) and their previous frames -> (N,): the largest share of the
    pixels that changed (by `tolerance` or more) that the previous frame shifted by 1 to
    `max_shift` pixels along x or y matches within `tolerance` (0 where nothing changed)."""
    changed = np.abs(grey - previous) >= tolerance  # (N, H, W)
    num_changed = np.maximum(changed.sum(axis=(1, 2)), 1)
    best = np.zeros(len(grey))
    for d in range(1, max_shift + 1):
        for here, there in ((slice(d, None), slice(None, -d)), (slice(None, -d), slice(d, None))):
            for axis in (1, 2):  # content moved down / up (rows), right / left (columns)
                index, moved = [slice(None)] * 3, [slice(None)] * 3
                index[axis], moved[axis] = here, there
                index, moved = tuple(index), tuple(moved)
                matched = (np.abs(grey[index] - previous[moved]) < tolerance) & changed[index]
                best = np.maximum(best, matched.sum(axis=(1, 2)) / num_changed)
    return best


@dataclass
class PlayerTile:
    """Where a game keeps its player on screen, and what real frames show there. Crafter
    draws a 9x7-tile view of the world above a 9x2-tile inventory, the player always on the
    centre tile (column 4, row 3). A frame shows the player when its tile there is as close
    (mean squared error) to one of the real player tiles in `bank` as `threshold`, which is
    the 1st percentile of the distances of real non-player tiles: plain grass or a tree in
    the player's place counts as a player 1% of the time."""

    rows: slice
    cols: slice
    bank: np.ndarray  # float32 (M, tile pixels x 3): real player tiles
    threshold: float

    @classmethod
    def crafter(cls, frames: np.ndarray) -> PlayerTile:
        """From real Crafter frames uint8 (N, H, W, 3): half make the bank, the other half's
        non-player tiles set the threshold."""
        unit = frames.shape[2] // 9
        bank_frames, other = frames[::2], frames[1::2]
        tile = cls(slice(3 * unit, 4 * unit), slice(4 * unit, 5 * unit),
                   np.zeros((0, unit * unit * 3), np.float32), 0.0)
        tile.bank = tile.tiles(bank_frames)
        others = [other[:, r * unit:(r + 1) * unit, c * unit:(c + 1) * unit]
                  for r in range(7) for c in range(9) if (r, c) != (3, 4)]
        others = np.concatenate(others)[:: 8 * 4]  # every 32nd: enough for a percentile
        tile.threshold = float(np.percentile(tile.distance_of(
            others.reshape(len(others), -1).astype(np.float32)), 1))
        return tile

    def tiles(self, frames: np.ndarray) -> np.ndarray:
        t = np.asarray(frames)[:, self.rows, self.cols].astype(np.float32)
        return t.reshape(len(t), -1)

    def distance_of(self, tiles: np.ndarray, chunk: int = 512) -> np.ndarray:
        """(N, P) tiles -> (N,) mean squared error to the nearest bank tile."""
        bank_sq = (self.bank ** 2).sum(1)
        out = np.empty(len(tiles), np.float32)
        for i in range(0, len(tiles), chunk):
            t = tiles[i:i + chunk]
            d = (t ** 2).sum(1)[:, None] - 2 * t @ self.bank.T + bank_sq[None]
            out[i:i + chunk] = np.maximum(d.min(1), 0) / tiles.shape[1]
        return out

    def visible(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float (N,): 1 where the frame shows the player."""
        return (self.distance_of(self.tiles(frames)) <= self.threshold).astype(np.float64)


@dataclass
class StabilityReference:
    """The spread of the statistics over real frames: the mean histogram they are measured
    against, and each statistic's values on real frames (consecutive pairs for "change").
    `player`: where the game keeps its player (None: a game without one, or not known);
    values["player_visible"] then holds the real frames' own share."""

    histogram: np.ndarray  # (3, HISTOGRAM_BINS)
    values: dict[str, np.ndarray]
    player: PlayerTile | None = None

    def percentiles(self, name: str) -> dict[str, float]:
        v = self.values[name]
        return {"mean": float(np.mean(v)),
                **{f"p{q}": float(np.percentile(v, q)) for q in (1, 5, 50, 95, 99)}}

    def inside(self, name: str, x: np.ndarray) -> np.ndarray:
        """(N,) bool: inside the central 98% of the real values (p1 .. p99)."""
        lo, hi = np.percentile(self.values[name], [1, 99])
        return (x >= lo) & (x <= hi)


def stability_reference(episodes: Sequence[Episode], wm=None, max_frames: int = 4000,
                        seed: int = 0, bf16: bool = False,
                        crafter_player: bool = False) -> StabilityReference:
    """The statistics of up to `max_frames` real transitions (a seeded sample). With `wm`,
    of their VAE round trips: every dream frame passes through the decoder, which blurs a
    little, so the decoder's own output is what a dream that stays in distribution looks
    like (raw frames would flag the sharpness of a perfect dream as out of range).
    `crafter_player`: also where Crafter's player is and what it looks like (PlayerTile)."""
    rows = all_transitions(episodes)
    rows = rows[np.sort(np.random.default_rng(derive_seed(seed, 31)).choice(
        len(rows), min(max_frames, len(rows)), replace=False))]
    cur = np.stack([np.asarray(episodes[e].frames[t]) for e, t in rows])
    nxt = np.stack([np.asarray(episodes[e].frames[t + 1]) for e, t in rows])
    if wm is not None:
        cur, nxt = round_trip(wm, cur, bf16), round_trip(wm, nxt, bf16)
    histogram = colour_histograms(cur).mean(axis=0)
    reference = StabilityReference(histogram, frame_statistics(nxt, cur, histogram))
    if crafter_player:
        reference.player = PlayerTile.crafter(cur)
        reference.values["player_visible"] = reference.player.visible(nxt)
    return reference


def round_trip(wm, frames: np.ndarray, bf16: bool = False, batch_size: int = 256) -> np.ndarray:
    """decode(encode(frames)) of uint8 (N, H, W, 3), in batches."""
    out = np.zeros_like(frames)
    with autocast(wm.device, bf16):
        for i in range(0, len(frames), batch_size):
            out[i:i + batch_size] = wm.decode(wm.encode(frames[i:i + batch_size])).cpu().numpy()
    return out


@dataclass
class StabilityRun:
    """R long dreams under sticky random actions, from real start contexts.

    values:    {statistic: (R, steps)} per imagined frame (STATISTICS, "shift_explained",
               "grey" and, for a game with a known player tile, "player_visible")
    snapshots: uint8 (R, n, H, W, 3) frames at `snapshot_steps` (0 = the last real frame)
    """

    values: dict[str, np.ndarray]
    snapshots: np.ndarray
    snapshot_steps: list[int]
    steps: int


def stability(wm, reference: StabilityReference, *, steps: int, every: int,
              rollouts: int | None = None, action_names: Sequence[str] | None = None, num_steps: int | None = None,
              seed: int = 0, bf16: bool = False, reencode: bool | None = None,
              start: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
              guidance: float | None = None, feedback: bool | None = None) -> StabilityRun:
    """Dream `steps` steps in `rollouts` rows with the collector's sticky policy (actions held
    for a few steps, as in the training data); record the statistics of every frame and a
    snapshot every `every`. The dreams start from the bundle's shipped start contexts, or from
    `start`: real frames uint8 (R, K, H, W, 3) and the actions between them {key: (R, K-1, ...)}
    (`rollouts` then defaults to R, and must be R if given). `reencode`, `guidance`,
    `feedback`: override the bundle's settings (`WorldModel.step`)."""
    from worldsim.data.policies import StickyPolicy

    if start is not None:
        frames, actions = start
        if rollouts is not None and rollouts != len(frames):
            raise ValueError(f"stability: {len(frames)} start contexts for {rollouts} rollouts")
        rollouts = len(frames)
    if rollouts is None:
        raise ValueError("stability needs rollouts, or start contexts to count them from")
    if steps < 1 or rollouts < 1:
        raise ValueError(f"stability needs steps >= 1 and rollouts >= 1, got {steps}, {rollouts}")
    if start is None:
        rows = np.arange(rollouts) % wm.num_start_contexts
        frames = wm.start_frames[rows]
        actions = {k: v[rows] for k, v in wm.start_actions.items()}
    policy = StickyPolicy(wm.action_space, rollouts, action_names=action_names)
    policy.reset(np.ones(rollouts, bool))
    rng = np.random.default_rng(derive_seed(seed, 41))
    values = {name: np.zeros((rollouts, steps))
              for name in (*STATISTICS, "shift_explained", "grey")}
    if reference.player is not None:
        values["player_visible"] = np.zeros((rollouts, steps))
    snapshot_steps = [0] + [s for s in range(every, steps + 1, every)]
    snaps = [frames[:, -1]]
    previous = frames[:, -1]
    g = make_generator(wm.device, seed, 42)
    with autocast(wm.device, bf16):
        latents = wm.encode(frames)
        state = wm.start(latents, actions, make_generator(wm.device, seed, 43))
        shown = wm.render_start(frames[:, -1], latents[:, -1])
        for i in range(1, steps + 1):
            act = stack_actions(wm.action_space, policy.act(previous, rng))
            shown = wm.step(state, act, g, num_steps=num_steps, reencode=reencode,
                            guidance=guidance, feedback=feedback, shown=shown).shown
            frame = shown.frames.cpu().numpy()
            stats = frame_statistics(frame, previous, reference.histogram)
            if reference.player is not None:
                stats["player_visible"] = reference.player.visible(frame)
            for name in values:
                values[name][:, i - 1] = stats[name]
            if i in snapshot_steps:
                snaps.append(frame)
            previous = frame
    return StabilityRun(values=values, snapshots=np.stack(snaps, 1),
                        snapshot_steps=snapshot_steps, steps=steps)


def stability_metrics(run: StabilityRun, reference: StabilityReference,
                      window: int) -> dict[str, Any]:
    """Per statistic: the real frames' percentiles, the dream's mean per window of `window`
    steps and the share of its frames inside the real p1..p99 range; overall, the share of
    dream frames with every statistic inside (the real frames' own share beside it); and the
    share of steps that move (change above MOVING_CHANGE) and of those that scroll (move as a
    shifted copy of the previous frame), real and per window of the dream."""
    out: dict[str, Any] = {"steps": run.steps, "rollouts": int(next(iter(
        run.values.values())).shape[0]), "window": window, "statistics": {}}
    inside_all = np.ones_like(run.values[STATISTICS[0]], dtype=bool)
    real_inside_all = np.ones(len(reference.values[STATISTICS[0]]), dtype=bool)
    for name in STATISTICS:
        v = run.values[name]
        inside = reference.inside(name, v)
        inside_all &= inside
        real_inside_all &= reference.inside(name, reference.values[name])
        starts = list(range(0, run.steps, window))
        out["statistics"][name] = {
            "help": STATISTIC_HELP[name],
            "real": reference.percentiles(name),
            "window_start": starts,
            "dream_mean": [float(v[:, s:s + window].mean()) for s in starts],
            "dream_inside_share": [float(inside[:, s:s + window].mean()) for s in starts],
            "dream_inside_share_all": float(inside.mean()),
        }
    starts = list(range(0, run.steps, window))
    out["in_distribution"] = {
        "real_share": float(real_inside_all.mean()),
        "dream_share": float(inside_all.mean()),
        "dream_share_per_window": [float(inside_all[:, s:s + window].mean()) for s in starts],
        "dream_share_first_window": float(inside_all[:, :window].mean()),
        "dream_share_last_window": float(inside_all[:, starts[-1]:].mean()),
    }
    shares = {key: (steps_of(reference.values), steps_of(run.values))
              for key, steps_of in (("moving", moving_steps), ("scrolling", scrolling_steps))}
    if "player_visible" in run.values:
        shares["player_visible"] = (reference.values["player_visible"],
                                    run.values["player_visible"])
    for key, (real, dream) in shares.items():
        out[key] = {
            "real_share": float(np.mean(real)),
            "dream_share": float(dream.mean()),
            "dream_share_per_window": [float(dream[:, s:s + window].mean()) for s in starts],
            "dream_share_last_window": float(dream[:, starts[-1]:].mean()),
        }
    out["moving"]["threshold"] = MOVING_CHANGE
    out["scrolling"].update(max_shift=SCROLL_MAX_SHIFT, tolerance=SCROLL_TOLERANCE,
                            explained=SCROLL_EXPLAINED)
    return out


def moving_steps(values: dict[str, np.ndarray]) -> np.ndarray:
    """bool, the shape of values["change"]: steps whose frame changed by MOVING_CHANGE."""
    return values["change"] > MOVING_CHANGE


def scrolling_steps(values: dict[str, np.ndarray]) -> np.ndarray:
    """bool: the moving steps that a shift of the previous frame mostly explains."""
    return moving_steps(values) & (values["shift_explained"] > SCROLL_EXPLAINED)
