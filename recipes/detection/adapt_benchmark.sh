#!/usr/bin/env bash
# adapt-detector on 6 labelled frames of a real table, scored on frames it never saw.
#   SET=gripper: shared/realdata/gripper_camera (labelled by recipes/detection/label_gripper_camera.py):
#                6 of its 98 frames (every 16th of the sorted list from the 6th on), scored on the other 92.
#   SET=cards:   shared/realdata/playing_cards: 6 frames of the train split (every 49th from the 1st),
#                scored on the whole test split (67 photos).
# Usage: recipes/detection/adapt_benchmark.sh SET [WEIGHTS] [OUT] [extra adapt-detector options]
# Prints AP50 / recall / precision before and after and writes OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=$1; WEIGHTS=${2:-weights/detector.pt}; OUT=${3:-out/adapt_$SET}; shift $(( $# < 3 ? $# : 3 ))
REAL=../shared/realdata
rm -rf "$OUT"; mkdir -p "$OUT/train" "$OUT/test"
pick() {  # pick FIRST STEP: the listed files at FIRST, FIRST+STEP, ... (6 of them) to train, the rest to test
  local first=$1 step=$2 i=0
  while read -r xml image name; do
    if (( i >= first && (i - first) % step == 0 && (i - first) / step < 6 )); then split=train; else split=test; fi
    cp "$xml" "$OUT/$split/$name.xml"; ln -sf "$(realpath "$image")" "$OUT/$split/$name.${image##*.}"
    i=$((i + 1))
  done
}
case $SET in
  gripper)
    for xml in $(ls recipes/detection/gripper_camera_voc/*.xml | sort); do
      name=$(basename "$xml" .xml); echo "$xml $REAL/gripper_camera/Dataset/${name%%_*}/${name#*_}.jpg $name"
    done | pick 5 16 ;;
  cards)
    for xml in $(ls $REAL/playing_cards/images/train/*.xml | sort); do
      stem=${xml%.xml}; image=$(ls "$stem".* | grep -iv '\.xml$' | head -1); echo "$xml $image $(basename "$stem")"
    done | pick 0 49
    rm -f "$OUT"/test/*
    for xml in $REAL/playing_cards/images/test/*.xml; do
      stem=${xml%.xml}; image=$(ls "$stem".* | grep -iv '\.xml$' | head -1)
      cp "$xml" "$OUT/test/"; ln -sf "$(realpath "$image")" "$OUT/test/$(basename "$image")"
    done ;;
  *) echo "SET must be gripper or cards" >&2; exit 2 ;;
esac
echo "train frames: $(ls $OUT/train/*.xml | wc -l), test frames: $(ls $OUT/test/*.xml | wc -l)"
SC=.venv/bin/sorterbot-cloud
$SC convert-voc --xml-dir "$OUT/test" --out "$OUT/test.json"
$SC evaluate-detector --weights "$WEIGHTS" --dataset "$OUT/test.json:$OUT/test" --out "$OUT/eval_before" > "$OUT/eval_before.log" 2>&1
$SC adapt-detector --voc "$OUT/train" --out "$OUT/adapted" --weights "$WEIGHTS" "$@"
$SC evaluate-detector --weights "$OUT/adapted/detector.pt" --dataset "$OUT/test.json:$OUT/test" \
  --out "$OUT/eval_after" > "$OUT/eval_after.log" 2>&1
.venv/bin/python - "$OUT" "$SET" "$WEIGHTS" <<'PY'
import json, sys
out, name, weights = sys.argv[1:4]
rows = {k: json.load(open(f"{out}/eval_{k}/metrics.json")) for k in ("before", "after")}
summary = {"set": name, "weights": weights, "adapt_report": json.load(open(f"{out}/adapted/report.json"))}
for k, m in rows.items():
    summary[k] = {"ap50_item": m["ap50_per_class"]["item"], "recall": m["operating_point"]["recall"],
                  "precision": m["operating_point"]["precision"], "images": m["images"]}
print(json.dumps(summary, indent=1))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
