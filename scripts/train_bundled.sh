#!/usr/bin/env bash
# Reproduce the bundled lfw128 model on a CPU (resumable: rerun after an interruption).
# Run folders and caches go outside the repository: RUNS (default ~/ssae-runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-$HOME/ssae-runs}
MP_PY=${MP_PY:-python}   # a Python with the `labels` extra (mediapipe pins numpy<2; use a separate venv)
LIMITATIONS=${LIMITATIONS:-"Edits change colour and shading, not fine texture: the texture code learned to carry an image's colour statistics (the late texture swap), while Park et al.'s swap GAN, which teaches hair and skin texture, was too slow for this machine. A seed is a random texture code, so an edit is a random colour cast of the region (the refinement blocks pull it towards muted, darker tones); at strength 1 the noise already dominates the unit-norm code, so larger strengths add little. Small regions show their mask's shape (the landmark polygons of nose and lips). Reconstructions are soft (25 dB at 128 px). Bar used for a clearly visible change: at least 10 of 255 levels on average inside the region; the earlier bundle (L1 warm-up only) moved 2.5."}

# 1. landmark-derived nose / eyes / lips masks for LFW (once)
$MP_PY -m ssae.cli data lfw-masks --lfw "$SHARED/lfw_parts" --out "$RUNS/lfw_masks"
# 2. Swapping Autoencoder, in two stages without discriminators: an L1-only warm-up (3000 steps), then, from
#    those weights, L1 + the late texture swap (3000 steps; see ssae/train/sae.py), which is what makes the
#    injection layer's texture code move the image. (Continuing the first run with `--steps N` instead adds
#    Park et al.'s full objective: GAN, patch co-occurrence GAN, R1; far too slow for this machine.)
ssae train sae --preset lfw128 --out "$RUNS/sae" --steps 3000 --warmup-steps 3000 --batch-size 8 \
  --eval-every 500 --ckpt-every 200 --lfw "$SHARED/lfw_parts" --unlabelled "$SHARED/lfw_unlabelled/images"
ssae train sae --preset lfw128 --init "$RUNS/sae/sae.safetensors" --out "$RUNS/sae_ts" --steps 3000 \
  --warmup-steps 3000 --lambda-texture-swap 1 --lr 0.001 --batch-size 8 --eval-every 250 --ckpt-every 100 \
  --lfw "$SHARED/lfw_parts" --unlabelled "$SHARED/lfw_unlabelled/images"
# 3. SMPN (all five ROIs as one batched bank); BCE + soft Dice
ssae train smpn --preset lfw128 --out "$RUNS/smpn" --steps 2500 --batch-size 16 --lr 2e-3 --log-every 20 \
  --ckpt-every 250 --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
# 4. refinement blocks on edits of the frozen SAE
ssae train rb --preset lfw128 --out "$RUNS/rb" --steps 500 --batch-size 8 --lr 2e-4 \
  --sae "$RUNS/sae_ts/sae.safetensors" --smpn "$RUNS/smpn/smpn.safetensors" \
  --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
# 5. bundle: weights into ssae/assets/lfw128, evaluation on the LFW test split, model card, README picture
python scripts/bundle_model.py --runs "$RUNS" --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks" \
  --sae-stages sae:3000 sae_ts \
  --sae-note "two stages without discriminators: the trainer's L1-only warm-up (3000 steps, batch 8, Adam 0.002, betas (0, 0.99)), then from those weights L1 + the late texture swap (3000 steps, batch 8, Adam 0.001; \`--lambda-texture-swap 1\`): each image is also decoded with its pair's texture code at the injection layer only and matched, by L1, to itself recoloured with the pair's per-channel mean and std. Without the second stage the injection layer's code moved the image by 2.5 levels." \
  --limitations "$LIMITATIONS"
