#!/usr/bin/env bash
# Chain all stages for one paper setting:  bash scripts/reproduce.sh DATASET ARCH IPC [METHOD]
# e.g. bash scripts/reproduce.sh tinyimagenet resnet18_modified 50 cda   (METHOD: delt, the default, or any
# method of scripts/settings.csv: python scripts/generate.py --methods lists them)
# Variables (DATA_ROOT, TEACHER, GPU="0,1,2,3" for torchrun, SEEDS, SEED_PARALLEL, EVAL_PATH, DRY_RUN=1, ...)
# pass through the environment to scripts/<DATASET>/[<METHOD>_]<ARCH>_ipc<IPC>.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
methods=$(python scripts/generate.py --methods)
if [ $# -ne 3 ] && [ $# -ne 4 ]; then
    echo "usage: bash scripts/reproduce.sh DATASET ARCH IPC [METHOD]   (METHOD: ${methods// /, }; settings: scripts/settings.csv)" >&2
    exit 2
fi
method=${4:-delt}
if [[ " ${methods} " != *" ${method} "* ]]; then
    echo "error: METHOD ${method}: not in scripts/settings.csv; give one of: ${methods// /, }" >&2
    exit 2
fi
prefix=""
[ "${method}" = delt ] || prefix="${method}_"
script="scripts/$1/${prefix}$2_ipc$3.sh"
if [ ! -f "$script" ]; then
    echo "error: no published setting $1 $2 IPC $3 ${method}; available (dataset method arch IPC):" >&2
    python - >&2 <<'PY'
import csv
for r in csv.DictReader(open("scripts/settings.csv")):
    print(f"  {r['dataset']} {r.get('method') or 'delt'} {r['arch']} {r['ipc']}")
PY
    exit 2
fi
exec bash "$script"  # each script's STAGES default runs its whole pipeline
