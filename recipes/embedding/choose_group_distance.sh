#!/usr/bin/env bash
# The embedder's group_cosine_distance (the distance between kinds when no shapes are appended),
# chosen by cross-validation over the fold models of recipes/embedding/real_crops.sh:
# for each distance, the mean over the three folds of
#   - the share of simulated sessions sorted correctly on held-out simulated kinds
#     (calibrate-grouping on data/embedder/select_heldout_coco), and
#   - the per-photo ARI (the service's own number of groups) on the left-out photos of the
#     microcontroller and playing-card train splits (evaluate-real-grouping --folds 3 --fold F),
# averaged with equal weight; ties go to the larger distance. Writes it into WEIGHTS' sidecar.
# Fold results already in out/real_grouping/ are reused (delete them after retraining a fold).
#   recipes/embedding/choose_group_distance.sh WEIGHTS [NAME]
set -euo pipefail
cd "$(dirname "$0")/../.."
SC=.venv/bin/sorterbot-cloud
WEIGHTS=$1; NAME=${2:-emb_rs}
REAL=../shared/realdata
GRID=0.1,0.125,0.15,0.175,0.2,0.225,0.25,0.3
D=()
for d in ${GRID//,/ }; do D+=(--group-distance "$d"); done
for f in 0 1 2; do
  [ -f out/real_grouping/${NAME}_f${f}_calib.json ] || $SC calibrate-grouping --weights runs/${NAME}_f$f/embedder.pt --crops-dir data/embedder/select_heldout_coco \
      --distances $GRID --out out/real_grouping/${NAME}_f${f}_calib.json
  [ -f out/real_grouping/${NAME}_f${f}_sweep.json ] || $SC evaluate-real-grouping --weights runs/${NAME}_f$f/embedder.pt --threads 1 --folds 3 --fold $f "${D[@]}" \
      --voc $REAL/microcontrollers/images/train --voc $REAL/playing_cards/images/train \
      --out out/real_grouping/${NAME}_f${f}_sweep.json
done
.venv/bin/python - "$WEIGHTS" "$NAME" "$GRID" <<'PY'
import json, sys
from pathlib import Path
weights, name, grid = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3].split(",")]
table = {}
for d in grid:
    parts = []
    for f in range(3):
        calib = json.loads(Path(f"out/real_grouping/{name}_f{f}_calib.json").read_text())
        sweep = json.loads(Path(f"out/real_grouping/{name}_f{f}_sweep.json").read_text())
        real = [entry["per_photo_at_distance"][f"{d:g}"]["ari_own_k_mean"] for entry in sweep["sets"].values()]
        parts.append((calib["mean"][f"d={d:g}"] + sum(real) / len(real)) / 2)
    table[f"{d:g}"] = sum(parts) / len(parts)
    print(f"distance {d:g}: cross-validated score {table[f'{d:g}']:.3f}")
best = max(grid, key=lambda d: (round(table[f"{d:g}"], 6), d))
sidecar = Path(weights).with_suffix(".json")
meta = json.loads(sidecar.read_text())
meta["group_cosine_distance"] = best
meta["group_calibration"] = {"rule": "recipes/embedding/choose_group_distance.sh", "scores": table,
                             "folds": f"runs/{name}_f0..2"}
sidecar.write_text(json.dumps(meta, indent=2) + "\n")
print(f"best distance {best:g}; wrote {sidecar}")
PY
