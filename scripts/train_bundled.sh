#!/usr/bin/env bash
# Reproduce the bundled lfw128 model on a CPU (resumable: rerun after an interruption).
# Run folders and caches go outside the repository: RUNS (default ~/ssae-runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-$HOME/ssae-runs}
MP_PY=${MP_PY:-python}   # a Python with the `labels` extra (mediapipe pins numpy<2; use a separate venv)

# 1. landmark-derived nose / eyes / lips masks for LFW (once)
$MP_PY -m ssae.cli data lfw-masks --lfw "$SHARED/lfw_parts" --out "$RUNS/lfw_masks"
# 2. Swapping Autoencoder: L1-only warm-up, then the full SAE objective
ssae train sae --preset lfw128 --out "$RUNS/sae" --steps 4000 --warmup-steps 3000 --batch-size 8 \
  --eval-every 500 --ckpt-every 200 --lfw "$SHARED/lfw_parts" --unlabelled "$SHARED/lfw_unlabelled/images"
# 3. SMPN (all five ROIs as one batched bank); BCE + soft Dice
ssae train smpn --preset lfw128 --out "$RUNS/smpn" --steps 2500 --batch-size 16 --lr 2e-3 --log-every 20 \
  --ckpt-every 250 --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
# 4. refinement blocks on edits of the frozen SAE
ssae train rb --preset lfw128 --out "$RUNS/rb" --steps 1200 --batch-size 8 --lr 2e-4 \
  --sae "$RUNS/sae/sae.safetensors" --smpn "$RUNS/smpn/smpn.safetensors" \
  --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
# 5. bundle: weights into ssae/assets/lfw128, evaluation on the LFW test split, model card, README picture
python scripts/bundle_model.py --runs "$RUNS" --lfw "$SHARED/lfw_parts" --lfw-derived "$RUNS/lfw_masks"
