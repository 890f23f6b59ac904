# mmdet configs/_base_/schedules/schedule_1x.py: SGD lr 0.02 (8 GPUs x 2 images), momentum 0.9, wd 1e-4,
# no grad clip; linear warm-up 500 iterations from 0.001x; x0.1 at epochs 8 and 11; 12 epochs.
optimizer = dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001, base_batch_size=16, auto_scale_lr=True)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001, step=[8, 11], gamma=0.1)
runner = dict(type="EpochBasedRunner", max_epochs=12)
