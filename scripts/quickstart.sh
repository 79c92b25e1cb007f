#!/usr/bin/env bash
# Quickstart: the whole pipeline, offline, on the built-in generated `shapes` data (10 classes, 32x32),
# in under 10 minutes on 2 CPU cores: prepare -> squeeze (conv3 teacher) -> rank_select (medium) ->
# recover (DELT EarlyLate from real images; SRe2L from noise) + random-real baseline -> relabel_eval
# (soft-label KD, several seeds) -> diversity -> a results table and $OUT/quickstart_samples.png.
# Every variable can be set in the environment; DRY_RUN=1 prints the commands only; UPDATE_IMGS=1 also
# copies the sample grid over the tracked imgs/quickstart_samples.png (the README's figure).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/quickstart}
DATA=${DATA:-$OUT/data}
IPC=${IPC:-10}
ITR=${ITR:-200}
ROUND_ITR=${ROUND_ITR:-40}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-15}
RE_EPOCHS=${RE_EPOCHS:-40}
SEEDS=${SEEDS:-"3407 4663 2897"}
GPU=${GPU:-auto}
TEACHER=$OUT/teacher.pth

source scripts/lib.sh
setup_device
t0=$(date +%s)

[ -d "$DATA/train" ] || run python -m common.prepare shapes --out "$DATA" --train-per-class 500 --val-per-class 100
[ -f "$TEACHER" ] || run python -m squeeze --dataset shapes --data-path "$DATA" --arch-name conv3 --input-size 32 \
    --epochs "$TEACHER_EPOCHS" --batch-size 64 --lr 0.05 --device "$DEVICE" --output "$TEACHER"
run python -m rank_select --dataset shapes --data-path "$DATA/train" --ranker-path "$TEACHER" \
    --ranking-file "$OUT/ranking.csv" --output-path "$OUT/init_medium" --ipc "$IPC" --selection-criteria medium \
    --device "$DEVICE"
# DELT: EarlyLate rounds from the medium-ranked real images, CDA's cosine crop curriculum
run python -m recover --init real --init-data-path "$OUT/init_medium" --syn-data-path "$OUT" --exp-name delt \
    --arch-name conv3 --arch-path "$TEACHER" --dataset shapes --ipc "$IPC" --iteration "$ITR" \
    --use-early-late --round-iterations "$ROUND_ITR" --batch-size 100 --lr 0.25 --r-bn 0.01 --jitter 4 \
    --easy2hard-mode cosine --milestone 1 --device "$DEVICE"
# SRe2L: from noise, every image for every iteration
run python -m recover --init noise --train-data-path "$DATA/train" --syn-data-path "$OUT" --exp-name sre2l \
    --arch-name conv3 --arch-path "$TEACHER" --dataset shapes --ipc "$IPC" --iteration "$ITR" \
    --batch-size 100 --lr 0.25 --r-bn 0.01 --jitter 4 --device "$DEVICE"
run python -m relabel_eval.baselines random --train-dir "$DATA/train" --ipc "$IPC" --seed 0 \
    --output-dir "$OUT/random_real"

for m in delt sre2l random_real; do
    # shellcheck disable=SC2086
    run python -m relabel_eval --syn-data-path "$OUT/$m" --val-dir "$DATA/val" --teacher-path "$TEACHER" \
        --stud-name conv3 --dataset shapes --ipc "$IPC" --re-epochs "$RE_EPOCHS" --seeds $SEEDS \
        --device "$DEVICE" --output "$OUT/eval_$m.json"
done
run python -m relabel_eval.diversity --syn-data-path "$OUT/delt" "$OUT/sre2l" "$OUT/random_real" \
    --names DELT SRe2L random-real --teacher-path "$TEACHER" --device "$DEVICE" --output "$OUT/diversity.json"
run python -m common.viz "$OUT/delt" "$OUT/sre2l" "$OUT/random_real" --names DELT SRe2L random-real \
    --per-class "$IPC" --max-classes 4 --out "$OUT/quickstart_samples.png"
if [ "${UPDATE_IMGS:-0}" = 1 ]; then run cp "$OUT/quickstart_samples.png" imgs/quickstart_samples.png; fi
run python scripts/results_table.py --out "$OUT/table.md" \
    --title "Quickstart on shapes (conv3 teacher and student, IPC $IPC, $RE_EPOCHS epochs, seeds: $SEEDS)" \
    --row method=DELT ipc="$IPC" syn="$OUT/delt" soft="$OUT/eval_delt.json" div="$OUT/diversity.json:DELT" \
    --row method=SRe2L ipc="$IPC" syn="$OUT/sre2l" soft="$OUT/eval_sre2l.json" div="$OUT/diversity.json:SRe2L" \
    --row method=random-real ipc="$IPC" syn="$OUT/random_real" soft="$OUT/eval_random_real.json" \
          div="$OUT/diversity.json:random-real"
echo "quickstart finished in $(( $(date +%s) - t0 )) s; table: $OUT/table.md, samples: $OUT/quickstart_samples.png" >&2
