#!/usr/bin/env bash
# The embedder fine-tuned on real item crops next to simulated ones, with its real-crop
# figures measured on photos it never trained on. Run from anywhere; one torch thread.
#
#   recipes/embedding/real_crops.sh [INIT] [BUDGET_S] [NAME]
#
# INIT (default weights/embedder.pt) is fine-tuned for BUDGET_S seconds (default 900) on
#   - the ten simulated training kinds, cut from the detector's rendered frames
#     (data/det/sim_train_a, data/det/sim_crowded: recipes/detection/render_detector_data.sh),
#   - the boards of shared/realdata/microcontrollers (train split, kind = board type) and the
#     cards of shared/realdata/playing_cards (train split, kind = rank), drawn more often
#     (--type-share) so that the boards, and the ranks, meet in one batch as negatives;
#   - the procedural item types of the detector's domain-randomised frames (data/det/proc_dr),
#     which keep the embedding general for kinds it never saw.
# Three fold models (runs/NAME_f0..2) each leave out a third of the train-split photos
# (crops-from-voc --folds 3 --fold F) and are scored on the photos they left out
# (evaluate-real-grouping --folds 3 --fold F); the final model (runs/NAME/embedder.pt)
# trains on every train-split photo and is scored on the test splits, which no run sees.
set -euo pipefail
cd "$(dirname "$0")/../.."
SC=.venv/bin/sorterbot-cloud
INIT=${1:-weights/embedder.pt}; BUDGET=${2:-900}; NAME=${3:-emb_rs}
REAL=../shared/realdata
MC=$REAL/microcontrollers/images; CARDS=$REAL/playing_cards/images
E=data/embedder

[ -d $E/train_coco ] || $SC crops-from-coco --out $E/train_coco --max-per-type 600 \
    --dataset data/det/sim_train_a/annotations.json:data/det/sim_train_a/images \
    --dataset data/det/sim_crowded/annotations.json:data/det/sim_crowded
[ -d $E/proc_dr ] || $SC crops-from-coco --out $E/proc_dr --dataset data/det/proc_dr/annotations.json:data/det/proc_dr/images
[ -d $E/select_heldout_coco ] || $SC crops-from-coco --allow-heldout-types --out $E/select_heldout_coco \
    --dataset data/det/heldout/annotations.json:data/det/heldout

train() {  # train RUN MC_CROPS CARDS_CROPS (skipped when runs/RUN/embedder.pt exists)
  local run=$1 mix=$E/mix_$1
  [ -f runs/$run/embedder.pt ] && return 0
  rm -rf "$mix"; mkdir -p "$mix"
  for d in $E/train_coco/*/ $E/proc_dr/*/ "$2"/*/ "$3"/*/; do ln -sfn "$(realpath "$d")" "$mix/$(basename "$d")"; done
  $SC train-embedder --train-dir "$mix" --val-dir $E/select_heldout_coco \
      --out-dir runs/$run --export runs/$run/embedder.pt --init-from "$INIT" --no-resume \
      --focus-radii 0.3 0.5 --background-swap 0.6 --steps 100000 --time-budget-s "$BUDGET" --warmup-steps 30 \
      --input-size 64 --types-per-batch 8 --crops-per-type 4 --lr 0.01 --instance-weight 0.25 --temperature 0.1 \
      --type-share mc_=0.25 --type-share card_=0.2 --seed 30 --threads 1 --eval-every 250 --checkpoint-every 100 --no-progress
}

for f in 0 1 2; do
  $SC crops-from-voc --voc $MC/train --out $E/real/mc_f$f --prefix mc_ --folds 3 --fold $f
  $SC crops-from-voc --voc $CARDS/train --out $E/real/cards_f$f --prefix card_ --folds 3 --fold $f
  train ${NAME}_f$f $E/real/mc_f$f $E/real/cards_f$f
  $SC evaluate-real-grouping --weights runs/${NAME}_f$f/embedder.pt --threads 1 --folds 3 --fold $f \
      --voc $MC/train --voc $CARDS/train --out out/real_grouping/${NAME}_f$f.json
done

$SC crops-from-voc --voc $MC/train --out $E/real/mc_all --prefix mc_
$SC crops-from-voc --voc $CARDS/train --out $E/real/cards_all --prefix card_
train $NAME $E/real/mc_all $E/real/cards_all
# the distance between kinds, cross-validated over the fold models (writes the final sidecar)
recipes/embedding/choose_group_distance.sh runs/$NAME/embedder.pt $NAME
$SC evaluate-real-grouping --weights runs/$NAME/embedder.pt --threads 1 \
    --voc $MC/test --voc $CARDS/test --out out/real_grouping/${NAME}_test.json
# held-out simulated kinds (the reported embedder figure; real crops are scored above)
[ -d $E/heldout_eval ] || $SC simulate crops --out $E/heldout_eval --split heldout --per-type 40 --seed 9000
$SC evaluate-embedder --weights runs/$NAME/embedder.pt --heldout-dir $E/heldout_eval --real-dir /nonexistent \
    --threads 1 --out out/real_grouping/${NAME}_sim.json
