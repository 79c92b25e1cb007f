#!/usr/bin/env bash
# Chain all stages for one paper setting:  bash scripts/reproduce.sh DATASET ARCH IPC [METHOD]
# e.g. bash scripts/reproduce.sh tinyimagenet resnet18_modified 50       (METHOD: delt, the default, or rded)
# Variables (DATA_ROOT, TEACHER, GPU="0,1,2,3" for torchrun, SEEDS, DRY_RUN=1, ...) pass through
# the environment to scripts/<DATASET>/<ARCH>_ipc<IPC>.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 3 ] && [ $# -ne 4 ]; then
    echo "usage: bash scripts/reproduce.sh DATASET ARCH IPC [METHOD]   (settings: scripts/settings.csv)" >&2
    exit 2
fi
prefix=""
[ "${4:-delt}" = delt ] || prefix="$4_"
script="scripts/$1/${prefix}$2_ipc$3.sh"
if [ ! -f "$script" ]; then
    echo "error: no published setting $1 $2 IPC $3 ${4:-delt}; available:" >&2
    ls scripts/*/*_ipc*.sh | sed 's#scripts/##; s#/# #; s#_ipc# IPC #; s#\.sh##' >&2
    exit 2
fi
exec bash "$script"  # each script's STAGES default runs its whole pipeline
