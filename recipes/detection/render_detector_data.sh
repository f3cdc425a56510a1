#!/usr/bin/env bash
# Render the simulated detection data used by recipes/detection/train_default_detector.sh.
# Each chunk is a separate `simulate dataset` call; a chunk whose scene placement fails
# (sorterbot_cloud.errors.BadRequest "could not place ... without overlap") is retried
# with the next seed. Chunks are merged with `sorterbot-cloud detector merge-coco`.
# Usage: recipes/detection/render_detector_data.sh SPLIT OUT_DIR CHUNKS IMAGES_PER_CHUNK FIRST_SEED
set -u
split=$1; out=$2; chunks=$3; per=$4; seed=$5
cd "$(dirname "$0")/../.."
mkdir -p "$out"
specs=()
for ((i = 0; i < chunks; i++)); do
  for attempt in 0 1 2 3; do
    s=$((seed + 100 * i + attempt))
    dir="$out/chunk_$i"
    rm -rf "$dir"
    if .venv/bin/sorterbot-cloud simulate dataset --out "$dir" --images "$per" --seed "$s" --split "$split" \
        --width 1024 --height 768 > "$out/render_$i.log" 2>&1; then
      echo "chunk $i: seed $s ok"; specs+=("$dir/annotations.json:$dir/images"); break
    fi
    echo "chunk $i: seed $s failed, retrying"
  done
done
.venv/bin/sorterbot-cloud detector merge-coco --out "$out/annotations.json" "${specs[@]}"
