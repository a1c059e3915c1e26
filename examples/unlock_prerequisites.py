"""Does a pay-once reward model read the inventory? Its unlock probability for a crafting or
placing action, on recorded play, split by whether the episode had taken what the action needs.

    python examples/unlock_prerequisites.py --checkpoint runs/bundle-once-shipped --data data/crafter

In Crafter, `place_plant` unlocks only with a sapling in the inventory, `place_table` only with
wood, and so on. An episode that never took the prerequisite before a press cannot unlock the
achievement with it, so there the model's probability should be near 0; a model that cannot
tell would pay an agent a share of the achievement for every press (`pay_once` pays p times the
share not yet unlocked), and pressing again and again would earn it all. Reads every press of
each action in the chosen split (frames t and t + 1 and the action; a model trained with
`--no-next-frame-input` reads frame t alone);
needs the dataset's achievement labels (`worldsim data label-achievements`). Prints JSON: per
achievement and case, the presses, the real unlock rate, and the model's mean probability and
share of presses above 0.05.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

# achievement -> (the action that unlocks it, an achievement it needs taken earlier)
PREREQUISITES = {
    "place_plant": ("place_plant", "collect_sapling"),
    "place_table": ("place_table", "collect_wood"),
    "place_stone": ("place_stone", "collect_stone"),
    "place_furnace": ("place_furnace", "collect_stone"),
    "make_wood_pickaxe": ("make_wood_pickaxe", "place_table"),
    "make_wood_sword": ("make_wood_sword", "place_table"),
    "make_stone_pickaxe": ("make_stone_pickaxe", "collect_stone"),
    "make_stone_sword": ("make_stone_sword", "collect_stone"),
}


def main() -> None:
    import worldsim
    from worldsim.data.achievements import achievement_names, load_labels
    from worldsim.data.store import EpisodeStore
    from worldsim.evaluation.report import action_names_of
    from worldsim.training.encode import ensure_latents

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a bundle whose reward model pays achievements once (e.g. the one "
                             "examples/agents_in_shipped_dream.sh builds)")
    parser.add_argument("--data", default="data/crafter", help="a labelled Crafter dataset")
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = worldsim.load(args.checkpoint)
    if not model.achievements:
        raise SystemExit(f"{args.checkpoint}'s reward model does not pay achievements once")
    store = EpisodeStore(args.data)
    names = achievement_names(store)
    if names is None:
        raise SystemExit(f"{args.data} has no achievement labels; run `worldsim data "
                         f"label-achievements {args.data}`")
    action_names = action_names_of(store)
    if action_names is None:
        raise SystemExit(f"{args.data}: its env does not name its actions (a Crafter dataset?)")
    tag = ensure_latents(model.vae, store, args.checkpoint)
    # presses[achievement][case] = (latents of frames t and t + 1, unlocked by the press)
    presses = {a: {"prerequisite_taken": [], "prerequisite_not_taken": []}
               for a in PREREQUISITES if a in model.achievements}
    for name in store.split(args.split):
        actions = np.asarray(store.load(name).actions["action"])
        labels, latents = load_labels(store, name), store.load_latents(tag, name)
        for achievement, cases in presses.items():
            action, needed = PREREQUISITES[achievement]
            for t in np.flatnonzero(actions == action_names.index(action)):
                taken = bool(labels[:t, names.index(needed)].any())
                case = "prerequisite_taken" if taken else "prerequisite_not_taken"
                cases[case].append((latents[t], latents[t + 1],
                                    bool(labels[t, names.index(achievement)])))

    report = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split}
    with torch.no_grad():
        for achievement, cases in presses.items():
            column = model.achievements.index(achievement)
            action = action_names.index(PREREQUISITES[achievement][0])
            report[achievement] = {"needs": PREREQUISITES[achievement][1]}
            for case, rows in cases.items():
                if not rows:
                    report[achievement][case] = {"presses": 0}
                    continue
                before, after = (torch.tensor(np.stack([row[i] for row in rows]),
                                              dtype=torch.float32) for i in (0, 1))
                logits = model.reward_model.logits(
                    before, {"action": torch.full((len(rows),), action)}, after)[2]
                p = logits[:, column].sigmoid()
                report[achievement][case] = {
                    "presses": len(rows),
                    "real_unlock_rate": float(np.mean([row[2] for row in rows])),
                    "mean_probability": p.mean().item(),
                    "share_above_0.05": (p > 0.05).float().mean().item()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
