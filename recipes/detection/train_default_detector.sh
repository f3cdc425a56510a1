#!/usr/bin/env bash
# Recipe of weights/detector_sim.pt, the detector the shipped weights/detector.pt was fine-tuned from
# (weights/README.md; stage by stage: docs/model_history.rst). Run from the repo root.
# Data: simulated frames (train split item types and table textures) rendered by
#   .venv/bin/sorterbot-cloud simulate dataset --out data/det/sim_train_a --images 400 --seed 1000 --split train
# (1024x768), plus the real microcontroller photos (train split, all boards = item), converted with
#   .venv/bin/sorterbot-cloud detector convert-voc --xml-dir ../shared/realdata/microcontrollers/images/train --out data/real/train.json
# Real photos are scaled by 0.25 so that the boards (median 265 px wide at 800x600) get the size in
# pixels of items at the detector's 512 px input (about 30..90 px).
# Stage 1 (until 2600 s of the 76 min budget, iteration 3700): 384 px crops at the model's scale.
# Stage 2 (rest of the budget): whole frames, so that the box head also sees frame-sized
# proposals as negatives (with 384 px crops only, it had never seen a region larger than
# the crop and called whole table regions "container" at inference):
#   BUDGET_MIN=76 recipes/detection/train_default_detector.sh --resume --crop-px 704
# (the run was stopped after the iteration-3700 checkpoint and resumed with that command).
# Stage 3 (data/det/run2): the stage-2 checkpoint continued on twice the simulated
# frames (sim_train_a plus data/det/sim_train_c, rendered with
#   recipes/detection/render_detector_data.sh train data/det/sim_train_c 4 100 5000),
# whole frames, a warm restart at half the learning rate, total budget 180 min (the
# cosine schedule resumes at progress 76/160, then was extended to 180 at iteration 6400):
#   mkdir -p data/det/run2 && cp data/det/run1/checkpoint_last.pt data/det/run2/
#   OUT=data/det/run2 BUDGET_MIN=180 recipes/detection/train_default_detector.sh --resume --crop-px 704 \
#     --lr 5e-4 --warmup 0 --seed 1 \
#     --dataset data/det/sim_train_c/annotations.json:data/det/sim_train_c:1.0
# Stages 4 and 5 (data/det/run3 and run4): warm restarts (--init-from) on
# sim_train_a, _c and _d (1600 frames rendered by render_detector_data.sh, seed 9000); the exact
# commands are in docs/model_history.rst and in each detector.json "recipe".
# One torch thread: on this shared 2-core machine two OpenMP threads measured ~5x less work per CPU-second
# (spinning while the sibling thread is descheduled).
set -eu
cd "$(dirname "$0")/../.."
REAL=../shared/realdata/microcontrollers/images
OUT=${OUT:-data/det/run1}
export PYTHONUNBUFFERED=1
.venv/bin/sorterbot-cloud train-detector \
  --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images:1.0 \
  --dataset data/real/train.json:$REAL/train:0.25:0.25 \
  --out "$OUT" --iterations 100000 --time-budget-min "${BUDGET_MIN:-80}" \
  --batch-size 2 --lr 1e-3 --warmup 60 --crop-px 384 --min-size-px 512 --max-size-px 864 --checkpoint-every 100 --log-every 10 \
  --seed 0 --threads 1 "$@"
