#!/bin/sh
# solo-learn byol baseline (learned predictor): sh bash_files/pretrain/imagenet-100/byol.sh
# Environment overrides (for quick runs; the positional arguments stay as printed):
#   PYTHON (python3), DATA_DIR (dataset root, or "synthetic"), DEVICES (device list), EXTRA_ARGS (appended
#   to the python command, e.g. "--max_epochs 1 --backbone resnet_tiny --batch_size 8 --max_steps_per_epoch 2").
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
${PYTHON:-python3} "$ROOT/main_pretrain.py" \
    --dataset imagenet100 \
    --backbone resnet18 \
    --data_dir ${DATA_DIR:-/datasets} \
    --train_dir imagenet-100/train \
    --val_dir imagenet-100/val \
    --max_epochs 400 \
    --devices ${DEVICES:-0,1} \
    --accelerator gpu \
    --strategy ddp \
    --sync_batchnorm \
    --precision 16 \
    --optimizer lars \
    --grad_clip_lars \
    --eta_lars 0.02 \
    --exclude_bias_n_norm \
    --scheduler warmup_cosine \
    --lr 0.5 \
    --classifier_lr 0.1 \
    --weight_decay 1e-5 \
    --batch_size 128 \
    --num_workers 4 \
    --dali \
    --brightness 0.4 \
    --contrast 0.4 \
    --saturation 0.2 \
    --hue 0.1 \
    --gaussian_prob 1.0 0.1 \
    --solarization_prob 0.0 0.2 \
    --num_crops_per_aug 1 1 \
    --name byol-imagenet100 \
    --project solo-learn \
    --entity unitn-mhug \
    --wandb \
    --save_checkpoint \
    --auto_resume \
    --method byol \
    --proj_output_dim 256 \
    --proj_hidden_dim 4096 \
    --base_tau_momentum 0.99 \
    --final_tau_momentum 1.0 \
    --pred_hidden_dim 8192 \
    $EXTRA_ARGS
