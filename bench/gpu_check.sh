#!/usr/bin/env bash
# GPU check: every stage for a few iterations on generated data, on one CUDA device, in a few minutes.
#
#   bash bench/gpu_check.sh                 # CUDA (default), ResNet-18 (modified stem) at 32 px
#   DEVICE=cpu bash bench/gpu_check.sh      # CPU fallback: conv3, tiny sizes, CI-sized time
#   DRY_RUN=1 bash bench/gpu_check.sh       # print the commands only
#
# Stages: squeeze with AMP (and once with --compile on CUDA), rank_select, rank_select.patches, recover fp32 and
# --amp (same seed; their images and losses must agree within a stated tolerance), relabel_eval with
# soft labels (online teacher; with --compile on CUDA), hard labels and FKD replay (stored soft labels), all with AMP, and the
# hub (pack a distilled set, fetch it back). For each stage it prints wall seconds, images/s (or
# image-iterations/s) and peak memory (CUDA allocated, or process RSS on CPU); results go to
# $OUT/stages.jsonl and $OUT/summary.json. Exits non-zero at the first failing stage or when fp32 and
# --amp recovery disagree. Every size can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu_check}
PY=${PY:-python}
if [ "${DEVICE}" = cpu ]; then  # CI-sized: conv3, 4 classes, a handful of iterations
    ARCH=${ARCH:-conv3}; CLASSES=${CLASSES:-4}; TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-40}; VAL_PER_CLASS=${VAL_PER_CLASS:-10}
    EPOCHS=${EPOCHS:-1}; BATCH=${BATCH:-32}; IPC=${IPC:-4}; ITR=${ITR:-8}
    RE_EPOCHS=${RE_EPOCHS:-2}; MIPC=${MIPC:-16}; NUM_CROP=${NUM_CROP:-2}; COMPILE=${COMPILE:-0}
else  # one GPU, well under 10 minutes
    ARCH=${ARCH:-resnet18_modified}; CLASSES=${CLASSES:-10}; TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-500}
    VAL_PER_CLASS=${VAL_PER_CLASS:-100}; EPOCHS=${EPOCHS:-3}; BATCH=${BATCH:-256}; IPC=${IPC:-10}; ITR=${ITR:-200}
    RE_EPOCHS=${RE_EPOCHS:-20}; MIPC=${MIPC:-100}; NUM_CROP=${NUM_CROP:-5}
    COMPILE=${COMPILE:-1}
fi
# fp32 vs --amp recovery, same seed and init: the largest relative difference of a batch's first and
# last loss (bf16 keeps 8 mantissa bits, ~0.4% per value; measured 0.02% / 0.1% for conv3, 200 iterations,
# bf16 on an AMX CPU) and the mean |pixel difference| as a fraction of the 0..255 range (Adam's normalised
# steps amplify rounding, so pixels drift apart while the losses agree: measured 0.061 at 200 iterations)
MAX_PIXEL_DIFF=${MAX_PIXEL_DIFF:-0.10}
MAX_LOSS_DIFF=${MAX_LOSS_DIFF:-0.05}
DATA=$OUT/data
TEACHER=$OUT/teacher.pth
RECORD=$OUT/stages.jsonl
N_TRAIN=$(( CLASSES * TRAIN_PER_CLASS ))
N_SYN=$(( CLASSES * IPC ))

# Print a stage's command (as `+ python -m ...`) and run it under the recorder; stage NAME UNITS UNIT CMD...
stage() {
    local name=$1 units=$2 unit=$3; shift 3
    printf '+'; printf ' %q' "$@"; printf '\n'
    [ "${DRY_RUN:-0}" = 1 ] && return 0
    echo "== ${name}" >&2
    [ "$1" = python ] && shift
    if ! "${PY}" bench/gpu_check.py exec --name "${name}" --record "${RECORD}" --units "${units}" --unit "${unit}" \
            -- "$@"; then
        echo "gpu_check: stage ${name} FAILED" >&2
        summary || true
        exit 1
    fi
}
summary() { "${PY}" bench/gpu_check.py summary "${RECORD}" --json "${OUT}/summary.json"; }

if [ "${DRY_RUN:-0}" != 1 ]; then
    rm -rf "${OUT}"; mkdir -p "${OUT}"
    "${PY}" - <<EOF >&2
import torch
from common.compute.accel import cpu_has_native_bf16, cuda_has_bf16, default_workers
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device ${DEVICE}")
if "${DEVICE}".startswith("cuda"):
    assert torch.cuda.is_available(), "DEVICE=${DEVICE} but CUDA is not available (DEVICE=cpu for the CPU fallback)"
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, bf16 {cuda_has_bf16()}")
print(f"CPU native bf16: {cpu_has_native_bf16()}, default DataLoader workers: {default_workers('${DEVICE%%:*}')}")
EOF
fi
t0=$(date +%s)

stage prepare $(( 10 * (TRAIN_PER_CLASS + VAL_PER_CLASS) )) img python -m common.prepare shapes --out "${DATA}" --train-per-class "${TRAIN_PER_CLASS}" \
    --val-per-class "${VAL_PER_CLASS}"
if [ "${CLASSES}" -lt 10 ] && [ "${DRY_RUN:-0}" != 1 ]; then  # keep the first CLASSES classes
    for split in train val; do
        find "${DATA}/${split}" -mindepth 1 -maxdepth 1 -type d | sort | tail -n +$(( CLASSES + 1 )) | xargs rm -rf
    done
fi
stage squeeze_amp $(( N_TRAIN / BATCH * BATCH * EPOCHS )) img python -m squeeze --data-path "${DATA}" \
    --arch-name "${ARCH}" --input-size 32 --epochs "${EPOCHS}" --batch-size "${BATCH}" --lr 0.05 --amp \
    --device "${DEVICE}" --output "${TEACHER}"
if [ "${COMPILE}" = 1 ]; then
    stage squeeze_amp_compile $(( N_TRAIN / BATCH * BATCH )) img python -m squeeze --data-path "${DATA}" \
        --arch-name "${ARCH}" --input-size 32 --epochs 1 --batch-size "${BATCH}" --lr 0.05 --amp --compile \
        --device "${DEVICE}" --output "${OUT}/teacher_compiled.pth"
fi
stage rank_select "${N_TRAIN}" img python -m rank_select --data-path "${DATA}/train" --ranker-path "${TEACHER}" \
    --ranking-file "${OUT}/ranking.csv" --output-path "${OUT}/init_medium" --ipc "${IPC}" \
    --selection-criteria medium --device "${DEVICE}"
stage rank_select.patches $(( CLASSES * MIPC * NUM_CROP )) crop python -m rank_select.patches \
    --data-path "${DATA}/train" --observer-path "${TEACHER}" --output-path "${OUT}/rded" --ipc "${IPC}" \
    --mipc "${MIPC}" --num-crop "${NUM_CROP}" --factor 2 --device "${DEVICE}"
# uniform schedule (no EarlyLate rounds): every image gets ITR iterations, so UNITS is exact
for prec in fp32 amp; do
    flag=(); [ "${prec}" = amp ] && flag=(--amp)
    stage "recover_${prec}" $(( N_SYN * ITR )) img-it python -m recover --init-data-path "${OUT}/init_medium" \
        --arch-path "${TEACHER}" --syn-data-path "${OUT}" --exp-name "delt_${prec}" --ipc "${IPC}" \
        --iteration "${ITR}" --batch-size "${N_SYN}" --lr 0.25 --r-bn 0.01 \
        --jitter 4 --milestone 1 --seed 0 --device "${DEVICE}" "${flag[@]}"
done
echo "+ python bench/gpu_check.py compare-recover ${OUT}/delt_fp32 ${OUT}/delt_amp"
if [ "${DRY_RUN:-0}" != 1 ]; then
    "${PY}" bench/gpu_check.py compare-recover "${OUT}/delt_fp32" "${OUT}/delt_amp" \
        --max-pixel-diff "${MAX_PIXEL_DIFF}" --max-loss-diff "${MAX_LOSS_DIFF}" > "${OUT}/recover_agreement.json" \
        || { summary || true; echo "gpu_check: fp32 and --amp recovery disagree" >&2; exit 1; }
fi
EVAL=(--val-dir "${DATA}/val" --teacher-path "${TEACHER}" --re-epochs "${RE_EPOCHS}" --eval-every "${RE_EPOCHS}"
      --seeds 0 --amp --device "${DEVICE}")
compile=(); [ "${COMPILE}" = 1 ] && compile=(--compile)
stage relabel_eval_soft $(( N_SYN * RE_EPOCHS )) img python -m relabel_eval --syn-data-path "${OUT}/delt_fp32" \
    "${EVAL[@]}" "${compile[@]}" --output "${OUT}/eval_soft.json"
stage relabel_eval_hard $(( N_SYN * RE_EPOCHS )) img python -m relabel_eval --syn-data-path "${OUT}/delt_fp32" \
    "${EVAL[@]}" --label-mode hard --output "${OUT}/eval_hard.json"
stage relabel_eval.relabel $(( N_SYN * RE_EPOCHS )) img python -m relabel_eval.relabel \
    --syn-data-path "${OUT}/delt_fp32" --teacher-path "${TEACHER}" --epochs "${RE_EPOCHS}" --seed 0 --amp \
    --device "${DEVICE}" --output-dir "${OUT}/soft_labels"
stage relabel_eval_fkd $(( N_SYN * RE_EPOCHS )) img python -m relabel_eval --syn-data-path "${OUT}/delt_fp32" \
    "${EVAL[@]}" --label-mode fkd --soft-label-dir "${OUT}/soft_labels" --output "${OUT}/eval_fkd.json"
stage hub_pack "${N_SYN}" img python -m hub pack "${OUT}/delt_fp32" --out "${OUT}/delt.tar.gz" --quiet
stage hub_fetch "${N_SYN}" img python -m hub fetch "${OUT}/delt.tar.gz" --out "${OUT}/delt_fetched" \
    --classes-from "${DATA}/val" --quiet

if [ "${DRY_RUN:-0}" != 1 ]; then
    n=$(find "${OUT}/delt_fetched" -mindepth 2 -name '*.png' | wc -l)
    [ "${n}" = "${N_SYN}" ] || { echo "gpu_check: hub round trip gave ${n} images, not ${N_SYN}" >&2; exit 1; }
    summary
    echo "gpu_check: all stages passed on ${DEVICE} in $(( $(date +%s) - t0 )) s; $(cat "${OUT}/recover_agreement.json")"
fi
