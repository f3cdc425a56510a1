#!/usr/bin/env bash
# Recipe of the shipped weights/embedder.pt (+ weights/embedder.json).
# Run from the repository root. Data lands in data/embedder/ (git-ignored).
# The training uses ONE torch thread (the machine it was made on had 2 cores, shared).
set -euo pipefail
SC=.venv/bin/sorterbot-cloud

# 1. Simulator crops: training item types only (TRAIN_ITEM_TYPES, train table textures).
$SC simulate crops --out data/embedder/train --split train --per-type "${PER_TYPE:-150}" --seed 101
# 2. Held-out item types (HELDOUT_ITEM_TYPES, held-out textures), other seed: validation curve only.
$SC simulate crops --out data/embedder/val --split heldout --per-type 30 --seed 202

# 3. Train from scratch (supervised contrastive + instance term), export fp16 weights + sidecar.
$SC train-embedder --train-dir data/embedder/train --val-dir data/embedder/val \
    --out-dir runs/embedder --export weights/embedder.pt \
    --steps "${STEPS:-4000}" --input-size 64 --types-per-batch 8 --crops-per-type 4 \
    --lr 0.05 --instance-weight 0.5 --temperature 0.1 --seed 0 --threads 1 --no-progress

# 4. Evaluate (renders fresh held-out crops with seed 9000, never seen in training or validation)
#    and write the figures into the sidecar.
$SC evaluate-embedder --weights weights/embedder.pt --out out/embedder_eval.json --update-sidecar
