"""Mean +- std of Crafter scores over seeds, per group of `worldsim score --out` directories.

    python examples/compare_scores.py dream='runs/agents/score-dream-s*' real='runs/agents/score-real-s*'

Prints a markdown table (score, return, episode length, and the achievements with the largest
differences between groups) and writes the same as JSON with --json FILE.

With --pool, a group's directories that end in the same -sN (one agent, trained with seed N,
scored on several sets of seeds) are pooled into one score over all their episodes, and the
mean +- std is taken over the agents: the geometric mean of 20 episodes is noisy, since one
rare achievement in one episode moves it, and more episodes also raise it (a rare achievement
is seen at all more often), so compare pooled scores only with scores of as many episodes.

    python examples/compare_scores.py --pool random='runs/agents-shipped/*-random-s*' \
        dream='runs/agents-shipped/*-ach150k300-s*'
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def load_group(pattern: str) -> list[dict]:
    paths = sorted(glob.glob(str(Path(pattern) / "score.json")))
    if not paths:
        raise SystemExit(f"no score.json under {pattern!r}")
    return [json.loads(Path(p).read_text()) | {"path": p} for p in paths]


def summarize(runs: list[dict]) -> dict:
    scores = np.array([r["score"] for r in runs])
    rates = {k: float(np.mean([r["success_rates"][k] for r in runs]))
             for k in runs[0]["success_rates"]}
    return {"seeds": len(runs), "episodes_per_seed": [r["episodes"] for r in runs],
            "score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "scores": scores.tolist(),
            "return_mean": float(np.mean([r["return_mean"] for r in runs])),
            "length_mean": float(np.mean([r["length_mean"] for r in runs])),
            "success_rates": rates, "runs": [r["path"] for r in runs]}


def pooled(runs: list[dict]) -> list[dict]:
    """One run per agent seed (the -sN its directory ends in) holding all that seed's episodes,
    its score and success rates computed over them as `worldsim score` would."""
    from agents.score import crafter_score, success_rates

    by_seed: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        match = re.search(r"-s(\d+)$", Path(run["path"]).parent.name)
        if match is None:
            raise SystemExit(f"--pool needs directories ending in -sN, not {run['path']}")
        by_seed[match.group(1)].append(run)
    merged = []
    for _, group in sorted(by_seed.items()):
        episodes = [e for run in group for e in run["per_episode"]]
        rates = success_rates([e["achievements"] for e in episodes],
                              list(group[0]["success_rates"]))
        merged.append({"score": crafter_score(list(rates.values())), "success_rates": rates,
                       "episodes": len(episodes),
                       "return_mean": float(np.mean([e["episode_return"] for e in episodes])),
                       "length_mean": float(np.mean([e["length"] for e in episodes])),
                       "path": ", ".join(run["path"] for run in group)})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB of score directories")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--plot", type=Path,
                        help="a bar plot of the first group's success rates (PNG)")
    parser.add_argument("--pool", action="store_true",
                        help="pool each agent seed's directories (-sN) into one score")
    args = parser.parse_args()
    summary = {}
    for group in args.groups:
        label, _, pattern = group.partition("=")
        if not pattern:
            raise SystemExit(f"expected LABEL=GLOB, got {group!r}")
        runs = load_group(pattern)
        summary[label] = summarize(pooled(runs) if args.pool else runs)
    print("| agent | seeds | episodes | Crafter score (%) | return | episode length |")
    print("|---|---|---|---|---|---|")
    for label, s in summary.items():
        print(f"| {label} | {s['seeds']} | {sum(s['episodes_per_seed'])} | {s['score_mean']:.2f}"
              f" +- {s['score_std']:.2f} | {s['return_mean']:.2f} | {s['length_mean']:.0f} |")
    names = list(next(iter(summary.values()))["success_rates"])
    spread = {n: np.ptp([s["success_rates"][n] for s in summary.values()]) for n in names}
    shown = [n for n in sorted(names, key=spread.get, reverse=True) if spread[n] > 0][:8]
    if shown:
        print("\n| achievement (success %) | " + " | ".join(summary) + " |")
        print("|---|" + "---|" * len(summary))
        for n in shown:
            print(f"| {n} | " + " | ".join(f"{s['success_rates'][n]:.1f}"
                                           for s in summary.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.plot:
        from agents.score import plot_success_rates

        label, first = next(iter(summary.items()))
        plot_success_rates(first["success_rates"],
                           f"{label}: {first['seeds']} agents, {sum(first['episodes_per_seed'])} "
                           f"real episodes, {first['score_mean']:.2f} +- "
                           f"{first['score_std']:.2f}%", args.plot)


if __name__ == "__main__":
    main()
