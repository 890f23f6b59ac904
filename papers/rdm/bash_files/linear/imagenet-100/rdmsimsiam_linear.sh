#!/bin/sh
# Offline linear evaluation on ImageNet-100 of a rdmsimsiam checkpoint (solo-learn main_linear.py).
# The original hard-codes "--pretrained_feature_extractor PATH": set PRETRAINED=<your .ckpt> (or edit).
# Environment overrides (for quick runs; the positional arguments stay as printed):
#   PYTHON (python3), DATA_DIR (dataset root, or "synthetic"), DEVICES (device list), EXTRA_ARGS (appended
#   to the python command, e.g. "--max_epochs 1 --backbone resnet_tiny --batch_size 8 --max_steps_per_epoch 2").
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
${PYTHON:-python3} "$ROOT/main_linear.py" \
    --dataset imagenet100 \
    --backbone resnet18 \
    --data_dir ${DATA_DIR:-/datasets} \
    --train_dir imagenet-100/train \
    --val_dir imagenet-100/val \
    --max_epochs 100 \
    --devices ${DEVICES:-0} \
    --accelerator gpu \
    --precision 16 \
    --optimizer sgd \
    --scheduler step \
    --lr 30.0 \
    --lr_decay_steps 60 80 \
    --weight_decay 0 \
    --batch_size 256 \
    --num_workers 10 \
    --dali \
    --name rdmsimsiam-imagenet100-linear-eval \
    --pretrained_feature_extractor ${PRETRAINED:-PATH} \
    --project solo-learn \
    --entity unitn-mhug \
    --wandb \
    --save_checkpoint \
    --auto_resume \
    $EXTRA_ARGS
