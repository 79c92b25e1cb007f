# Shared by every generated script in scripts/<dataset>/: the stages as bash functions. A script
# sets its variables (paths derived from IPC/ITR/ROUND_ITR when it runs), sources this file and
# calls run_pipeline. DRY_RUN=1 prints every command instead of running it; STAGES picks stages.
#
# GPU=0,1,2,3 runs every stage that can use several processes under torchrun, one process per
# listed GPU (DIST_MODULES below); on a cluster set NNODES, NODE_RANK, MASTER_ADDR (and
# MASTER_PORT) on every node as torchrun expects them. A step that runs as one process runs on
# node 0 only; the other nodes wait for its output file (a shared file system is assumed).
# SEED_PARALLEL=ddp (default) trains each evaluation seed with all processes (DDP);
# SEED_PARALLEL=ranks gives each process whole seeds (faster at small IPC).
# Evaluation results, tables and resume state go to EVAL_PATH, beside the distilled set, never in it.
# LOG_DIR=DIR writes every training stage's curves there (TensorBoard: tensorboard --logdir DIR);
# WANDB_PROJECT=NAME also logs them to Weights & Biases (pip install wandb).

# the stages that split their work over torchrun's processes; the others run as one process
DIST_MODULES=" squeeze squeeze.ssl squeeze.linear_probe squeeze.trajectories rank_select rank_select.patches recover relabel_eval "
# the stages that write training curves (--log-dir, --wandb-project)
CURVE_MODULES=" squeeze squeeze.ssl recover recover.trajectory_matching relabel_eval "

# Print a command (shell-quoted, one line starting with "+ ") and run it unless DRY_RUN=1.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

die() { echo "error: $*" >&2; exit 2; }

setup_device() {
    case "${GPU}" in
        cpu|auto) DEVICE=${GPU}; NPROC=${NPROC:-1} ;;
        *) [[ "${GPU}" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPU=${GPU}: give cpu, auto or GPU ids such as 0,1,2,3"
           export CUDA_VISIBLE_DEVICES=${GPU}; DEVICE=cuda
           NPROC=$(awk -F, '{print NF}' <<< "${GPU}") ;;
    esac
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    MASTER_PORT=${MASTER_PORT:-29500}
    [[ "${NNODES}" =~ ^[1-9][0-9]*$ ]] || die "NNODES=${NNODES}: give the number of nodes (1 or more)"
    [[ "${NODE_RANK}" =~ ^[0-9]+$ ]] && [ "${NODE_RANK}" -lt "${NNODES}" ] \
        || die "NODE_RANK=${NODE_RANK}: give this node's rank, 0 to $((NNODES - 1))"
    if [ "${NNODES}" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
        die "NNODES=${NNODES}: set MASTER_ADDR (node 0's address) and MASTER_PORT on every node"
    fi
    WORLD=$((NPROC * NNODES))
    SEED_PARALLEL=${SEED_PARALLEL:-ddp}
    case "${SEED_PARALLEL}" in ddp|ranks) ;; *) die "SEED_PARALLEL=${SEED_PARALLEL}: give ddp or ranks" ;; esac
}

# LAUNCH=(...): `python -m MODULE`, or torchrun with one process per GPU (and the node flags on a cluster)
launcher() {
    if [ "${WORLD}" -le 1 ] || [[ "${DIST_MODULES}" != *" $1 "* ]]; then
        LAUNCH=(python -m "$1")
    elif [ "${NNODES}" -le 1 ]; then
        LAUNCH=(torchrun --nproc_per_node="${NPROC}" -m "$1")
    else
        LAUNCH=(torchrun --nproc_per_node="${NPROC}" --nnodes="${NNODES}" --node_rank="${NODE_RANK}"
                --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" -m "$1")
    fi
}

# launch MODULE ARGS...: the module under its launcher; a one-process step runs on node 0 only
# (ONE_PROCESS=1 launch ...: one process whatever the module, for a step that would idle the others)
launch() {
    local curves=()
    if [[ "${CURVE_MODULES}" == *" $1 "* ]]; then
        if [ -n "${LOG_DIR:-}" ]; then curves+=(--log-dir "${LOG_DIR}"); fi
        if [ -n "${WANDB_PROJECT:-}" ]; then curves+=(--wandb-project "${WANDB_PROJECT}"); fi
    fi
    launcher "$1"; shift
    if [ "${ONE_PROCESS:-0}" = 1 ]; then LAUNCH=(python -m "${LAUNCH[-1]}"); fi
    if [ "${LAUNCH[0]}" = torchrun ] || [ "${NODE_RANK}" = 0 ]; then
        run "${LAUNCH[@]}" "$@" ${curves[@]+"${curves[@]}"}
    else
        echo "# node ${NODE_RANK}: ${LAUNCH[*]} runs on node 0" >&2
    fi
}

# wait_for PATH: the nodes other than 0 wait for a one-process step's output
wait_for() {
    if [ "${NODE_RANK}" != 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
        echo "# node ${NODE_RANK}: waiting for $1" >&2
        while [ ! -e "$1" ]; do sleep 30; done
    fi
}

# FLAGS=(...): the words of $1 with its --batch-size N (the recipe's global batch) divided over
# the processes when MODULE ($2) runs under torchrun, so the global batch stays the recipe's
split_batch() {
    local words=() w i global=""
    read -r -a words <<< "$1"
    FLAGS=()
    for ((i = 0; i < ${#words[@]}; i++)); do
        w=${words[$i]}
        if [ "$w" = --batch-size ]; then global=${words[$((i + 1))]}; i=$((i + 1)); else FLAGS+=("$w"); fi
    done
    [ -n "${global}" ] || return 0
    launcher "$2"
    if [ "${LAUNCH[0]}" = torchrun ]; then
        [ $((global % WORLD)) = 0 ] || die "batch ${global} of $2 is not divisible by ${WORLD} processes"
        global=$((global / WORLD))
    fi
    FLAGS+=(--batch-size "${global}")
}

# the teacher ($TEACHER, architecture $ARCH): trained by python -m squeeze when missing, then checked
stage_squeeze() {
    train_teacher "${TEACHER}" "${ARCH}"
    launch squeeze.evaluate --arch-path "${TEACHER}" --arch-name "${ARCH}" --data-path "${DATA_ROOT}" \
        --input-size "${INPUT_SIZE}" --device "${DEVICE}"
}

# train_teacher PATH ARCH: a supervised teacher with the dataset's recipe (TEACHER_FLAGS)
train_teacher() {
    if [ -f "$1" ]; then return 0; fi
    if [ "${TEACHER_EPOCHS}" = 0 ]; then
        echo "note: $1 must hold pretrained $2 weights (torchvision's ImageNet file, local path)" >&2
        [ "${DRY_RUN:-0}" = 1 ] || exit 2
        return 0
    fi
    split_batch "${TEACHER_FLAGS}" squeeze
    launch squeeze --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch-name "$2" \
        --input-size "${INPUT_SIZE}" --epochs "${TEACHER_EPOCHS}" "${FLAGS[@]}" --device "${DEVICE}" --output "$1"
}

# DELT: rank the real images with the teacher, keep IPC medium-ranked ones per class
stage_select() {
    launch rank_select --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" \
        --ranker-path "${TEACHER}" --ranker-arch "${ARCH}" --input-size "${INPUT_SIZE}" \
        --ranking-file "${RANKING_FILE}" --output-path "${INIT_PATH}" --ipc "${IPC}" \
        --selection-criteria "${CRITERION}" --device "${DEVICE}"
}

# recover: DELT (EarlyLate from INIT_PATH), SRe2L and SC-DD (from noise), CDA (from noise, crop curriculum)
# the teacher's per-class BN statistics on the training set, for class-aware matching (one pass)
stage_class_stats() {
    launch squeeze.class_stats --arch-path "${TEACHER}" --arch-name "${ARCH}" --data-path "${DATA_ROOT}/train" \
        --dataset "${DATASET}" --input-size "${INPUT_SIZE}" --output "${CLASS_STATS}" --device "${DEVICE}"
    wait_for "${CLASS_STATS}"
}

# FADRM+: EXTRA_TEACHERS (paths, used in turn after TEACHER, and for the labels with EVAL_TEACHERS=all) and
# EXTRA_TEACHER_ARCHS (one architecture per path) must name existing files; checked before any stage runs
# (nothing trains them here)
check_extra_teachers() {
    local paths=() archs=() missing=() i
    read -r -a paths <<< "${EXTRA_TEACHERS:-}"
    read -r -a archs <<< "${EXTRA_TEACHER_ARCHS:-}"
    [ "${#paths[@]}" = "${#archs[@]}" ] || die "EXTRA_TEACHERS has ${#paths[@]} path(s) but EXTRA_TEACHER_ARCHS" \
        "${#archs[@]} architecture(s): give one architecture per path, in the same order"
    for ((i = 0; i < ${#paths[@]}; i++)); do
        if [ ! -f "${paths[$i]}" ]; then
            missing+=("${paths[$i]}")
            if [ "${DRY_RUN:-0}" = 1 ]; then
                echo "note: ${paths[$i]} must hold pretrained ${archs[$i]} weights (EXTRA_TEACHERS; torchvision's ImageNet file, local path)" >&2
            fi
        fi
    done
    if [ "${#missing[@]}" -gt 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
        die "EXTRA_TEACHERS: ${missing[*]}: not found; each must hold the pretrained weights of its" \
            "EXTRA_TEACHER_ARCHS architecture (${EXTRA_TEACHER_ARCHS}), e.g. torchvision's ImageNet file"
    fi
}

stage_synthesize() {
    local init=() early_late=() options=() teachers=("${TEACHER}") archs=("${ARCH}") extra=()
    read -r -a options <<< "${RECOVER_FLAGS:-}"  # a method's recover options (FADRM: --stage-sizes ...)
    read -r -a extra <<< "${EXTRA_TEACHERS:-}"   # FADRM+: the other teachers, in turn after TEACHER
    if [ "${#extra[@]}" -gt 0 ]; then
        teachers+=("${extra[@]}")
        read -r -a extra <<< "${EXTRA_TEACHER_ARCHS:-}"
        archs+=("${extra[@]}")
    fi
    if [ -n "${CLASS_STATS:-}" ]; then options+=(--class-stats "${CLASS_STATS}"); fi
    if [ -n "${INIT_PATH:-}" ]; then
        init=(--init-data-path "${INIT_PATH}")
    else
        init=(--init noise --train-data-path "${DATA_ROOT}/train")
    fi
    # EarlyLate needs rounds; IPC 1 uses none (DELT's scripts drop the flag there)
    if [ "${IPC}" -gt 1 ] && [ -n "${ROUND_ITR:-}" ]; then
        early_late=(--use-early-late --round-iterations "${ROUND_ITR}")
    fi
    launch recover "${init[@]}" --syn-data-path "${SYN_PATH}" --exp-name "${EXP_NAME}" \
        --arch-name "${archs[@]}" --arch-path "${teachers[@]}" --dataset "${DATASET}" --input-size "${INPUT_SIZE}" \
        --ipc "${IPC}" --iteration "${ITR}" "${early_late[@]}" --batch-size "${BATCH}" --lr "${LR}" \
        --r-bn "${R_BN}" --jitter "${JITTER}" --easy2hard-mode "${EASY2HARD}" --milestone "${MILESTONE}" \
        --device "${DEVICE}" ${options[@]+"${options[@]}"}
}

# RDED: real patches scored by the teacher (the observer), stitched factor x factor (no optimisation)
stage_patches() {
    launch rank_select.patches --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" \
        --observer-path "${TEACHER}" --observer-arch "${ARCH}" --output-path "${SYN_PATH}" --ipc "${IPC}" \
        --mipc "${MIPC}" --num-crop "${NUM_CROP}" --factor "${FACTOR}" --input-size "${INPUT_SIZE}" \
        --device "${DEVICE}"
    wait_for "${SYN_PATH}/manifest.json"
}

# ---- PAD (scripts/<dataset>/pad_*.sh): difficulty -> experts -> trajectory matching ----

stage_difficulty() {
    launch rank_select.difficulty --dataset "${DATASET}" --data-path "${DATA_ROOT}/train" --arch "${ARCH}" \
        --input-size "${INPUT_SIZE}" --output "${DIFFICULTY}" --device "${DEVICE}"
    wait_for "${DIFFICULTY%.csv}.order.json"
}

stage_experts() {  # under torchrun each process trains its share of the experts
    launch squeeze.trajectories --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch "${ARCH}" \
        --input-size "${INPUT_SIZE}" --num-experts "${NUM_EXPERTS}" --epochs "${EXPERT_TRAIN_EPOCHS}" --zca \
        --difficulty "${DIFFICULTY%.csv}.order.json" --output-dir "${EXPERTS}" --device "${DEVICE}"
}

stage_match() {
    local flags=()
    read -r -a flags <<< "${MATCH_FLAGS}"
    launch recover.trajectory_matching --experts "${EXPERTS}" --data-path "${DATA_ROOT}/train" \
        --ipc "${IPC}" --iterations "${ITR}" --lr-img "${LR_IMG}" "${flags[@]}" \
        --output-path "${SYN_PATH}/${EXP_NAME}" --device "${DEVICE}"
    wait_for "${SYN_PATH}/${EXP_NAME}/manifest.json"
}

# ---- SC-DD (scripts/<dataset>/scdd_*.sh): self-supervised recovery teacher, supervised relabel teacher ----

stage_scdd_squeeze() {
    if [ ! -f "${TEACHER}" ]; then
        if [ ! -f "${SSL_BACKBONE}" ]; then
            if [ "${TEACHER_EPOCHS}" = 0 ]; then
                echo "note: ${SSL_BACKBONE} must hold a self-supervised ${ARCH} (released MoCo v2/v3, SwAV or DINO file, local path)" >&2
                [ "${DRY_RUN:-0}" = 1 ] || exit 2
            else
                launch squeeze.ssl --dataset "${DATASET}" --data-path "${DATA_ROOT}" --arch-name "${ARCH}" \
                    --input-size "${INPUT_SIZE}" --epochs "${TEACHER_EPOCHS}" --device "${DEVICE}" \
                    --output "${SSL_BACKBONE}" --resume
            fi
        fi
        launch squeeze.linear_probe --backbone "${SSL_BACKBONE}" --arch-name "${ARCH}" --dataset "${DATASET}" \
            --data-path "${DATA_ROOT}" --input-size "${INPUT_SIZE}" --device "${DEVICE}" --output "${TEACHER}"
        wait_for "${TEACHER}"
    fi
    train_teacher "${RELABEL_TEACHER}" "${RELABEL_ARCH}"
    launch squeeze.evaluate --arch-path "${TEACHER}" --arch-name "${ARCH}" --data-path "${DATA_ROOT}" \
        --input-size "${INPUT_SIZE}" --device "${DEVICE}"
    launch squeeze.evaluate --arch-path "${RELABEL_TEACHER}" --arch-name "${RELABEL_ARCH}" \
        --data-path "${DATA_ROOT}" --input-size "${INPUT_SIZE}" --device "${DEVICE}"
}

# ---- evaluation: fresh students on the set with the teacher's soft labels, results in EVAL_PATH ----

stage_validate() {
    local seed outputs=() aug=() teacher=() recipe=() extra=() set="${SET%/}" parallel=${SEED_PARALLEL}
    case "${METHOD}" in
        rded) aug=(--protocol rded --factor "${FACTOR}" --max-scale-crops 1.0) ;;
        pad) aug=(--protocol pad --zca "${EXPERTS}/zca.pt") ;;
        *) aug=(--protocol delt)
           if [ -n "${RAND_AUG:-}" ]; then aug+=(--use-rand-augment --rand-augment-config "${RAND_AUG}"); fi
           aug+=(--min-scale-crops "${MIN_SCALE}" --max-scale-crops 1.0) ;;
    esac
    # the soft-label teacher: SC-DD relabels with a supervised teacher; PAD has none (learned labels);
    # EVAL_TEACHERS=all (FADRM+): TEACHER and EXTRA_TEACHERS, their logits averaged, one --arch-name each
    local tpaths=() tarchs=("${RELABEL_ARCH:-${ARCH}}") tpath=${RELABEL_TEACHER:-${TEACHER:-}}
    if [ -n "${tpath}" ]; then tpaths=("${tpath}"); fi
    case "${EVAL_TEACHERS:-}" in
        "") ;;
        all) read -r -a extra <<< "${EXTRA_TEACHERS:-}"
             [ "${#extra[@]}" -gt 0 ] && [ -n "${tpath}" ] \
                 || die "EVAL_TEACHERS=all: needs TEACHER and EXTRA_TEACHERS (the teachers averaged for the labels)"
             tpaths+=("${extra[@]}")
             read -r -a extra <<< "${EXTRA_TEACHER_ARCHS:-}"
             tarchs+=(${extra[@]+"${extra[@]}"}) ;;
        *) die "EVAL_TEACHERS=${EVAL_TEACHERS}: give all (TEACHER and EXTRA_TEACHERS) or leave it empty (TEACHER)" ;;
    esac
    if [ "${#tpaths[@]}" -gt 0 ]; then teacher=(--teacher-path "${tpaths[@]}"); fi
    # the method's own recipe (EVAL_FLAGS, e.g. FADRM's relabel), after the protocol's flags
    read -r -a recipe <<< "${EVAL_FLAGS:-}"
    # train-mode teachers normalise over the images of each batch: under DDP every process would see only
    # its share of a batch, so each process trains whole seeds instead (the recipe's batches unchanged)
    if [[ " ${EVAL_FLAGS:-} " == *" --teacher-mode train "* ]] && [ "${WORLD}" -gt 1 ] && [ "${parallel}" = ddp ]; then
        echo "note: EVAL_FLAGS has --teacher-mode train (BN statistics of each batch): every process needs whole" \
            "batches, so the seeds run as SEED_PARALLEL=ranks" >&2
        parallel=ranks
    fi
    local common=(--syn-data-path "${set}" --val-dir "${DATA_ROOT}/val" "${teacher[@]}" --arch-name "${tarchs[@]}"
                  --stud-name "${STUDENT}" --dataset "${DATASET}" --input-size "${INPUT_SIZE}" --ipc "${IPC}"
                  --re-epochs "${RE_EPOCHS}" --eval-every "${EVAL_EVERY:-10}" "${aug[@]}" --device "${DEVICE}"
                  ${recipe[@]+"${recipe[@]}"})
    # PAD's loop (relabel_eval.pad_protocol) trains in one process: no torchrun, no idle GPUs
    local one=0
    if [ "${METHOD}" = pad ]; then one=1; fi
    if [ "${parallel}" = ranks ]; then  # one command: each process trains whole seeds
        # shellcheck disable=SC2086
        ONE_PROCESS=${one} launch relabel_eval "${common[@]}" --seeds ${SEEDS} --seed-parallel ranks \
            --output "${EVAL_PATH}/eval_${STUDENT}_seeds.json"
        outputs+=("${EVAL_PATH}/eval_${STUDENT}_seeds.json")
    else  # each seed trained by every process (DDP; the batch stays global)
        for seed in ${SEEDS}; do
            ONE_PROCESS=${one} launch relabel_eval "${common[@]}" --seed "${seed}" --output "${EVAL_PATH}/eval_${STUDENT}_seed${seed}.json"
            outputs+=("${EVAL_PATH}/eval_${STUDENT}_seed${seed}.json")
        done
    fi
    if [ "${NODE_RANK}" = 0 ]; then run python scripts/summarize.py --published "${PUBLISHED}" "${outputs[@]}"; fi
}

run_pipeline() {
    setup_device
    METHOD=${METHOD:-delt}
    # the extra teachers must exist before the stages that use them: recover's, and the labels' with EVAL_TEACHERS=all
    if [[ " ${STAGES} " == *" synthesize "* ]] \
        || { [[ " ${STAGES} " == *" validate "* ]] && [ "${EVAL_TEACHERS:-}" = all ]; }; then
        check_extra_teachers
    fi
    echo "== ${METHOD} ${DATASET} ${ARCH} IPC ${IPC}: stages ${STAGES}" >&2
    local s
    for s in ${STAGES}; do
        case "${s}" in
            squeeze) if [ "${METHOD}" = scdd ]; then stage_scdd_squeeze; else stage_squeeze; fi ;;
            select) stage_select ;;
            classstats) stage_class_stats ;;
            synthesize) stage_synthesize ;;
            patches) stage_patches ;;
            difficulty) stage_difficulty ;;
            experts) stage_experts ;;
            match) stage_match ;;
            validate) stage_validate ;;
            *) die "STAGES: unknown stage '${s}' (squeeze classstats select synthesize patches difficulty experts match validate)" ;;
        esac
    done
}
