# The Crafter data, VAE and latent cache that examples/reproduce_default_model.sh and
# examples/two_hour_candidate.sh share; sourced by both, with $data and $runs set.

# 150k transitions of Crafter with the "sticky" policy (actions held for random durations, mostly
# moves and "do"), so the player travels and interacts instead of dithering in place.
# (A seed is collected into a directory once; on a re-run an existing dataset is kept: delete it
# to collect again.)
[ -e "$data/dataset.json" ] ||
    worldsim collect --env worldsim/Crafter-v0 --steps 150000 --out "$data" --num-envs 4 --workers 2 --seed 0

# Factor-4 VAE, 4 latent channels: 64x64x3 frames -> 4x16x16 latents (35 dB PSNR after 13 min).
worldsim train vae --data "$data" --out "$runs/vae-f4" --vae.factor 4 --vae.latent-channels 4 \
    --vae.channels 128 --train.batch-size 8 --train.lr 2e-3 --train.steps 60000 \
    --train.time-limit-min 13 --train.eval-every 2000 --train.checkpoint-every-min 5 --train.threads 1

worldsim encode --vae "$runs/vae-f4" --data "$data" --batch 256
