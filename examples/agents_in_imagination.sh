#!/usr/bin/env bash
# Agents trained only in the dream vs the same agent trained on the real game, each
# with 3 seeds, scored in the real game beside the random agent (issue: agents in imagination).
#   examples/agents_in_imagination.sh [OUT_DIR]
# About 3 hours on 2 CPU cores.
#
# The world model learnt from 150k real steps (examples/reproduce_default_model.sh); the real-
# game agents get the same 150k steps (625 updates x 16 envs x 15 steps). The dream agents
# imagine 150 updates x 32 envs x 15 steps = 72k steps from the bundle's real start contexts.
#
# The shipped bundle's reward model reads frames t and t+1; in the dream it almost never sees
# an event, because the DiT does not draw them (docs/DESIGN-NOTES.md). The dream agents here
# use a reward model that reads frame t and the action instead (its expected reward before
# the outcome), which pays for the actions that earn rewards but can be farmed, since the
# dream never shows that a reward was taken. Needs data/crafter and runs/vae-f4,
# runs/dyn-default from the reproduce script.
set -euo pipefail
out=${1:-runs/agents}
data=${DATA:-data/crafter}
runs=${RUNS:-runs}
worldsim train reward --data "$data" --vae "$runs/vae-f4" --action-input --no-next-frame-input \
    --out "$runs/reward-state-action" --train.steps 4000 --train.threads 2
worldsim bundle --vae "$runs/vae-f4" --dynamics "$runs/dyn-default" --data "$data" \
    --reward "$runs/reward-state-action" --sample-steps 1 --no-reencode \
    --out "$runs/bundle-state-action"
bundle="$runs/bundle-state-action"
common=(--preset small --training.lr 6e-4 --threads 1 --log-every 10 --save-every 25)
mkdir -p "$out"

# dream_agents BUNDLE NAME: three dream agents at a time on one thread each (~25 min),
# written to $out/NAME-s{0,1,2}.
dream_agents() {
    for seed in 0 1 2; do
        worldsim imagine --checkpoint "$1" --obs-mode rgb --bf16 --num-envs 32 --steps 150 \
            --training.entropy-coef 0.03 "${common[@]}" --seed "$seed" --out "$out/$2-s$seed" &
    done
    wait
}

# Dream agents, then the real-game agents.
dream_agents "$bundle" dream
for seed in 0 1 2; do
    worldsim imagine --env worldsim/Crafter-v0 --training.no-restart --num-envs 16 --steps 625 \
        "${common[@]}" --seed "$seed" --out "$out/real-s$seed"
done

for seed in 0 1 2; do
    for kind in dream real; do
        worldsim score --agent "$out/$kind-s$seed/agent" --env worldsim/Crafter-v0 \
            --episodes 20 --seed $((1000 * (seed + 1))) --out "$out/score-$kind-s$seed"
    done
    worldsim score --agent random --env worldsim/Crafter-v0 --episodes 20 \
        --seed $((1000 * (seed + 1))) --out "$out/score-random-s$seed"
done
python examples/compare_scores.py dream="$out/score-dream-s*" real="$out/score-real-s*" \
    random="$out/score-random-s*" --json "$out/summary.json"

# The same dream agents on a reward that pays each achievement once per episode: label which
# achievement each recorded transition unlocked (replay from the seeds), train the reward
# model with its unlock head, and repeat the dream runs and scoring.
worldsim data label-achievements "$data"
worldsim train reward --data "$data" --vae "$runs/vae-f4" --action-input --no-next-frame-input \
    --achievements --out "$runs/reward-once" --train.steps 4000 --train.threads 1
worldsim bundle --vae "$runs/vae-f4" --dynamics "$runs/dyn-default" --data "$data" \
    --reward "$runs/reward-once" --sample-steps 1 --no-reencode --out "$runs/bundle-once"
dream_agents "$runs/bundle-once" once
for seed in 0 1 2; do
    worldsim score --agent "$out/once-s$seed/agent" --env worldsim/Crafter-v0 --episodes 20 \
        --seed $((1000 * (seed + 1))) --out "$out/score-once-s$seed"
done
python examples/compare_scores.py once="$out/score-once-s*" random="$out/score-random-s*" \
    --json "$out/summary-once.json"
