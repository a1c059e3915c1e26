# How every Crafter DiT of examples/reproduce_default_model.sh and
# examples/two_hour_candidate.sh is trained: sourced, with $runs set (the VAE is $runs/vae-f4).
#
#   train_dit DATA OUT BUDGET LR_SCHEDULE [more train dynamics options...]
#       from scratch: width 192, 4 blocks, 3 heads, a window of 4 frames (3M parameters),
#       lr 6e-4 after 100 warm-up steps on LR_SCHEDULE (constant or cosine)
#   fine_tune_dynamics DATA OUT INIT BUDGET BUNDLE_STEPS [more train dynamics options...]
#       from INIT: lr 3e-4 constant after 50 warm-up steps, the action left out of 10% of frames
#       (for classifier-free guidance)
#
# BUDGET is minutes of training time (resumable: the limit counts training time over all
# segments of the run), or a number of optimiser steps written as `2900steps`, which gives the
# same weights on a fast or a slow machine (a cosine then spans exactly those steps). Both
# train batches of 32 windows, keep an EMA of the weights (0.995), check the open-loop rollout
# every 400 steps and checkpoint every 5 minutes.

# BUDGET as train options: (--train.steps N --train.time-limit-min M).
dit_budget() {
    if [[ $1 == *steps ]]; then
        echo --train.steps "${1%steps}" --train.time-limit-min 600
    else
        echo --train.steps 100000 --train.time-limit-min "$1"
    fi
}

# The options every DiT run shares, then the run's own: DATA OUT BUDGET [options...].
dit_run() {
    # shellcheck disable=SC2046  # dit_budget's words are options
    worldsim train dynamics --data "$1" --vae "$runs/vae-f4" --out "$2" "${@:4}" \
        --eval-context 2 --eval-horizon 8 --eval-windows 32 \
        --train.batch-size 32 --train.ema-decay 0.995 $(dit_budget "$3") \
        --train.eval-every 400 --train.checkpoint-every-min 5 --train.threads 2
}

train_dit() {
    dit_run "$1" "$2" "$3" --dit.width 192 --dit.depth 4 --dit.heads 3 --dit.window 4 \
        --train.lr 6e-4 --train.lr-schedule "$4" --train.warmup-steps 100 \
        --bundle-sample-steps 1 "${@:5}"
}

fine_tune_dynamics() {
    dit_run "$1" "$2" "$4" --init-from "$3" --action-dropout 0.1 \
        --train.lr 3e-4 --train.lr-schedule constant --train.warmup-steps 50 \
        --bundle-sample-steps "$5" "${@:6}"
}
