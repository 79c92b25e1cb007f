#!/usr/bin/env bash
# Quickstart, offline, on the built-in generated `shapes` dataset (10 classes, 32x32).
# Stages: prepare -> squeeze (teacher). Later stages are added as they land.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/quickstart}
DATA=${DATA:-$OUT/data/shapes}
EPOCHS=${EPOCHS:-15}
DEVICE=${DEVICE:-auto}
run() { echo "+ $*" >&2; [ "${DRY_RUN:-0}" = 1 ] || "$@"; }

mkdir -p "$OUT"
[ -d "$DATA/train" ] || run python -m common.prepare shapes --out "$DATA"
[ -f "$OUT/teacher.pth" ] || run python -m squeeze --dataset shapes --data-path "$DATA" --arch-name conv3 \
    --input-size 32 --epochs "$EPOCHS" --device "$DEVICE" --output "$OUT/teacher.pth"
run python -m squeeze.evaluate --arch-path "$OUT/teacher.pth" --data-path "$DATA" --device "$DEVICE"
