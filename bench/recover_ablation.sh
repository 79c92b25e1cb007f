#!/usr/bin/env bash
# Ablation of recover's options past DELT on tinyimagenet-10 at 32x32 with conv3 teachers, IPC 10:
#   DELT | + residual schedule (FADRM) | + class-aware BN matching (EDC) | + two teachers | all together
# Same first teacher everywhere (it also relabels), same medium init, same recover seed; relabel_eval soft
# labels (CutMix + KD at T=20, DELT's protocol), final top-1 mean +- std over 3 seeds; synthesis seconds
# from each output's manifest. Writes results/recover_ablation.md (+ .csv).
#   bash bench/recover_ablation.sh
#   TEACHER_EPOCHS=10 RE_EPOCHS=20 bash bench/recover_ablation.sh   # shorter
# TIMING_REPEATS=N re-synthesises every row N more times, interleaved (so load from other processes
# hits all rows alike), and appends the median synthesis seconds per row to the table.
# conv3's classifier is sized for one input size, so the resolution schedule here is FADRM's
# Tiny-ImageNet form: two stages at the input size (32,32) with the residual mix (0.5) between them.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/tinyimagenet-10}
OUT=${OUT:-runs/recover_ablation}
TEACHER=${TEACHER:-$OUT/teacher_conv3_s0.pth}
TEACHER2=${TEACHER2:-$OUT/teacher_conv3_s1.pth}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-20}
TEACHER2_EPOCHS=${TEACHER2_EPOCHS:-$TEACHER_EPOCHS}
IPC=${IPC:-10}
SEEDS=${SEEDS:-"3407 4663 2897"}
ITR=${ITR:-200}
ROUND_ITR=${ROUND_ITR:-40}
RE_EPOCHS=${RE_EPOCHS:-50}
LR=${LR:-0.25}          # the CPU table's settings (input 32): lr 0.25, r_bn 0.01, jitter 4
R_BN=${R_BN:-0.01}
JITTER=${JITTER:-4}
STAGES=${STAGES:-32,32}
ALPHA=${ALPHA:-0.5}
GPU=${GPU:-cpu}
TABLE=${TABLE:-results/recover_ablation.md}
TIMING_REPEATS=${TIMING_REPEATS:-0}

source scripts/lib.sh
setup_device
for T in "$TEACHER:0:$TEACHER_EPOCHS" "$TEACHER2:1:$TEACHER2_EPOCHS"; do
    IFS=: read -r path seed epochs <<< "$T"
    [ -f "$path" ] || run python -m squeeze --dataset custom --data-path "$DATA" --arch-name conv3 --input-size 32 \
        --epochs "$epochs" --seed "$seed" --device "$DEVICE" --output "$path"
    [ -f "${path%.pth}_eval.json" ] || run python -m squeeze.evaluate --arch-path "$path" --data-path "$DATA" \
        --device "$DEVICE" --output "${path%.pth}_eval.json"
    [ -f "${path%.pth}_class_stats.pt" ] || run python -m squeeze.class_stats --arch-path "$path" \
        --data-path "$DATA/train" --device "$DEVICE" --output "${path%.pth}_class_stats.pt"
done
S1=${TEACHER%.pth}_class_stats.pt
S2=${TEACHER2%.pth}_class_stats.pt
D=$OUT/ipc$IPC
[ -f "$D/medium/manifest.json" ] || run python -m rank_select --dataset custom --data-path "$DATA/train" \
    --ranker-path "$TEACHER" --ranking-file "$OUT/ranking.csv" --output-path "$D/medium" --ipc "$IPC" \
    --selection-criteria medium --device "$DEVICE"

common=(--init real --init-data-path "$D/medium" --syn-data-path "$D" --dataset custom --input-size 32 --ipc "$IPC"
        --iteration "$ITR" --use-early-late --round-iterations "$ROUND_ITR" --easy2hard-mode cosine --milestone 1
        --batch-size 100 --lr "$LR" --r-bn "$R_BN" --jitter "$JITTER" --seed 0 --device "$DEVICE")
residual=(--stage-sizes "$STAGES" --residual-alpha "$ALPHA")
classaware=(--bn-match mix --class-bn-weight 0.5 --stats-momentum 0.8)
names=(DELT "+ residual schedule" "+ class-aware BN" "+ two teachers" "all together")
exps=(delt residual classaware teachers2 all)
opts_delt=(--arch-path "$TEACHER")
opts_residual=(--arch-path "$TEACHER" "${residual[@]}")
opts_classaware=(--arch-path "$TEACHER" --class-stats "$S1" "${classaware[@]}")
opts_teachers2=(--arch-path "$TEACHER" "$TEACHER2")
opts_all=(--arch-path "$TEACHER" "$TEACHER2" "${residual[@]}" --class-stats "$S1" "$S2" "${classaware[@]}")

rows=()
E=$D/eval_medium_soft_e$RE_EPOCHS.json  # the initial images without any optimisation
[ -f "$E" ] || run python -m relabel_eval --syn-data-path "$D/medium" --val-dir "$DATA/val" --teacher-path "$TEACHER" \
    --stud-name conv3 --dataset custom --input-size 32 --ipc "$IPC" --re-epochs "$RE_EPOCHS" --label-mode soft \
    --seeds $SEEDS --device "$DEVICE" --output "$E"
rows+=(--row method="medium init (no recover)" ipc="$IPC" soft="$E")
for i in "${!exps[@]}"; do
    e=${exps[$i]}
    declare -n opts="opts_$e"
    run python -m recover --exp-name "$e" "${common[@]}" "${opts[@]}"
    E=$D/eval_${e}_soft_e$RE_EPOCHS.json
    [ -f "$E" ] || run python -m relabel_eval --syn-data-path "$D/$e" --val-dir "$DATA/val" \
        --teacher-path "$TEACHER" --stud-name conv3 --dataset custom --input-size 32 --ipc "$IPC" \
        --re-epochs "$RE_EPOCHS" --label-mode soft --seeds $SEEDS --device "$DEVICE" --output "$E"
    rows+=(--row method="${names[$i]}" ipc="$IPC" syn="$D/$e" soft="$E")
done
for k in $(seq 1 "$TIMING_REPEATS"); do
    for e in "${exps[@]}"; do
        declare -n opts="opts_$e"
        [ -f "$D/timing/${e}_$k/manifest.json" ] || run python -m recover --exp-name "timing/${e}_$k" "${common[@]}" \
            "${opts[@]}"
    done
done

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
run python scripts/results_table.py --out "$TABLE" "${rows[@]}" \
    --title "recover options past DELT, tinyimagenet-10 at 32x32, IPC $IPC; conv3 teachers (seed 0: $TEACHER_EPOCHS epochs, \
seed 1: $TEACHER2_EPOCHS epochs; the first relabels); DELT: medium init, ITR $ITR, round $ROUND_ITR, lr $LR, r_bn $R_BN, jitter $JITTER, \
cosine crop curriculum; residual: --stage-sizes $STAGES --residual-alpha $ALPHA; class-aware: --bn-match mix \
--class-bn-weight 0.5 --stats-momentum 0.8; relabel_eval soft (CutMix + KD at T=20) $RE_EPOCHS epochs, final top-1 \
mean +- std over seeds $SEEDS. Hardware: $(nproc --all) CPU cores (${cpu:-unknown CPU}), $DEVICE, shared with other jobs. \
Produced by bench/recover_ablation.sh."
if [ "$TIMING_REPEATS" -gt 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
    python - "$D" "$TIMING_REPEATS" "${exps[@]}" >> "$TABLE" <<'PY'
import json, statistics, sys
from pathlib import Path
d, reps, exps = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def secs(p):
    return sum(r["wall_time_s"] for r in json.loads((p / "manifest.json").read_text())["per_class"].values())
base = None
print(f"\nSynthesis seconds, median of {reps + 1} runs interleaved across rows (the table's run and {reps} more):\n")
print("| row | median s | runs | x DELT |\n|---|---|---|---|")
for e in exps:
    ts = [secs(d / e)] + [secs(d / "timing" / f"{e}_{k}") for k in range(1, reps + 1)]
    m = statistics.median(ts)
    base = base or m
    print(f"| {e} | {m:.1f} | {', '.join(f'{t:.0f}' for t in ts)} | {m / base:.2f} |")
PY
    cat "$TABLE"
fi
