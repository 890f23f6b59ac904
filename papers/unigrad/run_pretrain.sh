#!/usr/bin/env bash
# Usage: ./run_pretrain.sh {CONFIG_NAME} {NUM_GPUS} [key=value ...]
# One process per GPU through torch.distributed.launch --use_env (on a CPU machine: NUM_GPUS gloo processes).
set -e
CFG_PATH=$1
GPUS=$2
if [ -z "$CFG_PATH" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 CONFIG_NAME NUM_GPUS [key=value ...]" >&2
    exit 2
fi
PORT=${PORT:-28500}
PY=${PYTHON:-python}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY -m torch.distributed.launch --nproc_per_node=$GPUS --master_port=$PORT \
    --use_env "$(dirname "$0")/pretrain.py" $CFG_PATH "${@:3}"
