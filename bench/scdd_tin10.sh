#!/usr/bin/env bash
# SC-DD against SRe2L on tinyimagenet-10 at 32 px, on CPU: a MoCo v2 conv3 (squeeze.ssl) + frozen linear
# probe as the recovery teacher vs the supervised conv3 teacher; BN-statistics spread of both
# (squeeze.bn_stats -> imgs/bn_stats_tin10_conv3.png); recovery from noise at IPC 10 with the same
# settings; evaluation of both (and of a random real subset) with soft labels from the SUPERVISED teacher.
# Every step is skipped when its output exists; DRY_RUN=1 prints the commands only.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/tinyimagenet-10}
OUT=${OUT:-runs/scdd_tin10}
SUP=${SUP:-runs/teachers/tin10_conv3.pth}   # supervised conv3 teacher (python -m squeeze ... --epochs 30)
SSL_EPOCHS=${SSL_EPOCHS:-10}
SSL_FLAGS=${SSL_FLAGS:-"--batch-size 128 --lr 0.03 --moco-momentum 0.99 --knn-every 2"}
IPC=${IPC:-10}
ITR=${ITR:-200}
LR=${LR:-0.25}          # CIFAR-scale recovery settings (input 32) as bench/cpu_table.sh
R_BN=${R_BN:-0.01}
JITTER=${JITTER:-4}
RE_EPOCHS=${RE_EPOCHS:-50}
SEEDS=${SEEDS:-"3407 4663 2897"}
GPU=${GPU:-cpu}
TABLE=${TABLE:-results/scdd_tin10.md}

source scripts/lib.sh
setup_device
SSL=$OUT/ssl_conv3.pth
PROBE=$OUT/scdd_conv3.pth
D=$OUT/ipc$IPC

[ -f "$SUP" ] || run python -m squeeze --dataset custom --data-path "$DATA" --arch-name conv3 --input-size 32 \
    --epochs 30 --device "$DEVICE" --output "$SUP"
# shellcheck disable=SC2086
[ -f "$SSL" ] || run python -m squeeze.ssl --data-path "$DATA" --arch-name conv3 --input-size 32 \
    --epochs "$SSL_EPOCHS" $SSL_FLAGS --device "$DEVICE" --output "$SSL" --resume
[ -f "$PROBE" ] || run python -m squeeze.linear_probe --backbone "$SSL" --data-path "$DATA" --train-aug none \
    --device "$DEVICE" --output "$PROBE"
run python -m squeeze.evaluate --arch-path "$SUP" --data-path "$DATA" --device "$DEVICE" --output "$OUT/sup_eval.json"
run python -m squeeze.evaluate --arch-path "$PROBE" --data-path "$DATA" --device "$DEVICE" \
    --output "$OUT/scdd_eval.json"
run python -m squeeze.bn_stats "$SUP" "$PROBE" --names supervised-conv3 mocov2-conv3-probe \
    --output "$OUT/bn_stats"
[ "${DRY_RUN:-0}" = 1 ] || cp "$OUT/bn_stats.png" imgs/bn_stats_tin10_conv3.png

common=(--dataset custom --input-size 32 --ipc "$IPC" --iteration "$ITR" --batch-size 100 --lr "$LR" --r-bn "$R_BN"
        --jitter "$JITTER" --device "$DEVICE" --init noise --train-data-path "$DATA/train" --syn-data-path "$D")
[ -f "$D/random_real/manifest.json" ] || run python -m relabel_eval.baselines random --train-dir "$DATA/train" \
    --ipc "$IPC" --seed 0 --output-dir "$D/random_real"
run python -m recover --exp-name sre2l --arch-path "$SUP" "${common[@]}"
run python -m recover --exp-name scdd --arch-path "$PROBE" "${common[@]}"
rows=()
for m in random_real sre2l scdd; do
    [ -f "$D/eval_${m}_soft.json" ] || run python -m relabel_eval --syn-data-path "$D/$m" --val-dir "$DATA/val" \
        --teacher-path "$SUP" --stud-name conv3 --dataset custom --input-size 32 --ipc "$IPC" \
        --re-epochs "$RE_EPOCHS" --label-mode soft --seeds $SEEDS --device "$DEVICE" --output "$D/eval_${m}_soft.json"
done
rows=(--row method=random-real ipc="$IPC" syn="$D/random_real" soft="$D/eval_random_real_soft.json"
      --row method="SRe2L (supervised teacher)" ipc="$IPC" syn="$D/sre2l" soft="$D/eval_sre2l_soft.json"
      --row method="SC-DD (MoCo v2 + probe teacher)" ipc="$IPC" syn="$D/scdd" soft="$D/eval_scdd_soft.json")
run python scripts/results_table.py --out "$TABLE" "${rows[@]}" \
    --title "tinyimagenet-10 at 32x32, IPC $IPC: recovery from noise (ITR $ITR, lr $LR, r_bn $R_BN, jitter $JITTER, \
batch 100) with the supervised conv3 teacher (SRe2L) or the MoCo v2 conv3 + linear-probe teacher (SC-DD, \
$SSL_EPOCHS SSL epochs); every set evaluated with soft labels from the SUPERVISED teacher (conv3 student, \
relabel_eval $RE_EPOCHS epochs, CutMix + KD T=20), final top-1 mean +- std over seeds $SEEDS. $(nproc --all) shared CPU \
cores. Produced by bench/scdd_tin10.sh."
