#!/usr/bin/env bash
# Quickstart: the whole pipeline, offline, on the built-in generated `shapes` data (10 classes, 32x32),
# in about five minutes on 2 CPU cores: prepare -> squeeze (conv3 teacher) -> rank_select (medium) ->
# recover (DELT EarlyLate from real images; SRe2L from noise) + random-real baseline -> relabel_eval
# (soft-label KD, several seeds) -> diversity -> a results table and $OUT/quickstart_samples.png.
# The budget (images, teacher epochs, evaluation epochs) keeps it a real task: the teacher reaches
# 75-95% and the methods separate. Independent steps run side by side (one thread each on CPU),
# mixed precision is on where the hardware has it (CUDA, CPUs with AVX512-BF16/AMX).
# Every variable can be set in the environment; DRY_RUN=1 prints the commands only; UPDATE_IMGS=1 also
# copies the sample grid over the tracked imgs/quickstart_samples.png (the README's figure).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/quickstart}
DATA=${DATA:-$OUT/data}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-250}
VAL_PER_CLASS=${VAL_PER_CLASS:-50}
IPC=${IPC:-10}
ITR=${ITR:-200}
ROUND_ITR=${ROUND_ITR:-40}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-14}
TEACHER_BATCH=${TEACHER_BATCH:-32}
RE_EPOCHS=${RE_EPOCHS:-30}
SEEDS=${SEEDS:-"3407 4663 2897"}
GPU=${GPU:-auto}
TEACHER=$OUT/teacher.pth

source scripts/lib.sh
setup_device
# --amp where it is fast: a CPU with native bf16 (AVX512-BF16/AMX; elsewhere bf16 is emulated, so fp32),
# and CUDA (squeeze and relabel_eval use AMP on CUDA by default anyway). AMP= (empty) turns it off.
AMP=${AMP-$(python -c "from common.compute.accel import cpu_has_native_bf16 as f; print('--amp' if f() else '')" \
            2>/dev/null || true)}
if [ "${DEVICE}" = cuda ]; then AMP=--amp; fi
# Independent steps run side by side, each in its own process (one thread each on a CPU).
PIDS=(); NAMES=()
job() {  # job NAME CMD...: print and start CMD in the background, its output in $OUT/logs/NAME.log
    local name=$1; shift
    printf '+'; printf ' %q' "$@"; printf '\n'
    [ "${DRY_RUN:-0}" = 1 ] && return 0
    mkdir -p "$OUT/logs"
    OMP_NUM_THREADS=${JOB_THREADS:-1} "$@" > "$OUT/logs/$name.log" 2>&1 &
    PIDS+=($!); NAMES+=("$name")
}
wait_jobs() {  # wait for every job; print each one's last line; stop if any failed
    local i failed=0
    for i in "${!PIDS[@]}"; do
        if wait "${PIDS[$i]}"; then
            echo "${NAMES[$i]}: $(tail -n 1 "$OUT/logs/${NAMES[$i]}.log")" >&2
        else
            failed=1; echo "${NAMES[$i]} FAILED ($OUT/logs/${NAMES[$i]}.log):" >&2
            tail -n 5 "$OUT/logs/${NAMES[$i]}.log" >&2
        fi
    done
    PIDS=(); NAMES=()
    [ "${failed}" = 0 ] || exit 1
}
t0=$(date +%s)

[ -d "$DATA/train" ] || run python -m common.prepare shapes --out "$DATA" --train-per-class "$TRAIN_PER_CLASS" \
    --val-per-class "$VAL_PER_CLASS"
# shellcheck disable=SC2086
[ -f "$TEACHER" ] || run python -m squeeze --dataset shapes --data-path "$DATA" --arch-name conv3 --input-size 32 \
    --epochs "$TEACHER_EPOCHS" --batch-size "$TEACHER_BATCH" --lr 0.05 $AMP --device "$DEVICE" --output "$TEACHER"
run python -m rank_select --dataset shapes --data-path "$DATA/train" --ranker-path "$TEACHER" \
    --ranking-file "$OUT/ranking.csv" --output-path "$OUT/init_medium" --ipc "$IPC" --selection-criteria medium \
    --device "$DEVICE"
# DELT: EarlyLate rounds from the medium-ranked real images, CDA's cosine crop curriculum
# shellcheck disable=SC2086
job recover_delt python -m recover --init real --init-data-path "$OUT/init_medium" --syn-data-path "$OUT" --exp-name delt \
    --arch-name conv3 --arch-path "$TEACHER" --dataset shapes --ipc "$IPC" --iteration "$ITR" \
    --use-early-late --round-iterations "$ROUND_ITR" --batch-size 100 --lr 0.25 --r-bn 0.01 --jitter 4 \
    --easy2hard-mode cosine --milestone 1 $AMP --device "$DEVICE"
# SRe2L: from noise, every image for every iteration
# shellcheck disable=SC2086
job recover_sre2l python -m recover --init noise --train-data-path "$DATA/train" --syn-data-path "$OUT" --exp-name sre2l \
    --arch-name conv3 --arch-path "$TEACHER" --dataset shapes --ipc "$IPC" --iteration "$ITR" \
    --batch-size 100 --lr 0.25 --r-bn 0.01 --jitter 4 $AMP --device "$DEVICE"
job random_real python -m relabel_eval.baselines random --train-dir "$DATA/train" --ipc "$IPC" --seed 0 \
    --output-dir "$OUT/random_real"
wait_jobs

for m in delt sre2l random_real; do
    # shellcheck disable=SC2086
    job "eval_$m" python -m relabel_eval --syn-data-path "$OUT/$m" --val-dir "$DATA/val" --teacher-path "$TEACHER" \
        --stud-name conv3 --dataset shapes --ipc "$IPC" --re-epochs "$RE_EPOCHS" --eval-every "$RE_EPOCHS" \
        --seeds $SEEDS $AMP --device "$DEVICE" --output "$OUT/eval_$m.json"
done
job diversity python -m relabel_eval.diversity --syn-data-path "$OUT/delt" "$OUT/sre2l" "$OUT/random_real" \
    --names DELT SRe2L random-real --teacher-path "$TEACHER" --device "$DEVICE" --output "$OUT/diversity.json"
job samples python -m common.viz "$OUT/delt" "$OUT/sre2l" "$OUT/random_real" --names DELT SRe2L random-real \
    --per-class "$IPC" --max-classes 4 --out "$OUT/quickstart_samples.png"
wait_jobs
if [ "${UPDATE_IMGS:-0}" = 1 ]; then run cp "$OUT/quickstart_samples.png" imgs/quickstart_samples.png; fi
run python scripts/results_table.py --out "$OUT/table.md" \
    --title "Quickstart on shapes (conv3 teacher and student, IPC $IPC, $RE_EPOCHS epochs, seeds: $SEEDS)" \
    --row method=DELT ipc="$IPC" syn="$OUT/delt" soft="$OUT/eval_delt.json" div="$OUT/diversity.json:DELT" \
    --row method=SRe2L ipc="$IPC" syn="$OUT/sre2l" soft="$OUT/eval_sre2l.json" div="$OUT/diversity.json:SRe2L" \
    --row method=random-real ipc="$IPC" syn="$OUT/random_real" soft="$OUT/eval_random_real.json" \
          div="$OUT/diversity.json:random-real"
echo "quickstart finished in $(( $(date +%s) - t0 )) s; table: $OUT/table.md, samples: $OUT/quickstart_samples.png" >&2
