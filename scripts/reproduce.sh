#!/usr/bin/env bash
# Chain all stages for one paper setting:  bash scripts/reproduce.sh DATASET ARCH IPC
# e.g. bash scripts/reproduce.sh tinyimagenet resnet18_modified 50
# Variables (DATA_ROOT, TEACHER, GPU="0,1,2,3" for torchrun, SEEDS, DRY_RUN=1, ...) pass through
# the environment to scripts/<DATASET>/<ARCH>_ipc<IPC>.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 3 ]; then
    echo "usage: bash scripts/reproduce.sh DATASET ARCH IPC   (settings: scripts/settings.csv)" >&2
    exit 2
fi
script="scripts/$1/$2_ipc$3.sh"
if [ ! -f "$script" ]; then
    echo "error: no published setting $1 $2 IPC $3; available:" >&2
    ls scripts/*/*_ipc*.sh | sed 's#scripts/##; s#/# #; s#_ipc# IPC #; s#\.sh##' >&2
    exit 2
fi
STAGES=${STAGES:-"squeeze select synthesize validate"} exec bash "$script"
