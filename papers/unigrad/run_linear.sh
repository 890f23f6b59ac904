#!/usr/bin/env bash
# Usage: ./run_linear.sh {PRETRAINED_CKPT} {DATA_PATH} {NUM_GPUS} [extra lineval.py flags]
# Linear evaluation with LARS, one process per GPU (on a CPU machine: NUM_GPUS gloo processes).
set -e
PRETRAINED=$1
DATA=$2
GPUS=$3
if [ -z "$PRETRAINED" ] || [ -z "$DATA" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 PRETRAINED_CKPT DATA_PATH NUM_GPUS [flags]" >&2
    exit 2
fi
PORT=${PORT:-28500}
PY=${PYTHON:-python}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY -m torch.distributed.launch --nproc_per_node=$GPUS --master_port=$PORT \
    --use_env "$(dirname "$0")/lineval.py" --pretrained $PRETRAINED --data $DATA --lars "${@:4}"
