# The settings every fine-tune of the Crafter DiT shares (examples/reproduce_default_model.sh,
# examples/two_hour_candidate.sh): sourced, with $runs set (the VAE is $runs/vae-f4).
#
#   fine_tune_dynamics DATA OUT INIT MINUTES BUNDLE_STEPS [more train dynamics options...]
#
# lr 3e-4 constant after 50 warm-up steps, the action left out of 10% of frames (for
# classifier-free guidance), MINUTES of training time (resumable: the limit counts training
# time over all segments of the run).
fine_tune_dynamics() {
    worldsim train dynamics --data "$1" --vae "$runs/vae-f4" --out "$2" \
        --init-from "$3" --action-dropout 0.1 "${@:6}" \
        --eval-context 2 --eval-horizon 8 --eval-windows 32 \
        --train.batch-size 32 --train.lr 3e-4 --train.lr-schedule constant \
        --train.warmup-steps 50 --train.ema-decay 0.995 --train.steps 100000 \
        --train.time-limit-min "$4" --train.eval-every 400 --train.checkpoint-every-min 5 \
        --train.threads 2 --bundle-sample-steps "$5"
}
