#!/usr/bin/env bash
# Soft labels on a disk: storage against accuracy on tinyimagenet-10 at 32x32, conv3, IPC 10 and 50.
# One DELT set per IPC (medium init, EarlyLate), then the same student protocol (DELT's: CutMix + KD at
# T=20, AdamW, cosine) with the labels made or stored in different ways:
#   online KD (the teacher on every batch; nothing stored)   | stored labels, every record (FKD)
#   stored, kept fraction 1/10 and 1/40 (LPLD)               | stored top-k logits, k = 3 and 1 (LPQLD)
#   stored top-3 (and 1/40 + top-3) trained with LPQLD's temperatures (teacher T schedule, calibrated student T)
#   online KD from the teacher in train mode (BN on groups of 8, FADRM/CV-DD)
#   online KD from two teachers averaged (EDC/CV-DD)          | --protocol edc (MSE + 0.025 CE, lr over 2x, EMA)
# Final top-1 mean +- std over 3 student seeds, label MB as stored here, and the ImageNet-1K projection of
# the same storage choice (1000 classes, DELT's batch table, 300 epochs). Writes results/label_table.md
# (+ .csv). Every step is skipped when its output exists, so the same command resumes.
#   bash bench/label_table.sh
#   RE_EPOCHS=20 IPCS=10 bash bench/label_table.sh     # shorter
# RE_EPOCHS_<IPC> (e.g. RE_EPOCHS_50=20) sets one IPC's student epochs (default RE_EPOCHS).
# TEACHER / TEACHER2: existing conv3 checkpoints to reuse (else trained here, seeds 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/tinyimagenet-10}
OUT=${OUT:-runs/label_table}
TEACHER=${TEACHER:-$OUT/teacher_conv3_s0.pth}
TEACHER2=${TEACHER2:-$OUT/teacher_conv3_s1.pth}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-15}
IPCS=${IPCS:-"10 50"}
SEEDS=${SEEDS:-"3407 4663 2897"}
ITR=${ITR:-200}
ROUND_ITR=${ROUND_ITR:-40}
RE_EPOCHS=${RE_EPOCHS:-40}
BN_GROUP=${BN_GROUP:-8}
GPU=${GPU:-cpu}
TABLE=${TABLE:-results/label_table.md}

source scripts/lib.sh
setup_device
for T in "$TEACHER:0" "$TEACHER2:1"; do
    IFS=: read -r path seed <<< "$T"
    [ -f "$path" ] || run python -m squeeze --dataset custom --data-path "$DATA" --arch-name conv3 --input-size 32 \
        --epochs "$TEACHER_EPOCHS" --lr 0.05 --batch-size 64 --seed "$seed" --device "$DEVICE" --output "$path"
done

names=("online KD" "stored, all records" "stored, keep 1/10" "stored, keep 1/40" "stored, top-3" "stored, top-1"
       "stored, top-3, LPQLD temperatures" "stored, keep 1/40 + top-3, LPQLD temperatures"
       "online KD, teacher in train mode" "online KD, two teachers" "--protocol edc (online)")
exps=(online full keep10 keep40 top3 top1 top3lpqld keep40top3lpqld trainmode ensemble edc)
labels_full=()
labels_keep10=(--label-keep 0.1)
labels_keep40=(--label-keep 0.025)
labels_top3=(--topk 3)
labels_top1=(--topk 1)
labels_top3lpqld=(--topk 3)
labels_keep40top3lpqld=(--label-keep 0.025 --topk 3)
train_top3lpqld=(--label-temperature-schedule lpqld)   # LPQLD: teacher T schedule + calibrated student T
train_keep40top3lpqld=(--label-temperature-schedule lpqld)
online_online=(--teacher-path "$TEACHER")
online_trainmode=(--teacher-path "$TEACHER" --teacher-mode train --teacher-bn-group "$BN_GROUP")
online_ensemble=(--teacher-path "$TEACHER" "$TEACHER2")
online_edc=(--teacher-path "$TEACHER" --protocol edc)
rows=()
epochs_note=""
for IPC in $IPCS; do
    D=$OUT/ipc$IPC
    v=RE_EPOCHS_$IPC
    EP=${!v:-$RE_EPOCHS}
    epochs_note+="${epochs_note:+, }IPC $IPC: $EP epochs"
    ev=(--val-dir "$DATA/val" --stud-name conv3 --dataset custom --input-size 32 --re-epochs "$EP" --seeds $SEEDS
        --device "$DEVICE")
    [ -f "$D/medium/manifest.json" ] || run python -m rank_select --dataset custom --data-path "$DATA/train" \
        --ranker-path "$TEACHER" --ranking-file "$OUT/ranking.csv" --output-path "$D/medium" --ipc "$IPC" \
        --selection-criteria medium --device "$DEVICE"
    [ -f "$D/delt/manifest.json" ] && grep -q '"status": "complete"' "$D/delt/manifest.json" || \
        run python -m recover --exp-name delt --init real --init-data-path "$D/medium" --syn-data-path "$D" \
            --arch-path "$TEACHER" --dataset custom --input-size 32 --ipc "$IPC" --iteration "$ITR" --use-early-late \
            --round-iterations "$ROUND_ITR" --easy2hard-mode cosine --milestone 1 --batch-size 100 --lr 0.25 \
            --r-bn 0.01 --jitter 4 --seed 0 --device "$DEVICE"
    for i in "${!exps[@]}"; do
        e=${exps[$i]}
        E=$D/eval_${e}_e$EP.json
        if declare -p "labels_$e" > /dev/null 2>&1; then
            declare -n lab="labels_$e"
            L=$D/labels_${e}_e$EP
            [ -f "$L/manifest.json" ] || run python -m relabel_eval.relabel --syn-data-path "$D/delt" \
                --teacher-path "$TEACHER" --dataset custom --input-size 32 --epochs "$EP" --seed 0 \
                --device "$DEVICE" --output-dir "$L" "${lab[@]}"
            train=()
            if declare -p "train_$e" > /dev/null 2>&1; then declare -n tr="train_$e"; train=("${tr[@]}"); fi
            [ -f "$E" ] || run python -m relabel_eval --syn-data-path "$D/delt" --label-mode fkd --soft-label-dir "$L" \
                "${train[@]}" "${ev[@]}" --output "$E"
            rows+=("${names[$i]}|$IPC|$E|$L")
        else
            declare -n onl="online_$e"
            [ -f "$E" ] || run python -m relabel_eval --syn-data-path "$D/delt" --label-mode soft "${onl[@]}" \
                "${ev[@]}" --output "$E"
            rows+=("${names[$i]}|$IPC|$E|")
        fi
    done
done
[ "${DRY_RUN:-0}" = 1 ] && exit 0

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
TITLE="Soft-label storage and recipe on tinyimagenet-10 at 32x32 (10 classes), conv3 teacher ($TEACHER_EPOCHS epochs, \
seed 0; the second teacher: seed 1) and conv3 student; one DELT set per IPC (medium init, ITR $ITR, round $ROUND_ITR); \
student: DELT's protocol (CutMix, KD at T=20, AdamW, cosine) for $epochs_note (labels stored for as many), final top-1 mean +- std over seeds \
$SEEDS (the EMA weights' top-1 where the recipe has them). Label MB: the stored labels' bytes by the storage formula \
(records x 20 + images x (19 + C x 2, or K x 4 for top-k)); ImageNet-1K GB: the same choice for 1000 classes, DELT's \
batch table and 300 epochs. Hardware: $(nproc --all) CPU cores (${cpu:-unknown CPU}), one thread per process (OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}), shared with other jobs. Produced by \
bench/label_table.sh." python - "$TABLE" "${rows[@]}" <<'PY'
import json, os, statistics, sys
from pathlib import Path
import pandas as pd
sys.path.insert(0, os.getcwd())
from common.run.atomic import atomic_write_text
from relabel_eval.relabel import imagenet_projection

def ms(xs):
    xs = list(xs)
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.2f} +- {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}"

out = []
for spec in sys.argv[2:]:
    name, ipc, ev, lab = spec.split("|")
    res = json.loads(Path(ev).read_text())
    runs = [r for b in res["students"].values() for r in b["runs"]]
    row = {"labels": name, "IPC": int(ipc), "top-1 (final)": ms(r["final_top1"] for r in runs),
           "EMA top-1 (final)": ms(r["final_ema_top1"] for r in runs if "final_ema_top1" in r),
           "best during training": ms(r["best_top1"] for r in runs), "seeds": len(runs)}
    if lab:
        m = json.loads((Path(lab) / "manifest.json").read_text())
        keep, topk = float(m["label_keep"]), int(m["topk"] or 0)
        row.update({"records kept": f"{m['records']} / {m['records_total']}", "label MB": f"{m['label_bytes'] / 1e6:.3f}",
                    "on disk MB": f"{m['storage_bytes'] / 1e6:.3f}"})
        for ipc_p in (10, 50):
            row[f"ImageNet-1K IPC {ipc_p} GB"] = f"{imagenet_projection(ipc_p, 300, keep, topk)['gb']:.2f}"
    else:
        row.update({"records kept": "online", "label MB": "0", "on disk MB": "0"})
        for ipc_p in (10, 50):
            row[f"ImageNet-1K IPC {ipc_p} GB"] = "0 (teacher every batch)"
    out.append(row)
df = pd.DataFrame(out)
cols = list(df.columns)
lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
md = os.environ["TITLE"] + "\n\n" + "\n".join(lines) + "\n"
atomic_write_text(sys.argv[1], md)
df.to_csv(Path(sys.argv[1]).with_suffix(".csv"), index=False)
print(md)
PY
