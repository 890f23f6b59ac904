# Barlow Twins gradient form with momentum encoder (YAML content; the .py extension is the original's).
seed: 42
launcher: pytorch
port: 28500

# dataset
train_datadir: '/path/to/imagenet/train/data'
test_datadir: '/path/to/imagenet/val/data'
n_workers: 5

# model
arch: 'resnet50'
projector_input_dim: 2048
projector_hidden_dim: 2048
projector_output_dim: 2048
num_layers: 3
base_momentum: 0.996
resume_path:

# optimization
base_lr: 0.05
whole_batch_size: 1024
momentum: 0.9
weight_decay: 1.0e-4
epochs: 100
warmup_epochs: 5

# loss
loss: 'loss_barlow_twins_grad_mm'
lambd: 50 # balance factor for neg grad
rho: # for byol & unigrad only
eps: # for byol & unigrad only
moco_t: # for simclr

# log
print_freq: 50
test_freq: 10
save_freq: 10
knn_k: 200
knn_t: 0.1
knn_eval: False
