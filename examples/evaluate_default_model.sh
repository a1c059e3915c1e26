#!/usr/bin/env bash
# The main job: evaluate the shipped Crafter world model against the real game.
# Collects fresh real play (a seed the model never saw), then writes the full report
# (metrics.json, report.md, plots, a dream-vs-real GIF) and a dream video.
#   examples/evaluate_default_model.sh [OUT_DIR]      (about 15-20 minutes on 2 CPU cores)
set -euo pipefail
out=${1:-runs/default-eval}
bundle=$(python -c "from envs.world_model_env import DEFAULT_CHECKPOINT; print(DEFAULT_CHECKPOINT)")
mkdir -p "$out"
[ -e "$out/crafter-heldout/dataset.json" ] ||  # a re-run keeps the play it collected
    worldsim collect --env worldsim/Crafter-v0 --steps 20000 --out "$out/crafter-heldout" \
    --num-envs 2 --seed 12345
worldsim eval --checkpoint "$bundle" --data "$out/crafter-heldout" --out "$out/eval"
worldsim dream --checkpoint "$bundle" --steps 200 --out "$out/dream_vs_real.mp4" --side-by-side
echo "report: $out/eval/report.md"
