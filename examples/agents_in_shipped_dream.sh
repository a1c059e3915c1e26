#!/usr/bin/env bash
# Agents trained only in the shipped dream (worldsim/assets/crafter-default, as `worldsim play`
# and gym.make("worldsim/CrafterDream-v0") run it: 2 sampler steps, guidance 2, re-encoding,
# the refiner), with the reward model that pays each achievement once per episode, scored in
# the real game beside the random agent on the same seeds (issue: agents in imagination).
#   examples/agents_in_shipped_dream.sh [OUT_DIR]
# About 4.5 hours on 2 CPU cores. Needs data/crafter (examples/reproduce_default_model.sh).
#
# Only the reward model is new: the shipped bundle's reads frames t and t+1, whose events the
# DiT rarely draws (docs/DESIGN-NOTES.md); this one reads frame t and the action and learns an
# unlock probability per achievement, which the dream pays once per episode. The agents are
# those of examples/agents_in_imagination.sh (its dream_agents settings).
set -euo pipefail
out=${1:-runs/agents-shipped}
data=${DATA:-data/crafter}
runs=${RUNS:-runs}
shipped=worldsim/assets/crafter-default
bundle="$runs/bundle-once-shipped"

worldsim data label-achievements "$data" --no-progress  # resumes: labels already made stay
worldsim train reward --data "$data" --vae "$shipped/vae" --action-input --no-next-frame-input \
    --achievements --out "$runs/reward-once-shipped" --train.steps 4000 --train.threads 2
# The shipped parts and sampling (config.json "sampling"), with the pay-once reward model; start
# contexts from the validation episodes of the same data, with what each had unlocked before.
worldsim bundle --vae "$shipped/vae" --dynamics "$shipped/dynamics" --refiner "$shipped/refiner" \
    --reward "$runs/reward-once-shipped" --data "$data" --sample-steps 2 --guidance 2 \
    --sample-sigma-min 0.033 --out "$bundle"

# The same bundle paying by the "best" rule: a transition pays only the rise of the best unlock
# probability the episode has reached, so repeating a press the model is unsure will land
# (`place_plant`: 0.12 with a sapling, examples/unlock_prerequisites.py) pays once, not again.
worldsim bundle --vae "$shipped/vae" --dynamics "$shipped/dynamics" --refiner "$shipped/refiner" \
    --reward "$runs/reward-once-shipped" --data "$data" --sample-steps 2 --guidance 2 \
    --sample-sigma-min 0.033 --pay-once best --out "$runs/bundle-best-shipped"

mkdir -p "$out"
# train_agents NAME [IMAGINE_ARGS...]: three dream agents at a time on one thread each
# (~27 min for 150 updates), written to (or resumed from) $out/NAME-s{0,1,2}.
train_agents() {
    local name=$1
    shift
    for seed in 0 1 2; do
        worldsim imagine --checkpoint "$bundle" --obs-mode rgb --bf16 --num-envs 32 --steps 150 \
            --training.entropy-coef 0.03 --preset small --training.lr 6e-4 --threads 1 \
            --log-every 10 --save-every 25 --seed "$seed" --out "$out/$name-s$seed" "$@" &
    done
    wait
}
# dream_agents NAME [IMAGINE_ARGS...]: train_agents, then score them in the real game.
dream_agents() {
    train_agents "$@"
    for seed in 0 1 2; do
        worldsim score --agent "$out/$1-s$seed/agent" --env worldsim/Crafter-v0 \
            --episodes 20 --seed $((1000 * (seed + 1))) --out "$out/score-$1-s$seed"
    done
}

# Every rollout of 15 steps restarts from fresh real contexts (as DIAMOND does)...
dream_agents once
# ... or the dream episodes carry on across rollouts, up to 150 steps, so an achievement the
# agent already took in the episode pays nothing more (the pay-once reward's memory).
dream_agents carried --training.no-restart --max-episode-steps 150
dream_agents carried300 --training.no-restart --max-episode-steps 300
for seed in 0 1 2; do
    worldsim score --agent random --env worldsim/Crafter-v0 --episodes 20 \
        --seed $((1000 * (seed + 1))) --out "$out/score-random-s$seed"
done
python examples/compare_scores.py once="$out/score-once-s*" carried="$out/score-carried-s*" \
    carried300="$out/score-carried300-s*" random="$out/score-random-s*" --json "$out/summary.json"

# The carried agents again on other scoring seeds (4000-6000), beside random play there.
for seed in 0 1 2; do
    for name in carried carried300; do
        worldsim score --agent "$out/$name-s$seed/agent" --env worldsim/Crafter-v0 \
            --episodes 20 --seed $((1000 * (seed + 4))) --out "$out/fresh-$name-s$seed"
    done
    worldsim score --agent random --env worldsim/Crafter-v0 --episodes 20 \
        --seed $((1000 * (seed + 4))) --out "$out/fresh-random-s$seed"
done
python examples/compare_scores.py carried="$out/fresh-carried-s*" \
    carried300="$out/fresh-carried300-s*" random="$out/fresh-random-s*" \
    --json "$out/summary-fresh.json"

# against_carried300 NAME: score $out/NAME-s* on both sets of seeds (1000-3000 and
# 4000-6000) and compare them with the 300-step carried agents and random play there.
against_carried300() {
    for seed in 0 1 2; do
        for set in "score 1" "fresh 4"; do
            read -r prefix first <<< "$set"
            worldsim score --agent "$out/$1-s$seed/agent" --env worldsim/Crafter-v0 \
                --episodes 20 --seed $((1000 * (seed + first))) --out "$out/$prefix-$1-s$seed"
        done
    done
    for set in "score summary" "fresh summary-fresh"; do
        read -r prefix summary <<< "$set"
        python examples/compare_scores.py carried300="$out/$prefix-carried300-s*" \
            "$1=$out/$prefix-$1-s*" random="$out/$prefix-random-s*" \
            --json "$out/$summary-$1.json"
    done
}

# Twice the training: the 300-step agents resumed from their 150 updates up to 300 (the lr is
# constant, so this is the longer run).
for seed in 0 1 2; do
    [ -e "$out/long300-s$seed" ] || cp -r "$out/carried300-s$seed" "$out/long300-s$seed"
done
train_agents long300 --training.no-restart --max-episode-steps 300 --steps 300
against_carried300 long300

# The 300-step carried agents again, 150 updates, in the bundle that pays by the "best" rule.
bundle="$runs/bundle-best-shipped" train_agents best300 --training.no-restart \
    --max-episode-steps 300
against_carried300 best300

# The 300-step carried agents again, 150 updates, paid for achievements only (`--reward-mode
# achievements`): far into a carried dream the rest of the reward, Crafter's health changes,
# costs 0.06 per step where the game's recorded play lost 0.015-0.02 per step, and no dream
# episode ends (examples/dream_payments.py; docs/DESIGN-NOTES.md, what long dreams pay).
train_agents ach300 --training.no-restart --max-episode-steps 300 --reward-mode achievements
against_carried300 ach300

# The same in a dream whose world model learnt from 150k real steps only, the issue's budget of
# at most 200k: the shipped DiT's last fine-tune added 100k steps of every-hour play, so here the
# DiT is the one before it (examples/reproduce_default_model.sh's dyn-guided, with the sampling
# it shipped with: 1 step, guidance 2), the other parts as above.
worldsim bundle --vae "$shipped/vae" --dynamics "${GUIDED_DIT:-$runs/dyn-guided}" \
    --refiner "$shipped/refiner" --reward "$runs/reward-once-shipped" --data "$data" \
    --sample-steps 1 --guidance 2 --out "$runs/bundle-once-150k"
bundle="$runs/bundle-once-150k" train_agents ach150k --training.no-restart \
    --max-episode-steps 300 --reward-mode achievements
against_carried300 ach150k

# The 150k-step dream's agents trained on to 300 updates (the lr is constant, so this is the
# longer run), scored as above and on a third set of seeds (7000-9000) beside the 150-update
# agents and random play there: 20 episodes leave a geometric-mean score noisy, so
# `compare_scores.py --pool` also scores each agent over all its 60 episodes.
for seed in 0 1 2; do
    [ -e "$out/ach150k300-s$seed" ] || cp -r "$out/ach150k-s$seed" "$out/ach150k300-s$seed"
done
bundle="$runs/bundle-once-150k" train_agents ach150k300 --training.no-restart \
    --max-episode-steps 300 --reward-mode achievements --steps 300
against_carried300 ach150k300
for seed in 0 1 2; do
    for name in ach150k ach150k300 random; do
        agent="$out/$name-s$seed/agent"
        [ "$name" = random ] && agent=random
        worldsim score --agent "$agent" --env worldsim/Crafter-v0 --episodes 20 \
            --seed $((1000 * (seed + 7))) --out "$out/third-$name-s$seed"
    done
done
python examples/compare_scores.py ach150k="$out/third-ach150k-s*" \
    ach150k300="$out/third-ach150k300-s*" random="$out/third-random-s*" \
    --json "$out/summary-third-ach150k300.json"
python examples/compare_scores.py --pool --json "$out/summary-pooled.json" \
    --plot docs/agents-eval/achievements-dream-achievements-only-150k.png \
    "dream agents (150k world model)=$out/*-ach150k300-s*" random="$out/*-random-s*" \
    ach150k="$out/*-ach150k-s*" carried300="$out/*-carried300-s*" ach300="$out/*-ach300-s*"

# The same agent trained on the real game's 150k steps (examples/agents_in_imagination.sh's
# settings: 625 updates x 16 envs x 15 steps, the game's own reward), scored on the same three
# sets of seeds and pooled beside the 150k dream's agents and random play.
for seed in 0 1 2; do
    worldsim imagine --env worldsim/Crafter-v0 --training.no-restart --num-envs 16 \
        --steps 625 --preset small --training.lr 6e-4 --threads 1 --log-every 10 \
        --save-every 25 --seed "$seed" --out "$out/real-s$seed" &
done
wait
for seed in 0 1 2; do
    for set in "score 1" "fresh 4" "third 7"; do
        read -r prefix first <<< "$set"
        worldsim score --agent "$out/real-s$seed/agent" --env worldsim/Crafter-v0 \
            --episodes 20 --seed $((1000 * (seed + first))) --out "$out/$prefix-real-s$seed"
    done
done
python examples/compare_scores.py --pool --json "$out/summary-pooled-real.json" \
    real="$out/*-real-s*" dream="$out/*-ach150k300-s*" random="$out/*-random-s*"
