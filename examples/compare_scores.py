"""Mean +- std of Crafter scores over seeds, per group of `worldsim score --out` directories.

    python examples/compare_scores.py dream='runs/agents/score-dream-s*' real='runs/agents/score-real-s*'

Prints a markdown table (score, return, episode length, and the achievements with the largest
differences between groups) and writes the same as JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import glob
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB of score directories")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = {}
    for group in args.groups:
        label, _, pattern = group.partition("=")
        if not pattern:
            raise SystemExit(f"expected LABEL=GLOB, got {group!r}")
        summary[label] = summarize(load_group(pattern))
    print("| agent | seeds | Crafter score (%) | return | episode length |")
    print("|---|---|---|---|---|")
    for label, s in summary.items():
        print(f"| {label} | {s['seeds']} | {s['score_mean']:.2f} +- {s['score_std']:.2f} | "
              f"{s['return_mean']:.2f} | {s['length_mean']:.0f} |")
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


if __name__ == "__main__":
    main()
