#!/bin/sh
# solo-learn simsiam baseline (learned predictor): sh bash_files/pretrain/cifar/simsiam.sh DATASET
# Environment overrides (for quick runs; the positional arguments stay as printed):
#   PYTHON (python3), DATA_DIR (dataset root, or "synthetic"), DEVICES (device list), EXTRA_ARGS (appended
#   to the python command, e.g. "--max_epochs 1 --backbone resnet_tiny --batch_size 8 --max_steps_per_epoch 2").
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
${PYTHON:-python3} "$ROOT/main_pretrain.py" \
    --dataset $1 \
    --backbone resnet18 \
    --data_dir ${DATA_DIR:-./datasets} \
    --max_epochs 1000 \
    --devices ${DEVICES:-0} \
    --accelerator gpu \
    --precision 16 \
    --optimizer sgd \
    --scheduler warmup_cosine \
    --lr 0.5 \
    --classifier_lr 0.1 \
    --weight_decay 1e-5 \
    --batch_size 256 \
    --num_workers 4 \
    --crop_size 32 \
    --brightness 0.4 \
    --contrast 0.4 \
    --saturation 0.4 \
    --hue 0.1 \
    --gaussian_prob 0.0 0.0 \
    --crop_size 32 \
    --num_crops_per_aug 1 1 \
    --zero_init_residual \
    --name simsiam-$1 \
    --project solo-learn \
    --entity unitn-mhug \
    --wandb \
    --save_checkpoint \
    --auto_resume \
    --method simsiam \
    --proj_hidden_dim 2048 \
    --proj_output_dim 2048 \
    --pred_hidden_dim 512 \
    $EXTRA_ARGS
