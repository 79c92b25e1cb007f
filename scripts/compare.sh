#!/usr/bin/env bash
# One command, one fair table: every method and every strong baseline from ONE teacher, at ONE budget,
# each set scored under every protocol (soft-label KD = the DELT/RDED protocol, the headline; hard labels;
# RDED's ShufflePatches protocol; PAD's protocol; soft-label KD without augmentation for DD-Ranking's ARS).
# Rows (METHODS): full random top medium min herding kcenter sre2l cda delt rded scdd datm pad.
# BUDGET=<teacher image-iterations> gives the BN-matching methods (SRe2L, CDA, SC-DD, DELT) the iteration
# count that spends it (ITR = BUDGET / (classes x IPC)); DELT's EarlyLate spends fewer by design and its
# row states both. Outputs: OUT/compare.{md,csv,json}, OUT/compare_cost.png, OUT/compare_protocols.png,
# OUT/compare_samples.png. Every step resumes when the same command is run again (a finished step is
# skipped, an interrupted one continues); a failed method is reported in its row, the others go on.
# Every variable can be set in the environment; DRY_RUN=1 prints the commands only; GPU=0,1,2,3 runs the
# stages under torchrun as the setting scripts do (scripts/lib.sh). docs/compare.md explains the table.
set -euo pipefail
cd "$(dirname "$0")/.."

DATASET=${DATASET:-custom}                                   # registry name (tinyimagenet, cifar10, ...)
DATA_ROOT=${DATA_ROOT:-../shared/data/tinyimagenet-10}       # ImageFolder root with train/ and val/
ARCH=${ARCH:-conv3}                                          # the teacher (and recovery) architecture
STUDENT=${STUDENT:-${ARCH}}                                  # the student of every protocol but PAD's
INPUT_SIZE=${INPUT_SIZE:-32}
IPC=${IPC:-10}
METHODS=${METHODS:-"full random top medium min herding kcenter sre2l cda delt rded scdd datm pad"}
SEEDS=${SEEDS:-"3407 4663 2897"}                             # evaluation seeds (random: draw i with seed i)
FULL_SEEDS=${FULL_SEEDS:-${SEEDS}}                           # the full-set row's seeds (it costs |train|/(C x IPC) rows)
BUDGET=${BUDGET:-}                                           # teacher image-iterations per BN-matching set
GPU=${GPU:-auto}                                             # "0", "0,1,2,3" (torchrun), "cpu" or "auto"
OUT=${OUT:-runs/compare}
TEACHER=${TEACHER:-${OUT}/teacher.pth}                       # trained here when missing (TEACHER_EPOCHS)
TEACHER_EPOCHS=${TEACHER_EPOCHS:-30}
TEACHER_FLAGS=${TEACHER_FLAGS:-"--lr 0.05 --batch-size 64"}  # python -m squeeze recipe (global batch)
ITR=${ITR:-200}                                              # recover iterations (BUDGET overrides)
ROUND_ITR=${ROUND_ITR:-40}                                   # DELT's EarlyLate round length
RE_EPOCHS=${RE_EPOCHS:-30}                                   # student epochs of every protocol
EVAL_EVERY=${EVAL_EVERY:-10}                                 # validation every N epochs (best-during-training)
PROTOCOLS=${PROTOCOLS:-"soft hard rded pad noaug"}           # noaug: soft KD without augmentation (ARS)
# recover (SRe2L, CDA, DELT, SC-DD): the quickstart's setting
LR=${LR:-0.25}
R_BN=${R_BN:-0.01}
JITTER=${JITTER:-4}
BATCH=${BATCH:-100}
MIN_SCALE=${MIN_SCALE:-0.25}                                 # soft/hard protocols: RandomResizedCrop min scale
RAND_AUG=${RAND_AUG:-}                                       # e.g. rand-m4-n3-mstd1.0 (DELT's Tiny-ImageNet)
# RDED: patches from a pool of MIPC real images per class, NUM_CROP crops each, FACTOR x FACTOR per image
FACTOR=${FACTOR:-1}
MIPC=${MIPC:-50}
NUM_CROP=${NUM_CROP:-5}
# SC-DD: a self-supervised backbone (a file, or SSL_EPOCHS > 0 trains one with squeeze.ssl); none: row skipped
SSL_BACKBONE=${SSL_BACKBONE:-}
SSL_EPOCHS=${SSL_EPOCHS:-0}
# PAD and DATM-equivalent (trajectory matching; DATM = no curriculum, no depth mask); the PAD protocol
PAD_ARCH=${PAD_ARCH:-conv3_in}                               # experts and PAD-protocol student
NUM_EXPERTS=${NUM_EXPERTS:-2}
EXPERT_EPOCHS=${EXPERT_EPOCHS:-10}
PAD_ITR=${PAD_ITR:-100}
LR_IMG=${LR_IMG:-100}
MATCH_FLAGS=${MATCH_FLAGS:-"--syn-steps 10 --expert-epochs 2 --min-start-epoch 0 --max-start-epoch 5 --lr-lr 1e-5 --lr-y 10"}
PAD_LR=${PAD_LR:-0.01}                                       # PAD protocol: student lr of sets without a learned lr
SEED_PARALLEL=${SEED_PARALLEL:-ddp}

source scripts/lib.sh
setup_device

# every command is printed (DRY_RUN=1: only printed); with STATS set, its wall time and peak memory are
# appended to that file (scripts/compare_table.py measure); the printed command is the stage's own
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
    if [ -n "${STATS:-}" ]; then
        python scripts/compare_table.py measure --stats "${STATS}" --step "${STEP:-$1}" -- "$@"
    else
        "$@"
    fi
}

TRAIN=${DATA_ROOT}/train
SETS=${OUT}/sets
EVALS=${OUT}/eval
RANKING_FILE=${OUT}/ranking.csv
EXPERTS_PAD=${OUT}/experts_pad
EXPERTS_DATM=${OUT}/experts_datm
DIFFICULTY=${OUT}/difficulty.csv
read -r -a SEED_LIST <<< "${SEEDS}"
read -r -a FULL_SEED_LIST <<< "${FULL_SEEDS}"
for m in ${METHODS}; do
    case " full random top medium min herding kcenter sre2l cda delt rded scdd datm pad " in
        *" ${m} "*) ;; *) die "METHODS: unknown method '${m}' (full random top medium min herding kcenter sre2l cda delt rded scdd datm pad)" ;;
    esac
done
for p in ${PROTOCOLS}; do
    case "${p}" in soft|hard|rded|pad|noaug) ;; *) die "PROTOCOLS: unknown protocol '${p}' (soft hard rded pad noaug)" ;; esac
done
[ -d "${TRAIN}" ] || [ "${DRY_RUN:-0}" = 1 ] || die "DATA_ROOT=${DATA_ROOT}: no train/ folder there"
if [ -d "${TRAIN}" ]; then
    NUM_CLASSES=$(find "${TRAIN}" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l)
else
    NUM_CLASSES=${NUM_CLASSES:-10}
fi
# the equal-budget rule: ITR that spends BUDGET image-iterations on the uniform (SRe2L) schedule
if [ -n "${BUDGET}" ]; then
    [[ "${BUDGET}" =~ ^[1-9][0-9]*$ ]] || die "BUDGET=${BUDGET}: give a number of teacher image-iterations"
    ITR=$((BUDGET / (NUM_CLASSES * IPC)))
    [ "${ITR}" -ge 1 ] || die "BUDGET=${BUDGET} is below one iteration for ${NUM_CLASSES} classes x IPC ${IPC}"
    if [ "${ROUND_ITR}" -gt "${ITR}" ]; then ROUND_ITR=${ITR}; fi
    echo "# BUDGET ${BUDGET} image-iterations: ITR ${ITR} for ${NUM_CLASSES} classes x IPC ${IPC}" >&2
fi

done_file() { [ "${DRY_RUN:-0}" != 1 ] && [ -e "$1" ]; }
complete_set() { [ "${DRY_RUN:-0}" != 1 ] && [ -f "$1/manifest.json" ] && grep -q '"status": "complete"' "$1/manifest.json"; }

# ---- the one teacher
ensure_teacher() {
    if [ -f "${TEACHER}" ] || [ "${TEACHER_READY:-0}" = 1 ]; then return 0; fi
    if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "$(dirname "${TEACHER}")"; fi
    STEP=teacher train_teacher "${TEACHER}" "${ARCH}"
}

# ---- evaluation of one set under one protocol: eval_set METHOD SET PROTOCOL OUTPUT SEED...
eval_set() {
    local m=$1 set=$2 proto=$3 output=$4; shift 4
    if done_file "${output}"; then return 0; fi
    local flags=(--syn-data-path "${set}" --val-dir "${DATA_ROOT}/val" --dataset "${DATASET}"
                 --input-size "${INPUT_SIZE}" --re-epochs "${RE_EPOCHS}" --eval-every "${EVAL_EVERY}" --seeds "$@"
                 --device "${DEVICE}" --output "${output}" --exp-name "compare_${m}_${proto}")
    if [ "${m}" != full ]; then flags+=(--ipc "${IPC}"); fi
    if [ "${SEED_PARALLEL}" = ranks ]; then flags+=(--seed-parallel ranks); fi  # under torchrun: whole seeds per process
    local kd=(--teacher-path "${TEACHER}" --arch-name "${ARCH}" --stud-name "${STUDENT}")
    local aug=(--min-scale-crops "${MIN_SCALE}" --max-scale-crops 1.0)
    if [ -n "${RAND_AUG}" ]; then aug+=(--use-rand-augment --rand-augment-config "${RAND_AUG}"); fi
    local one=0
    case "${proto}" in
        soft) flags+=(--protocol delt "${kd[@]}" "${aug[@]}") ;;
        hard) flags+=(--protocol delt --label-mode hard "${kd[@]}" "${aug[@]}") ;;
        noaug) flags+=(--protocol delt "${kd[@]}" --mix-type none --no-image-aug) ;;
        rded) flags+=(--protocol rded --factor "${FACTOR}" --max-scale-crops 1.0 "${kd[@]}") ;;
        pad) flags+=(--protocol pad --zca "${EXPERTS_PAD}/zca.pt" --stud-name "${PAD_ARCH}")
             # sets without a learned lr (all but PAD's and DATM's) train at PAD_LR
             if [ "${m}" != pad ] && [ "${m}" != datm ]; then flags+=(--learning-rate "${PAD_LR}"); fi
             one=1 ;;
    esac
    if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "$(dirname "${output}")"; fi
    ONE_PROCESS=${one} STEP=eval_${proto} launch relabel_eval "${flags[@]}"
}

# the protocols a row is scored by: the full training set gets the soft and hard ones (HLR needs hard)
row_protocols() {
    if [ "$1" = full ]; then echo "${PROTOCOLS}" | tr ' ' '\n' | grep -E '^(soft|hard)$' | tr '\n' ' '; else echo "${PROTOCOLS}"; fi
}

evaluate_row() {  # evaluate_row METHOD SET
    local m=$1 set=$2 p seeds=("${SEED_LIST[@]}")
    if [ "${m}" = full ]; then seeds=("${FULL_SEED_LIST[@]}"); fi
    for p in $(row_protocols "${m}"); do
        if [ "${p}" = pad ] && [ "${EXPERTS_READY:-0}" != 1 ]; then continue; fi  # the experts failed: no ZCA
        eval_set "${m}" "${set}" "${p}" "${EVALS}/${m}/${p}.json" "${seeds[@]}"
    done
}

# ---- synthesis per row (STATS: the row's cost log)
select_set() {  # select_set CRITERION: rank_select from the shared ranking (scored once with the teacher)
    local crit=$1 set=${SETS}/$1
    if done_file "${set}/manifest.json"; then return 0; fi
    ensure_teacher
    if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "${SETS}"; fi
    STATS=${OUT}/stats/${crit}.jsonl STEP=rank_select launch rank_select --dataset "${DATASET}" --data-path "${TRAIN}" \
        --ranker-path "${TEACHER}" --ranker-arch "${ARCH}" --input-size "${INPUT_SIZE}" \
        --ranking-file "${RANKING_FILE}" --output-path "${set}" --ipc "${IPC}" --selection-criteria "${crit}" \
        --device "${DEVICE}"
    wait_for "${set}/manifest.json"
}

recover_set() {  # recover_set METHOD TEACHER ARCH: SRe2L/CDA/SC-DD from noise, DELT EarlyLate from medium
    local m=$1 teacher=$2 arch=$3 init=() sched=() curriculum=(--easy2hard-mode cosine --milestone 0)
    if complete_set "${SETS}/${m}"; then return 0; fi
    case "${m}" in
        delt) select_set medium
              init=(--init-data-path "${SETS}/medium")
              if [ "${IPC}" -gt 1 ]; then sched=(--use-early-late --round-iterations "${ROUND_ITR}"); fi
              curriculum=(--easy2hard-mode cosine --milestone 1) ;;
        cda) init=(--init noise --train-data-path "${TRAIN}"); curriculum=(--easy2hard-mode cosine --milestone 1) ;;
        *) init=(--init noise --train-data-path "${TRAIN}") ;;
    esac
    STATS=${OUT}/stats/${m}.jsonl STEP=recover launch recover "${init[@]}" --syn-data-path "${SETS}" --exp-name "${m}" \
        --arch-name "${arch}" --arch-path "${teacher}" --dataset "${DATASET}" --input-size "${INPUT_SIZE}" \
        --ipc "${IPC}" --iteration "${ITR}" "${sched[@]}" --batch-size "${BATCH}" --lr "${LR}" --r-bn "${R_BN}" \
        --jitter "${JITTER}" "${curriculum[@]}" --device "${DEVICE}"
    wait_for "${SETS}/${m}/manifest.json"
}

ensure_pad_experts() {  # PAD's curriculum experts (ZCA): PAD's synthesis and the PAD protocol's whitening
    if [ "${EXPERTS_READY:-0}" = 1 ]; then return 0; fi
    if done_file "${EXPERTS_PAD}/zca.pt" && done_file "${OUT}/stats/.experts_pad.done"; then return 0; fi
    if ! done_file "${DIFFICULTY%.csv}.order.json"; then
        STATS=${OUT}/stats/experts_pad.jsonl STEP=difficulty launch rank_select.difficulty --dataset "${DATASET}" \
            --data-path "${TRAIN}" --arch "${PAD_ARCH}" --input-size "${INPUT_SIZE}" --output "${DIFFICULTY}" \
            --device "${DEVICE}"
        wait_for "${DIFFICULTY%.csv}.order.json"
    fi
    STATS=${OUT}/stats/experts_pad.jsonl STEP=experts launch squeeze.trajectories --dataset "${DATASET}" \
        --data-path "${DATA_ROOT}" --arch "${PAD_ARCH}" --input-size "${INPUT_SIZE}" --num-experts "${NUM_EXPERTS}" \
        --epochs "${EXPERT_EPOCHS}" --zca --difficulty "${DIFFICULTY%.csv}.order.json" --output-dir "${EXPERTS_PAD}" \
        --device "${DEVICE}"
    if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "${OUT}/stats"; touch "${OUT}/stats/.experts_pad.done"; fi
}

match_set() {  # match_set pad|datm: trajectory matching (PAD: curriculum experts, depth mask; DATM: neither)
    local m=$1 experts=${EXPERTS_PAD} ratio=0.5 flags=()
    if done_file "${SETS}/${m}/manifest.json" && done_file "${SETS}/${m}.lr.pt"; then return 0; fi
    if [ "${m}" = pad ]; then
        [ "${EXPERTS_READY:-0}" = 1 ] || die "pad: PAD's experts failed (see above)"
    else
        experts=${EXPERTS_DATM}; ratio=0.0
        STATS=${OUT}/stats/${m}.jsonl STEP=experts launch squeeze.trajectories --dataset "${DATASET}" \
            --data-path "${DATA_ROOT}" --arch "${PAD_ARCH}" --input-size "${INPUT_SIZE}" \
            --num-experts "${NUM_EXPERTS}" --epochs "${EXPERT_EPOCHS}" --zca --output-dir "${experts}" \
            --device "${DEVICE}"
    fi
    read -r -a flags <<< "${MATCH_FLAGS}"
    if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "${SETS}"; fi
    STATS=${OUT}/stats/${m}.jsonl STEP=match launch recover.trajectory_matching --experts "${experts}" \
        --data-path "${TRAIN}" --ipc "${IPC}" --iterations "${PAD_ITR}" --lr-img "${LR_IMG}" "${flags[@]}" \
        --depth-ratio "${ratio}" --output-path "${SETS}/${m}" --device "${DEVICE}"
    wait_for "${SETS}/${m}/manifest.json"
}

scdd_teacher() {  # SC-DD's recovery teacher: a linear probe on a self-supervised backbone
    local probe=${OUT}/teacher_scdd.pth backbone=${SSL_BACKBONE:-${OUT}/ssl_backbone.pth}
    if [ -f "${probe}" ]; then return 0; fi
    if [ ! -f "${backbone}" ]; then
        STATS=${OUT}/stats/scdd.jsonl STEP=ssl launch squeeze.ssl --dataset "${DATASET}" --data-path "${DATA_ROOT}" \
            --arch-name "${ARCH}" --input-size "${INPUT_SIZE}" --epochs "${SSL_EPOCHS}" --device "${DEVICE}" \
            --output "${backbone}" --resume
    fi
    STATS=${OUT}/stats/scdd.jsonl STEP=linear_probe launch squeeze.linear_probe --backbone "${backbone}" \
        --arch-name "${ARCH}" --dataset "${DATASET}" --data-path "${DATA_ROOT}" --input-size "${INPUT_SIZE}" \
        --device "${DEVICE}" --output "${probe}"
    wait_for "${probe}"
}

# ---- one row: its set(s), then every protocol
method_full() { evaluate_row full "${TRAIN}"; }
method_random() {
    local i p
    for i in "${!SEED_LIST[@]}"; do
        if ! done_file "${SETS}/random_d${i}/manifest.json"; then
            if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "${SETS}"; fi
            STATS=${OUT}/stats/random.jsonl STEP=random run python -m relabel_eval.baselines random \
                --train-dir "${TRAIN}" --ipc "${IPC}" --seed "${i}" --output-dir "${SETS}/random_d${i}"
        fi
        for p in $(row_protocols random); do
            if [ "${p}" = pad ] && [ "${EXPERTS_READY:-0}" != 1 ]; then continue; fi
            eval_set random "${SETS}/random_d${i}" "${p}" "${EVALS}/random/${p}_d${i}.json" "${SEED_LIST[$i]}"
        done
    done
}
method_top() { select_set top; evaluate_row top "${SETS}/top"; }
method_medium() { select_set medium; evaluate_row medium "${SETS}/medium"; }
method_min() { select_set min; evaluate_row min "${SETS}/min"; }
method_herding() { select_set herding; evaluate_row herding "${SETS}/herding"; }
method_kcenter() { select_set kcenter; evaluate_row kcenter "${SETS}/kcenter"; }
method_sre2l() { recover_set sre2l "${TEACHER}" "${ARCH}"; evaluate_row sre2l "${SETS}/sre2l"; }
method_cda() { recover_set cda "${TEACHER}" "${ARCH}"; evaluate_row cda "${SETS}/cda"; }
method_delt() { recover_set delt "${TEACHER}" "${ARCH}"; evaluate_row delt "${SETS}/delt"; }
method_rded() {
    if ! done_file "${SETS}/rded/manifest.json"; then
        if [ "${DRY_RUN:-0}" != 1 ]; then mkdir -p "${SETS}"; fi
        SYN_PATH=${SETS}/rded STATS=${OUT}/stats/rded.jsonl STEP=patches stage_patches
    fi
    evaluate_row rded "${SETS}/rded"
}
method_scdd() {
    if [ -z "${SSL_BACKBONE}" ] && [ "${SSL_EPOCHS}" = 0 ]; then
        echo "# scdd: skipped (no SSL teacher: set SSL_BACKBONE=FILE or SSL_EPOCHS=N)" >&2
        return 99
    fi
    scdd_teacher
    recover_set scdd "${OUT}/teacher_scdd.pth" "${ARCH}"
    evaluate_row scdd "${SETS}/scdd"
}
method_datm() { match_set datm; evaluate_row datm "${SETS}/datm"; }
method_pad() { match_set pad; evaluate_row pad "${SETS}/pad"; }

record_status() {  # record_status METHOD STATUS RC NOTE: OUT/status/METHOD.json, read by the table
    if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
    mkdir -p "${OUT}/status"
    python -c 'import json, sys; json.dump({"method": sys.argv[1], "status": sys.argv[2], "rc": int(sys.argv[3]),
"note": sys.argv[4]}, open(sys.argv[5], "w"))' "$1" "$2" "$3" "$4" "${OUT}/status/$1.json"
}

t0=$(date +%s)
echo "== compare ${DATASET} ${ARCH} IPC ${IPC}: ${METHODS}; protocols ${PROTOCOLS}; seeds ${SEEDS}" >&2
FAILED=()
# shared by the rows: the one teacher (every row needs it: a failure stops here) and PAD's experts (PAD's
# synthesis and the PAD protocol's ZCA: a failure leaves the pad column and row empty, the rest goes on)
echo "== teacher" >&2
ensure_teacher
TEACHER_READY=1
if [[ " ${PROTOCOLS} " == *" pad "* ]] || [[ " ${METHODS} " == *" pad "* ]]; then
    echo "== PAD experts" >&2
    set +e
    ( set -euo pipefail; ensure_pad_experts )
    rc=$?
    set -e
    if [ "${rc}" = 0 ]; then EXPERTS_READY=1; else echo "== PAD experts FAILED (exit ${rc}): no pad protocol" >&2; fi
fi
for m in ${METHODS}; do
    echo "== ${m}" >&2
    set +e
    if [ "${DRY_RUN:-0}" = 1 ]; then
        ( set -euo pipefail; "method_${m}" )
        rc=$?
    else  # stderr also to OUT/logs/METHOD.log: a failure's error line goes into its row
        mkdir -p "${OUT}/logs"
        : > "${OUT}/logs/${m}.log"
        { ( set -euo pipefail; "method_${m}" ) 2>&1 1>&3 | tee -a "${OUT}/logs/${m}.log" >&2; } 3>&1
        rc=${PIPESTATUS[0]}
    fi
    set -e
    if [ "${rc}" = 0 ]; then
        record_status "${m}" ok 0 ""
    elif [ "${rc}" = 99 ]; then
        record_status "${m}" skipped 0 "no SSL teacher (set SSL_BACKBONE=FILE or SSL_EPOCHS=N)"
    else
        echo "== ${m} FAILED (exit ${rc}); the other methods go on" >&2
        why=$(grep -a '^error:' "${OUT}/logs/${m}.log" 2>/dev/null | tail -n 1 || true)
        record_status "${m}" failed "${rc}" "exit ${rc}: ${why:-see ${OUT}/logs/${m}.log}"
        FAILED+=("${m}")
    fi
done

# the table, the figures, the sample grid (every set that exists)
grid=(); names=()
for m in ${METHODS}; do
    case "${m}" in full) continue ;; random) s=${SETS}/random_d0 ;; *) s=${SETS}/${m} ;; esac
    if [ "${m}" = scdd ] && [ -z "${SSL_BACKBONE}" ] && [ "${SSL_EPOCHS}" = 0 ]; then continue; fi
    if [ "${DRY_RUN:-0}" = 1 ] || [ -f "${s}/manifest.json" ]; then grid+=("${s}"); names+=("${m}"); fi
done
# a grid output is redone when missing, older than a set, or made for other sets (FILE.sets lists them)
stale_grid() {
    [ "${DRY_RUN:-0}" = 1 ] || [ ! -f "$1" ] || [ "$(cat "$1.sets" 2>/dev/null)" != "${names[*]}" ] \
        || [ -n "$(find "${grid[@]}" -maxdepth 1 -name manifest.json -newer "$1")" ]
}
if [ "${#grid[@]}" -gt 0 ] && stale_grid "${OUT}/compare_samples.png"; then
    if run python -m common.viz "${grid[@]}" --names "${names[@]}" --per-class "$((IPC < 5 ? IPC : 5))" \
            --max-classes 4 --out "${OUT}/compare_samples.png" --force; then
        [ "${DRY_RUN:-0}" = 1 ] || echo "${names[*]}" > "${OUT}/compare_samples.png.sets"
    else
        echo "# sample grid failed; the table goes on" >&2
    fi
fi
# intra- and inter-class diversity of every set on the teacher's features
if [ "${#grid[@]}" -gt 0 ] && stale_grid "${OUT}/diversity.json"; then
    if run python -m relabel_eval.diversity --syn-data-path "${grid[@]}" --names "${names[@]}" \
            --teacher-path "${TEACHER}" --arch-name "${ARCH}" --ipc "${IPC}" --output "${OUT}/diversity.json" --force; then
        [ "${DRY_RUN:-0}" = 1 ] || echo "${names[*]}" > "${OUT}/diversity.json.sets"
    else
        echo "# diversity failed; the table goes on without it" >&2
    fi
fi
run python scripts/compare_table.py table --out "${OUT}" --methods "${METHODS}" --protocols "${PROTOCOLS}" \
    --ipc "${IPC}" --itr "${ITR}" --budget "${BUDGET:-0}" --num-classes "${NUM_CLASSES}" --seeds "${SEEDS}" \
    --train "${TRAIN}"
echo "compare finished in $(( $(date +%s) - t0 )) s; table: ${OUT}/compare.md${FAILED[*]:+; failed: ${FAILED[*]}}" >&2
# a failed row is in the table; the exit code says so too (run the same command again to resume)
if [ "${#FAILED[@]}" -gt 0 ]; then exit 1; fi
