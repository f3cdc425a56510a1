#!/usr/bin/env bash
# Recipe of the shipped weights/detector.pt since the real-table release (see weights/README.md):
# the previous shipped detector fine-tuned 80 min (one torch thread, 1686 iterations of 2 frames)
# on simulated frames, real photos (train splits only) and domain-randomised cut-paste frames.
# Run from the repo root; every data folder is git-ignored and rebuilt by these commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=../shared/realdata
SC=.venv/bin/sorterbot-cloud
# simulated frames: train split (400), crowded (600), procedural kinds with distractors and markings (400)
$SC simulate dataset --out data/det/sim_train_a --images 400 --seed 1000 --split train
for i in 0 1 2 3 4 5; do
  $SC simulate dataset --out data/det/sim_crowded/chunk_$i --images 100 --seed $((12000 + 100 * i)) \
    --split train --items 3 8 --containers 2 4
done
$SC merge-coco --out data/det/sim_crowded/annotations.json \
  $(for i in 0 1 2 3 4 5; do echo data/det/sim_crowded/chunk_$i/annotations.json:data/det/sim_crowded/chunk_$i/images; done)
$SC simulate dataset --out data/det/proc_dr --images 400 --seed 25000 --split train --procedural 2000 \
  --items 2 8 --containers 1 4 --distractors 0 4 --table-markings 0 60 --extra-textures laminate
# real photos, train splits only (every board and card = item)
$SC convert-voc --xml-dir $R/microcontrollers/images/train --out data/real/mc_train.json
$SC convert-voc --xml-dir $R/playing_cards/images/train --out data/real/cards_train.json
# cut-paste frames: the train splits' items (GrabCut) and procedural items on procedural and real tables;
# the gripper_camera frames serve only low-passed, as table colour and light (their blocks are filtered out)
$SC synth-frames --out data/det/cutpaste_a --frames 1600 --seed 25 \
  --cutouts-from data/real/mc_train.json:$R/microcontrollers/images/train \
  --cutouts-from data/real/cards_train.json:$R/playing_cards/images/train \
  --table-frames $R/gripper_camera/Dataset
# fine-tune from the previous shipped detector (the refine head is carried over unchanged)
PYTHONUNBUFFERED=1 $SC train-detector --init-from weights/detector.pt --out data/det/s25a \
  --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images:1.0 \
  --dataset data/det/sim_crowded/annotations.json:data/det/sim_crowded:1.0 \
  --dataset data/det/proc_dr/annotations.json:data/det/proc_dr/images:0.75 \
  --dataset data/real/mc_train.json:$R/microcontrollers/images/train:0.5 \
  --dataset data/real/cards_train.json:$R/playing_cards/images/train:1.0 \
  --dataset data/det/cutpaste_a/annotations.json:data/det/cutpaste_a:1.75 \
  --iterations 100000 --time-budget-min 80 --batch-size 2 --lr 3e-4 --warmup 30 --crop-px 704 \
  --scale-jitter 0.5 1.6 --checkpoint-every 100 --log-every 10 --seed 25 --threads 1 --no-progress
# (the previous shipped detector is weights/detector_sim.pt since; data/det/s25a/detector.pt is the fine-tune)
# the refine head retrained on the fine-tuned detector's features (40 minutes, warm start from the old head)
$SC train-refine-head --weights data/det/s25a/detector.pt --out data/det/refine_s25a \
  --dataset data/det/sim_crowded/annotations.json:data/det/sim_crowded:2.0 \
  --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images:1.0 \
  --dataset data/det/proc_dr/annotations.json:data/det/proc_dr/images:1.0 \
  --dataset data/det/cutpaste_a/annotations.json:data/det/cutpaste_a:0.5 \
  --dataset data/real/mc_train.json:$R/microcontrollers/images/train:0.25 \
  --dataset data/real/cards_train.json:$R/playing_cards/images/train:0.25 \
  --iterations 100000 --time-budget-min 40 --lr 2e-4 --seed 13 --threads 1 --background-per-image 16
# weight-space ensemble of the fine-tune and its start (WiSE-FT, Wortsman et al. 2022): 0.85 / 0.15
$SC average-detectors --input data/det/refine_s25a/detector.pt:0.85 --input weights/detector_sim.pt:0.15 \
  --out data/det/soup/detector_85.pt
