#!/usr/bin/env bash
# adapt-detector on 6 labelled frames of a real table the shipped detector was not trained on
# (shared/realdata/gripper_camera, labelled by locator/recipes/label_gripper_camera.py), scored
# on the set's other 92 frames. The 6 frames are every 16th of the sorted list from the 6th on
# (single blocks and crowded frames alike).
# Usage: locator/recipes/adapt_gripper_camera.sh [WEIGHTS] [OUT] [extra adapt-detector options]
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIGHTS=${1:-weights/detector.pt}; OUT=${2:-out/adapt_gripper}; shift $(( $# < 2 ? $# : 2 ))
FRAMES=../shared/realdata/gripper_camera/Dataset
LABELS=locator/recipes/gripper_camera_voc
rm -rf "$OUT"; mkdir -p "$OUT/train" "$OUT/test"
i=0
for xml in $(ls $LABELS/*.xml | sort); do
  name=$(basename "$xml" .xml); dir=${name%%_*}; stem=${name#*_}
  if (( i >= 5 && (i - 5) % 16 == 0 && (i - 5) / 16 < 6 )); then split=train; else split=test; fi
  cp "$xml" "$OUT/$split/"; ln -sf "$(realpath $FRAMES/$dir/$stem.jpg)" "$OUT/$split/$name.jpg"
  i=$((i + 1))
done
echo "train frames: $(ls $OUT/train/*.xml | wc -l), test frames: $(ls $OUT/test/*.xml | wc -l)"
.venv/bin/sorterbot-cloud convert-voc --xml-dir "$OUT/test" --out "$OUT/test.json"
.venv/bin/sorterbot-cloud evaluate-detector --weights "$WEIGHTS" --dataset "$OUT/test.json:$OUT/test" \
  --out "$OUT/eval_before" > "$OUT/eval_before.log"
.venv/bin/sorterbot-cloud adapt-detector --voc "$OUT/train" --out "$OUT/adapted" --weights "$WEIGHTS" "$@"
.venv/bin/sorterbot-cloud evaluate-detector --weights "$OUT/adapted/detector.pt" --dataset "$OUT/test.json:$OUT/test" \
  --out "$OUT/eval_after" > "$OUT/eval_after.log"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = {k: json.load(open(f"{out}/eval_{k}/metrics.json")) for k in ("before", "after")}
summary = {k: {"ap50_item": m["ap50_per_class"]["item"], "recall": m["operating_point"]["recall"],
               "precision": m["operating_point"]["precision"], "images": m["images"]} for k, m in rows.items()}
print(json.dumps({"set": "gripper_camera (6 frames adapted, others scored)", **summary}, indent=1))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
