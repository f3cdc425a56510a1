#!/usr/bin/env bash
# Recipe of the shipped weights/embedder.pt (+ weights/embedder.json), as it was run on
# 2026-11-22 on a shared 2-core CPU, ONE torch thread. Run from the repository root.
# Data lands in data/embedder/ (git-ignored); runs in runs/ (git-ignored).
set -euo pipefail
SC=.venv/bin/sorterbot-cloud

# 1. Simulator crops of the TRAINING item types only (TRAIN_ITEM_TYPES, train table textures).
#    As run, this export was stopped after 620 crops (51..77 per type, 24 minutes) to leave
#    time for training; the counts per type are in the sidecar. A full run writes a superset.
$SC simulate crops --out data/embedder/train --split train --per-type 150 --seed 101
# 2. Held-out item types (HELDOUT_ITEM_TYPES, held-out textures), seed 202: validation curve
#    only (logged every 250 steps; the last model is kept, no selection on it).
$SC simulate crops --out data/embedder/val --split heldout --per-type 30 --seed 202
# 3. Evaluation crops: held-out types, seed 9000 (what evaluate-embedder renders by default).
$SC simulate crops --out data/embedder/heldout_eval --split heldout --per-type 40 --seed 9000

# 4. Stage 1, from scratch: whole crop, 43 classes (10 types + recoloured pseudo-classes).
#    As run: time budget 3886 s, stopped by hand at step 1100 (its checkpoint) after 1200 s,
#    when the held-out curve showed the table background dominating (ARI 0.74 at step 1000).
$SC train-embedder --train-dir data/embedder/train --val-dir data/embedder/val \
    --out-dir runs/embedder_stage1 --export runs/embedder_stage1/embedder.pt \
    --steps 100000 --time-budget-s 3886 --warmup-steps 150 --input-size 64 \
    --types-per-batch 8 --crops-per-type 4 --lr 0.05 --instance-weight 0.25 --temperature 0.1 \
    --no-focus --seed 0 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress

# 5. Stage 2, fine-tuned from stage 1's step-1100 checkpoint with centre focus weighting
#    (radii 0.3..0.5 of the side). As run: budget 2645 s, stopped by hand at step 700 (its
#    checkpoint, 611 s) when K-Means still split held-out items by table (white vs sand).
$SC train-embedder --train-dir data/embedder/train --val-dir data/embedder/val \
    --out-dir runs/embedder_stage2 --export runs/embedder_stage2/embedder.pt --init-from runs/embedder_stage1/last.pt \
    --focus-radii 0.3 0.5 --steps 100000 --time-budget-s 2645 --warmup-steps 50 --input-size 64 \
    --types-per-batch 8 --crops-per-type 4 --lr 0.03 --instance-weight 0.25 --temperature 0.1 \
    --seed 1 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress

# 6. Stage 3 (the first shipped weights), fine-tuned from stage 2's step-700 checkpoint, adding background swap:
#    with probability 0.6 a crop's item (GrabCut mask) is pasted onto another crop's table
#    or a plain colour. Ran its whole time budget; exports fp16 + sidecar.
$SC train-embedder --train-dir data/embedder/train --val-dir data/embedder/val \
    --out-dir runs/embedder --export weights/embedder.pt --init-from runs/embedder_stage2/last.pt \
    --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s 2070 --warmup-steps 50 \
    --input-size 64 --types-per-batch 8 --crops-per-type 4 --lr 0.03 --instance-weight 0.25 --temperature 0.1 \
    --seed 2 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress

# 7. Evaluate: held-out types (seed 9000 crops, never used in training or validation), real
#    microcontroller crops, speed; writes the figures into the sidecar.
$SC evaluate-embedder --weights weights/embedder.pt --heldout-dir data/embedder/heldout_eval \
    --out out/embedder_eval.json --update-sidecar

# --- Round 2 ---------------------------------------------------------------------------
# 8. More crops for free: the detector's rendered COCO frames label every box with its item
#    type, so `crops-from-coco` cuts them (visible >= 95 %, 10 % margin, the service's cut).
#    Frames: data/det/sim_train_a, _c, _d (2400 frames at 1024x768, weights/README.md detector
#    recipe) -> 8929 crops of the 10 training types (vs 620 rendered crops before).
$SC crops-from-coco --out data/embedder/train_coco \
    --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images \
    --dataset data/det/sim_train_c/annotations.json:data/det/sim_train_c \
    --dataset data/det/sim_train_d/annotations.json:data/det/sim_train_d
# 9. Stage 4: stage 3 (runs/embedder/last.pt) fine-tuned on those crops, 3600 s budget.
$SC train-embedder --train-dir data/embedder/train_coco --val-dir data/embedder/val \
    --out-dir runs/embedder_stage4 --export runs/embedder_stage4/embedder.pt --init-from runs/embedder/last.pt \
    --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s 3600 --warmup-steps 50 \
    --input-size 64 --types-per-batch 8 --crops-per-type 4 --lr 0.03 --instance-weight 0.25 --temperature 0.1 \
    --seed 4 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress
# 10. A third held-out set for choosing between weights (the seed-9000 evaluation crops stay
#     the reported figure): held-out types cut from the detector's held-out frames.
$SC crops-from-coco --allow-heldout-types --out data/embedder/select_heldout_coco \
    --dataset data/det/heldout/annotations.json:data/det/heldout

# --- Round 3 ---------------------------------------------------------------------------
# 11. 200 procedural training types (sorterbot_cloud.sim.catalog.procedural_item_type), 24 crops each.
$SC simulate crops --out data/embedder/proc --split none --procedural 200 --per-type 24 --seed 303
# 12. One training folder of 210 types: links to the crops-from-coco types and the procedural ones.
mkdir -p data/embedder/train_proc_mix
for d in data/embedder/train_coco/*/ data/embedder/proc/*/; do
  ln -sfn "../$(basename "$(dirname "$d")")/$(basename "$d")" "data/embedder/train_proc_mix/$(basename "$d")"
done
# 13. Stage 6 (shipped): stage 4 fine-tuned on the mix, 2400 s budget, then exported to weights/.
$SC train-embedder --train-dir data/embedder/train_proc_mix --val-dir data/embedder/val \
    --out-dir runs/embedder_stage6 --export runs/embedder_stage6/embedder.pt --init-from runs/embedder_stage4/last.pt \
    --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s 2400 --warmup-steps 50 \
    --input-size 64 --types-per-batch 8 --crops-per-type 4 --lr 0.03 --instance-weight 0.25 --temperature 0.1 \
    --seed 6 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress
# 14. Chosen on the two choosing sets (val, select_heldout_coco), then shipped and measured:
for s in val select_heldout_coco; do
  $SC evaluate-embedder --weights runs/embedder_stage6/embedder.pt --heldout-dir data/embedder/$s \
      --threads 1 --real-dir /nonexistent --out out/embedder_select_$s.json
done
cp runs/embedder_stage6/embedder.pt runs/embedder_stage6/embedder.json weights/
$SC evaluate-embedder --weights weights/embedder.pt --heldout-dir data/embedder/heldout_eval \
    --out out/embedder_eval.json --update-sidecar
# 15. The distance between kinds for these weights (planner.choose_n_clusters), on the choosing sets:
$SC calibrate-grouping --weights weights/embedder.pt \
    --crops-dir data/embedder/val --crops-dir data/embedder/select_heldout_coco --update-sidecar

# --- Round 4 -------------------------------------------------------------------------
# 16. 1000 procedural types (two renders of 500 in parallel, one per core), 16 crops each.
$SC simulate crops --out data/embedder/proc_a --split none --procedural 500 --per-type 16 --seed 505 &
$SC simulate crops --out data/embedder/proc_b --split none --procedural 500 --procedural-start 500 --per-type 16 --seed 606 &
wait
# 17. Catalogue training types cut from the detector's rendered frames that are still on disk
#     (sim_train_a and the two crowded sets; at most 1200 per type): 6411 crops.
$SC crops-from-coco --out data/embedder/train_coco --max-per-type 1200 \
    --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images \
    --dataset data/det/sim_crowded/annotations.json:data/det/sim_crowded \
    --dataset data/det/sim_crowded2/annotations.json:data/det/sim_crowded2
# 18. One folder of 1010 types.
mkdir -p data/embedder/train_mix1010
for d in data/embedder/train_coco/*/ data/embedder/proc_a/*/ data/embedder/proc_b/*/; do
  ln -sfn "../$(basename "$(dirname "$d")")/$(basename "$d")" "data/embedder/train_mix1010/$(basename "$d")"
done
# 19. Stage 7: the shipped stage-6 weights fine-tuned on the 1010 types, 12 types per batch
#     (more negatives per step), 3600 s budget. NOT shipped: equal to the shipped weights on the
#     160 tuning sessions; weights/embedder.pt is still stage 6.
$SC train-embedder --train-dir data/embedder/train_mix1010 --val-dir data/embedder/val \
    --out-dir runs/embedder_stage7 --export runs/embedder_stage7/embedder.pt --init-from weights/embedder.pt \
    --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s 3600 --warmup-steps 50 \
    --input-size 64 --types-per-batch 12 --crops-per-type 4 --lr 0.03 --instance-weight 0.25 --temperature 0.1 \
    --seed 7 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress

# --- Round 5 -------------------------------------------------------------------------
# 20. Crops rendered anew (data/ was gone): the ten catalogue training types, 150 procedural
#     types, and 200 MARKED procedural types (procm_NNNN: every instance carries its own random
#     dots or strokes, sorterbot_cloud.sim.catalog._instance_marks); three renders side by side.
$SC simulate crops --out data/embedder/s24_train --split train --per-type 250 --seed 2401 &
$SC simulate crops --out data/embedder/s24_proc --split none --procedural 150 --per-type 20 --seed 2402 &
$SC simulate crops --out data/embedder/s24_procm --split none --procedural-marked 200 --per-type 20 --seed 2403 &
wait
$SC simulate crops --out data/embedder/val --split heldout --per-type 30 --seed 202
$SC simulate crops --out data/embedder/heldout_eval --split heldout --per-type 40 --seed 9000
# 21. Two fine-tunes of the shipped file side by side, 2100 s each, lr 0.01, seed 24: run A on
#     catalogue + procedural crops (160 types), run B on catalogue + procedural + marked (360 types).
s24_run() {  # NAME INIT LR BUDGET FOLDER...
  local name=$1 init=$2 lr=$3 budget=$4; shift 4
  mkdir -p data/embedder/${name}_mix
  for src in "$@"; do
    for d in data/embedder/$src/*/; do ln -sfn "../$src/$(basename "$d")" "data/embedder/${name}_mix/$(basename "$d")"; done
  done
  $SC train-embedder --train-dir data/embedder/${name}_mix --val-dir data/embedder/val \
      --out-dir runs/$name --export runs/$name/embedder.pt --init-from $init \
      --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s $budget --warmup-steps 50 \
      --input-size 64 --types-per-batch 8 --crops-per-type 4 --lr $lr --instance-weight 0.25 --temperature 0.1 \
      --seed 24 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress
}
s24_run s24a weights/embedder.pt 0.01 2100 s24_train s24_proc &
s24_run s24b weights/embedder.pt 0.01 2100 s24_train s24_proc s24_procm &
wait
# 22. Fewer procedural types (the first 50 and 100 of each family, as symlink folders), so the
#     catalogue kinds weigh more: D1 continues B (lr 0.005), D2 starts from the shipped file; 1500 s.
mkdir -p data/embedder/s24_proc50 data/embedder/s24_procm100
for i in $(seq -f "%04g" 0 49); do ln -sfn ../s24_proc/proc_$i data/embedder/s24_proc50/proc_$i; done
for i in $(seq -f "%04g" 0 99); do ln -sfn ../s24_procm/procm_$i data/embedder/s24_procm100/procm_$i; done
s24_run s24d1 runs/s24b/last.pt 0.005 1500 s24_train s24_proc50 s24_procm100 &
s24_run s24d2 weights/embedder.pt 0.01 1500 s24_train s24_proc50 s24_procm100 &
wait
# 23. Each candidate: held-out crop ARI, then the 80 + 80 tuning sessions' stored detections
#     re-embedded (copies of the tuning sessions' databases) and the trigger replayed at four grouping
#     distances:
#     evaluate-embedder --weights runs/NAME/embedder.pt --heldout-dir data/embedder/heldout_eval --threads 1
#     DATA_DIR=COPY sorterbot-cloud db reembed --config CFG --arm-id EVAL   (CFG: embedder_weights: runs/NAME/embedder.pt)
#     SORTERBOT_CONFIG=CFG_D evaluate-sessions --n 80 --seed-start 3000 --threads 1 --data-dir COPY   (and --kinds known --seed-start 9000)
