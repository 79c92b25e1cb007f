#!/usr/bin/env bash
# The CPU results table: every method on tinyimagenet-10 at input size 32 with a conv3 teacher,
# IPC 10 and 50, several seeds, soft- and hard-label top-1, diversity and synthesis time.
# Writes results/cpu_table.md (+ .csv). All settings are variables; the README quotes the run.
#   bash bench/cpu_table.sh                      # defaults below
#   ITR=300 RE_EPOCHS=50 bash bench/cpu_table.sh # a shorter run
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/tinyimagenet-10}
OUT=${OUT:-runs/cpu_table}
TEACHER=${TEACHER:-$OUT/teacher_conv3.pth}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-30}
IPCS=${IPCS:-"10 50"}
SEEDS=${SEEDS:-"3407 4663 2897"}
ITR=${ITR:-500}
ROUND_ITR=${ROUND_ITR:-100}
RE_EPOCHS=${RE_EPOCHS:-"100"}  # one number, or per IPC: "10:60 50:30"
LR=${LR:-0.25}          # CIFAR-scale recovery settings (input 32): lr 0.25, r_bn 0.01, jitter 4
R_BN=${R_BN:-0.01}
JITTER=${JITTER:-4}
GPU=${GPU:-cpu}
TABLE=${TABLE:-results/cpu_table.md}

source scripts/lib.sh
setup_device
epochs_for() {  # the relabel_eval epochs for IPC $1 from RE_EPOCHS
    local pair
    for pair in ${RE_EPOCHS}; do
        case "$pair" in
            *:*) [ "${pair%%:*}" = "$1" ] && { echo "${pair#*:}"; return; } ;;
            *) echo "$pair"; return ;;
        esac
    done
    echo "error: RE_EPOCHS='${RE_EPOCHS}' names no epochs for IPC $1" >&2; exit 2
}
common=(--arch-name conv3 --arch-path "$TEACHER" --dataset custom --input-size 32 --batch-size 100 --lr "$LR"
        --r-bn "$R_BN" --jitter "$JITTER" --device "$DEVICE")
[ -f "$TEACHER" ] || run python -m squeeze --dataset custom --data-path "$DATA" --arch-name conv3 --input-size 32 \
    --epochs "$TEACHER_EPOCHS" --device "$DEVICE" --output "$TEACHER"
run python -m squeeze.evaluate --arch-path "$TEACHER" --data-path "$DATA" --device "$DEVICE" \
    --output "$OUT/teacher_eval.json"

rows=()
for IPC in $IPCS; do
    D=$OUT/ipc$IPC
    E=$(epochs_for "$IPC")
    [ -f "$D/medium/manifest.json" ] || run python -m rank_select --dataset custom --data-path "$DATA/train" --ranker-path "$TEACHER" \
        --ranking-file "$OUT/ranking.csv" --output-path "$D/medium" --ipc "$IPC" --selection-criteria medium \
        --device "$DEVICE"
    [ -f "$D/random_real/manifest.json" ] || run python -m relabel_eval.baselines random --train-dir "$DATA/train" --ipc "$IPC" --seed 0 \
        --output-dir "$D/random_real"
    [ -f "$D/rded/manifest.json" ] || run python -m rank_select.patches --dataset custom --data-path "$DATA/train" --observer-path "$TEACHER" \
        --output-path "$D/rded" --ipc "$IPC" --mipc 300 --num-crop 5 --factor 1 --input-size 32 --seed 0 \
        --device "$DEVICE"
    run python -m recover --init noise --train-data-path "$DATA/train" \
        --syn-data-path "$D" --exp-name sre2l --ipc "$IPC" --iteration "$ITR" "${common[@]}"
    run python -m recover --init noise --train-data-path "$DATA/train" \
        --syn-data-path "$D" --exp-name cda --ipc "$IPC" --iteration "$ITR" --easy2hard-mode cosine --milestone 1 \
        "${common[@]}"
    run python -m recover --init real --init-data-path "$D/medium" \
        --syn-data-path "$D" --exp-name delt --ipc "$IPC" --iteration "$ITR" --use-early-late \
        --round-iterations "$ROUND_ITR" --easy2hard-mode cosine --milestone 1 "${common[@]}"
    methods=(random_real medium rded sre2l cda delt)
    names=(random-real medium-init RDED SRe2L CDA DELT)
    for i in "${!methods[@]}"; do
        m=${methods[$i]}
        for mode in soft hard; do
            [ -f "$D/eval_${m}_${mode}.json" ] || run python -m relabel_eval --syn-data-path "$D/$m" \
                --val-dir "$DATA/val" --teacher-path "$TEACHER" --stud-name conv3 --dataset custom --input-size 32 \
                --ipc "$IPC" --re-epochs "$E" --label-mode "$mode" --seeds $SEEDS --device "$DEVICE" \
                --output "$D/eval_${m}_${mode}.json"
        done
        rows+=(--row method="${names[$i]}" ipc="$IPC" syn="$D/$m" soft="$D/eval_${m}_soft.json"
               hard="$D/eval_${m}_hard.json" div="$D/diversity.json:${names[$i]}")
    done
    run python -m relabel_eval.diversity --syn-data-path "${methods[@]/#/$D/}" --names "${names[@]}" \
        --teacher-path "$TEACHER" --device "$DEVICE" --output "$D/diversity.json"
    run python -m common.viz "${methods[@]/#/$D/}" --names "${names[@]}" --per-class 10 --max-classes 3 \
        --out "imgs/cpu_table_ipc${IPC}_samples.png"
done

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
run python scripts/results_table.py --out "$TABLE" "${rows[@]}" \
    --title "tinyimagenet-10 (10 classes, 500 train / 50 val per class) at 32x32; conv3 teacher and student; \
recovery ITR $ITR, DELT round $ROUND_ITR, lr $LR, r_bn $R_BN, jitter $JITTER; relabel_eval epochs $RE_EPOCHS \
(soft = CutMix + KD from the teacher at T=20; hard = CutMix + CE), final top-1 mean +- std over seeds $SEEDS. \
Hardware: $(nproc --all) CPU cores (${cpu:-unknown CPU}), $DEVICE. Produced by bench/cpu_table.sh \
(recover resumes and skips finished classes; finished evaluations are kept)."
