#!/usr/bin/env bash
# Reproduce the bundled lfw128 model on a CPU (resumable: rerun after an interruption).
# Run folders and caches go outside the repository: RUNS (default ~/ssae-runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-$HOME/ssae-runs}
MP_PY=${MP_PY:-python}   # a Python with the `labels` extra (mediapipe pins numpy<2; use a separate venv)
SAE_NOTE=${SAE_NOTE:-"two stages without discriminators: the trainer's L1-only warm-up (3000 steps, batch 8, Adam 0.002, betas (0, 0.99)), then from those weights L1 + the late texture swap (3000 steps, batch 8, Adam 0.001; \`--lambda-texture-swap 1\`): each image is also decoded with its pair's texture code at the injection layer only and matched, by L1, to itself recoloured with the pair's per-channel mean and std; then 1200 more steps of the second stage on the face-framed crops. Without the late texture swap the injection layer's code moved the image by 2.5 levels."}
LIMITATIONS=${LIMITATIONS:-"Edits change colour and shading, not fine texture: the texture code learned to carry an image's colour statistics (the late texture swap), while Park et al.'s swap GAN, which teaches hair and skin texture, was too slow for this machine. A seed is a random texture code, so an edit is a random colour cast of the region (the refinement blocks pull it towards muted, darker tones), and how strong it is depends on the seed. A reference edit gives the region the reference photo's texture code, which describes that whole photo's colours, not only its hair or lips. Small regions show their mask's shape (the landmark polygons of nose and lips), and masks come from a 128 px crop, so their edges are soft on large photos. The model's own output is soft (25 dB at 128 px): edits paste its change onto the photo, so the photo keeps its detail. Faces smaller than about 1/16 of the photo's short side, strongly turned or upside down are not found."}

# 1. landmark-derived nose / eyes / lips masks for LFW (once)
$MP_PY -m ssae.cli data lfw-masks --lfw "$SHARED/lfw_parts" --out "$RUNS/lfw_masks"
# Every training image is cut by the face framing edits use (ssae.face: MTCNN landmarks -> similarity crop).
# CONTINUE=DIR instead continues a previous bundle DIR on the framed crops (how the shipped weights were made:
# the from-scratch stages below ran on the earlier square-padded framing, which on LFW is within a few pixels of
# this one, then SAE 1200, SMPN 800 and RB 400 steps continued them on the framed crops).
CONTINUE=${CONTINUE:-}
if [ -n "$CONTINUE" ]; then
  ssae train sae --preset lfw128 --init "$CONTINUE/sae.safetensors" --out "$RUNS/sae_framed" --steps 1200 \
    --warmup-steps 1200 --lambda-texture-swap 1 --lr 0.001 --batch-size 8 --eval-every 400 --ckpt-every 100 \
    --lfw "$SHARED/lfw_parts" --unlabelled "$SHARED/lfw_unlabelled/images"
  ssae train smpn --preset lfw128 --init "$CONTINUE/smpn.safetensors" --out "$RUNS/smpn_framed" --steps 800 \
    --batch-size 16 --lr 1e-3 --log-every 20 --ckpt-every 100 --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
  ssae train rb --preset lfw128 --init "$CONTINUE/rb.safetensors" --out "$RUNS/rb_framed" --steps 400 --batch-size 8 \
    --lr 2e-4 --sae "$RUNS/sae_framed/sae.safetensors" --smpn "$RUNS/smpn_framed/smpn.safetensors" \
    --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
  python scripts/bundle_model.py --runs "$RUNS" --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks" \
    --sae-stages sae_framed --smpn-run smpn_framed --rb-run rb_framed --continued-from "$CONTINUE" \
    --sae-note "$SAE_NOTE" --limitations "$LIMITATIONS"
  exit 0
fi
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
  --sae-stages sae:3000 sae_ts --sae-note "$SAE_NOTE" \
  --limitations "$LIMITATIONS"
