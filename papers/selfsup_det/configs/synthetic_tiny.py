# CPU-sized run of the selfsup recipe on the built-in synthetic COCO set (tools/det/synthetic_coco.py):
# resnet_tiny trunk, 96 px images, narrow heads, short schedule. Same code path as the R50 configs.
_base_ = ["mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py"]
pretrained = None
model = dict(backbone="resnet_tiny", fpn_channels=64, box_fc_dim=256, mask_conv_dim=64,
             anchor_sizes=(16, 32, 64, 128, 256), min_size=96, max_size=160)
data = dict(root="synthetic", synthetic=dict(num_train=64, num_val=16, image_size=96, seed=0, max_objects=3),
            samples_per_gpu=2, workers_per_gpu=0)
optimizer = dict(lr=0.02, base_batch_size=4)
lr_config = dict(warmup_iters=20, step=[8, 11])
runner = dict(max_epochs=12)
log_interval = 8
reference = dict(_delete_=True)
