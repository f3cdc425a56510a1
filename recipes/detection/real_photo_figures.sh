#!/usr/bin/env bash
# Detector AP50 on real photos and on the held-out simulated frames, default settings (each photo at
# its own resolution, the detector's own input size), for one detector file.
#   - shared/realdata/microcontrollers, test split (7 photos, 800x600)
#   - shared/realdata/playing_cards, test split (67 photos, 378x504 .. 960x540)
#   - shared/realdata/gripper_camera, all 98 labelled frames (1280x720; recipes/detection/label_gripper_camera.py)
#   - the held-out simulated frames (data/det/heldout, rendered by recipes/detection/render_detector_data.sh)
# Usage: recipes/detection/real_photo_figures.sh [WEIGHTS] [OUT]; prints one JSON line per set and writes OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIGHTS=${1:-weights/detector.pt}; OUT=${2:-out/real_photo_figures}
REAL=../shared/realdata
SC=.venv/bin/sorterbot-cloud
mkdir -p data/real "$OUT"
[ -f data/real/mc_test.json ] || $SC convert-voc --xml-dir $REAL/microcontrollers/images/test --out data/real/mc_test.json
[ -f data/real/cards_test.json ] || $SC convert-voc --xml-dir $REAL/playing_cards/images/test --out data/real/cards_test.json
if [ ! -f data/real/gripper.json ]; then
  mkdir -p data/real/gripper
  for x in recipes/detection/gripper_camera_voc/*.xml; do
    n=$(basename "$x" .xml); cp "$x" data/real/gripper/
    ln -sf "$(realpath $REAL/gripper_camera/Dataset/${n%%_*}/${n#*_}.jpg)" "data/real/gripper/$n.jpg"
  done
  $SC convert-voc --xml-dir data/real/gripper --out data/real/gripper.json
fi
declare -A SETS=(
  [microcontrollers_test]="data/real/mc_test.json:$REAL/microcontrollers/images/test"
  [playing_cards_test]="data/real/cards_test.json:$REAL/playing_cards/images/test"
  [gripper_camera]="data/real/gripper.json:data/real/gripper"
  [sim_heldout]="data/det/heldout/annotations.json:data/det/heldout"
)
for name in microcontrollers_test playing_cards_test gripper_camera sim_heldout; do
  spec=${SETS[$name]}
  if [ ! -f "${spec%%:*}" ]; then echo "skipping $name: ${spec%%:*} not found" >&2; continue; fi
  $SC evaluate-detector --weights "$WEIGHTS" --dataset "$spec" --out "$OUT/$name" ${THREADS:+--threads $THREADS} > "$OUT/$name.log" 2>&1
done
.venv/bin/python - "$OUT" "$WEIGHTS" <<'PY'
import json, pathlib, sys
out, weights = pathlib.Path(sys.argv[1]), sys.argv[2]
summary = {"weights": weights, "sets": {}}
for metrics in sorted(out.glob("*/metrics.json")):
    m = json.loads(metrics.read_text())
    op = m["operating_point"]
    row = {"ap50": m["ap50_per_class"], "images": m["images"], "recall": round(op["recall"], 4),
           "precision": round(op["precision"], 4), "confusion_matrix": op["confusion_matrix"]}
    summary["sets"][metrics.parent.name] = row
    print(json.dumps({"set": metrics.parent.name, **row}))
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
