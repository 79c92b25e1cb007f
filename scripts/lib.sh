# Shared by every generated script in scripts/<dataset>/: the four stages as bash
# functions. A script sets its variables, sources this file and calls run_pipeline.
# DRY_RUN=1 prints every command instead of running it; STAGES picks stages.
# GPU=0,1,2,3 runs every stage under torchrun with one process per listed GPU; on a cluster set
# NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node as torchrun expects them.

# Print a command (shell-quoted, one line starting with "+ ") and run it unless DRY_RUN=1.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

setup_device() {
    case "${GPU}" in
        cpu|auto) DEVICE=${GPU}; NPROC=${NPROC:-1} ;;
        *) export CUDA_VISIBLE_DEVICES=${GPU}; DEVICE=cuda
           NPROC=$(awk -F, '{print NF}' <<< "${GPU}") ;;
    esac
    NNODES=${NNODES:-1}
    WORLD=$((NPROC * NNODES))
}

# `python -m MODULE`, or torchrun with one process per GPU (and the node flags on a cluster)
launcher() {
    if [ "${WORLD}" -le 1 ]; then
        LAUNCH=(python -m "$1")
    elif [ "${NNODES}" -le 1 ]; then
        LAUNCH=(torchrun --nproc_per_node="${NPROC}" -m "$1")
    else
        LAUNCH=(torchrun --nproc_per_node="${NPROC}" --nnodes="${NNODES}" --node_rank="${NODE_RANK:?NODE_RANK}"
                --master_addr="${MASTER_ADDR:?MASTER_ADDR}" --master_port="${MASTER_PORT:-29500}" -m "$1")
    fi
}

stage_squeeze() {
    if [ ! -f "${TEACHER}" ]; then
        if [ "${TEACHER_EPOCHS}" = 0 ]; then
            echo "note: ${TEACHER} must hold pretrained ${ARCH} weights (torchvision's ImageNet file, local path)" >&2
            [ "${DRY_RUN:-0}" = 1 ] || exit 2
        else
            # --batch-size is per process under torchrun: keep the recipe's global batch
            local per_process=()
            if [ "${WORLD}" -gt 1 ] && [[ " ${TEACHER_FLAGS} " =~ \ --batch-size\ ([0-9]+)\  ]]; then
                local global=${BASH_REMATCH[1]}
                if [ $((global % WORLD)) != 0 ]; then
                    echo "error: teacher batch ${global} is not divisible by ${WORLD} processes" >&2; exit 2
                fi
                per_process=(--batch-size $((global / WORLD)))
            fi
            launcher squeeze
            # shellcheck disable=SC2086
            run "${LAUNCH[@]}" --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch-name "${ARCH}" \
                --input-size "${INPUT_SIZE}" --epochs "${TEACHER_EPOCHS}" ${TEACHER_FLAGS} "${per_process[@]}" \
                --device "${DEVICE}" --output "${TEACHER}"
        fi
    fi
    # the check every later number depends on: the teacher's accuracy on this data
    run python -m squeeze.evaluate --arch-path "${TEACHER}" --arch-name "${ARCH}" --data-path "${DATA_ROOT}" \
        --input-size "${INPUT_SIZE}" --device "${DEVICE}"
}

stage_select() {
    launcher rank_select
    run "${LAUNCH[@]}" --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" \
        --ranker-path "${TEACHER}" --ranker-arch "${ARCH}" --input-size "${INPUT_SIZE}" \
        --ranking-file "${RANKING_FILE}" --output-path "${INIT_PATH}" --ipc "${IPC}" \
        --selection-criteria "${CRITERION}" --device "${DEVICE}"
}

stage_synthesize() {
    local early_late=()
    launcher recover
    # EarlyLate needs rounds; IPC 1 uses none (DELT's scripts drop the flag there)
    if [ "${IPC}" -gt 1 ] && [ -n "${ROUND_ITR}" ]; then
        early_late=(--use-early-late --round-iterations "${ROUND_ITR}")
    fi
    run "${LAUNCH[@]}" --init-data-path "${INIT_PATH}" --syn-data-path "${SYN_PATH}" --exp-name "${EXP_NAME}" \
        --arch-name "${ARCH}" --arch-path "${TEACHER}" --dataset "${DATASET}" --input-size "${INPUT_SIZE}" \
        --ipc "${IPC}" --iteration "${ITR}" "${early_late[@]}" --batch-size "${BATCH}" --lr "${LR}" \
        --r-bn "${R_BN}" --jitter "${JITTER}" --easy2hard-mode "${EASY2HARD}" --milestone "${MILESTONE}" \
        --device "${DEVICE}"
}

# RDED: real patches scored by the teacher, stitched factor x factor (no optimisation)
stage_patches() {
    run python -m rank_select.patches --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" \
        --observer-path "${TEACHER}" --output-path "${SYN_PATH}" --ipc "${IPC}" --mipc "${MIPC}" \
        --num-crop "${NUM_CROP}" --factor "${FACTOR}" --input-size "${INPUT_SIZE}" --device "${DEVICE}"
}

# ---- PAD (scripts/<dataset>/pad_*.sh): difficulty -> experts -> trajectory matching ----

stage_difficulty() {
    run python -m rank_select.difficulty --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" --arch "${ARCH}" \
        --input-size "${INPUT_SIZE}" --output "${DIFFICULTY}" --device "${DEVICE}"
}

stage_experts() {
    launcher squeeze.trajectories  # under torchrun each process trains its share of the experts
    run "${LAUNCH[@]}" --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch "${ARCH}" \
        --input-size "${INPUT_SIZE}" --num-experts "${NUM_EXPERTS}" --epochs "${EXPERT_TRAIN_EPOCHS}" --zca \
        --difficulty "${DIFFICULTY%.csv}.order.json" --output-dir "${EXPERTS}" --device "${DEVICE}"
}

stage_match() {
    # shellcheck disable=SC2086
    run python -m recover.trajectory_matching --experts "${EXPERTS}" --data-path "${DATA_ROOT}/train" \
        --ipc "${IPC}" --iterations "${ITR}" --lr-img "${LR_IMG}" ${MATCH_FLAGS} \
        --output-path "${SYN_PATH}/${EXP_NAME}" --device "${DEVICE}"
}

stage_validate() {
    local seed outputs=() syn="${SYN_PATH}/${EXP_NAME:-}" aug evals=""
    # each method's released evaluation protocol
    if [ "${METHOD:-delt}" = rded ]; then
        syn="${SYN_PATH}"
        aug=(--protocol rded --factor "${FACTOR}" --max-scale-crops 1.0)
    elif [ "${METHOD:-delt}" = pad ]; then
        aug=(--protocol pad --zca "${EXPERTS}/zca.pt")
        evals="${syn%/}.eval"  # results beside the set: files inside it would become class folders
    else
        aug=(--protocol delt --use-rand-augment --rand-augment-config "${RAND_AUG}" --min-scale-crops "${MIN_SCALE}"
             --max-scale-crops 1.0)
    fi
    syn="${syn%/}"
    evals="${evals:-${syn}}"
    launcher relabel_eval  # several processes: each seed trained with DDP (the batch stays global)
    for seed in ${SEEDS}; do
        run "${LAUNCH[@]}" --syn-data-path "${syn}" --val-dir "${DATA_ROOT}/val" \
            --teacher-path "${TEACHER}" --arch-name "${ARCH}" --stud-name "${STUDENT}" --dataset "${DATASET}" \
            --input-size "${INPUT_SIZE}" --ipc "${IPC}" --re-epochs "${RE_EPOCHS}" "${aug[@]}" \
            --seed "${seed}" --device "${DEVICE}" --output "${evals}/eval_${STUDENT}_seed${seed}.json"
        outputs+=("${evals}/eval_${STUDENT}_seed${seed}.json")
    done
    run python scripts/summarize.py --published "${PUBLISHED}" "${outputs[@]}"
}

run_pipeline() {
    setup_device
    echo "== ${DATASET} ${ARCH} IPC ${IPC}: stages ${STAGES}" >&2
    local s
    for s in ${STAGES}; do
        case "${s}" in
            squeeze) stage_squeeze ;;
            select) stage_select ;;
            synthesize) stage_synthesize ;;
            patches) stage_patches ;;
            difficulty) stage_difficulty ;;
            experts) stage_experts ;;
            match) stage_match ;;
            validate) stage_validate ;;
            *) echo "error: STAGES: unknown stage '${s}' (squeeze select synthesize patches difficulty experts match validate)" >&2; exit 2 ;;
        esac
    done
}

# ---- SC-DD (scripts/<dataset>/scdd_*.sh): self-supervised recovery teacher, supervised relabel teacher ----

stage_scdd_squeeze() {
    if [ ! -f "${TEACHER}" ]; then
        if [ ! -f "${SSL_BACKBONE}" ]; then
            if [ "${TEACHER_EPOCHS}" = 0 ]; then
                echo "note: ${SSL_BACKBONE} must hold a self-supervised ${ARCH} (released MoCo v2/v3, SwAV or DINO file, local path)" >&2
                [ "${DRY_RUN:-0}" = 1 ] || exit 2
            else
                run python -m squeeze.ssl --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch-name "${ARCH}" \
                    --input-size "${INPUT_SIZE}" --epochs "${TEACHER_EPOCHS}" --device "${DEVICE}" \
                    --output "${SSL_BACKBONE}" --resume
            fi
        fi
        run python -m squeeze.linear_probe --backbone "${SSL_BACKBONE}" --arch-name "${ARCH}" --dataset "${DATASET}" \
            --data-path "${DATA_ROOT}" --input-size "${INPUT_SIZE}" --device "${DEVICE}" --output "${TEACHER}"
    fi
    if [ ! -f "${RELABEL_TEACHER}" ]; then
        if [ "${TEACHER_EPOCHS}" = 0 ]; then
            echo "note: ${RELABEL_TEACHER} must hold supervised ${RELABEL_ARCH} weights (torchvision's ImageNet file, local path)" >&2
            [ "${DRY_RUN:-0}" = 1 ] || exit 2
        else
            # shellcheck disable=SC2086
            run python -m squeeze --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch-name "${RELABEL_ARCH}" \
                --input-size "${INPUT_SIZE}" --epochs "${TEACHER_EPOCHS}" ${TEACHER_FLAGS} \
                --device "${DEVICE}" --output "${RELABEL_TEACHER}"
        fi
    fi
    run python -m squeeze.evaluate --arch-path "${TEACHER}" --arch-name "${ARCH}" --data-path "${DATA_ROOT}" \
        --input-size "${INPUT_SIZE}" --device "${DEVICE}"
    run python -m squeeze.evaluate --arch-path "${RELABEL_TEACHER}" --arch-name "${RELABEL_ARCH}" \
        --data-path "${DATA_ROOT}" --input-size "${INPUT_SIZE}" --device "${DEVICE}"
}

stage_scdd_synthesize() {
    local launcher=(python -m recover)
    if [ "${NPROC}" -gt 1 ]; then launcher=(torchrun --nproc_per_node="${NPROC}" -m recover); fi
    run "${launcher[@]}" --init noise --train-data-path "${DATA_ROOT}/train" --syn-data-path "${SYN_PATH}" \
        --exp-name "${EXP_NAME}" --arch-name "${ARCH}" --arch-path "${TEACHER}" --dataset "${DATASET}" \
        --input-size "${INPUT_SIZE}" --ipc "${IPC}" --iteration "${ITR}" --batch-size "${BATCH}" --lr "${LR}" \
        --r-bn "${R_BN}" --jitter "${JITTER}" --easy2hard-mode "${EASY2HARD}" --milestone "${MILESTONE}" \
        --device "${DEVICE}"
}

stage_scdd_validate() {
    # soft labels from the supervised RELABEL_TEACHER; the recovery teacher is in the distilled set's manifest
    local seed outputs=() ra=()
    if [ -n "${RAND_AUG}" ]; then ra=(--use-rand-augment --rand-augment-config "${RAND_AUG}"); fi
    for seed in ${SEEDS}; do
        run python -m relabel_eval --syn-data-path "${SYN_PATH}/${EXP_NAME}" --val-dir "${DATA_ROOT}/val" \
            --teacher-path "${RELABEL_TEACHER}" --arch-name "${RELABEL_ARCH}" --stud-name "${STUDENT}" \
            --dataset "${DATASET}" --input-size "${INPUT_SIZE}" --ipc "${IPC}" --re-epochs "${RE_EPOCHS}" \
            "${ra[@]}" --min-scale-crops "${MIN_SCALE}" --max-scale-crops 1.0 --seed "${seed}" --device "${DEVICE}" \
            --output "${SYN_PATH}/${EXP_NAME}/eval_${STUDENT}_seed${seed}.json"
        outputs+=("${SYN_PATH}/${EXP_NAME}/eval_${STUDENT}_seed${seed}.json")
    done
    run python scripts/summarize.py --published "${PUBLISHED}" "${outputs[@]}"
}

run_scdd_pipeline() {
    setup_device
    echo "== SC-DD ${DATASET} ${ARCH} IPC ${IPC}: stages ${STAGES}" >&2
    local s
    for s in ${STAGES}; do
        case "${s}" in
            squeeze) stage_scdd_squeeze ;;
            select) echo "note: SC-DD recovers from noise; no selection stage" >&2 ;;
            synthesize) stage_scdd_synthesize ;;
            validate) stage_scdd_validate ;;
            *) echo "error: STAGES: unknown stage '${s}' (squeeze synthesize validate)" >&2; exit 2 ;;
        esac
    done
}
