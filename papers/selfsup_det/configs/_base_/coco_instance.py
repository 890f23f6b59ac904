# mmdet configs/_base_/datasets/coco_instance.py (spec §2.3): 2 images per GPU, RandomFlip 0.5,
# filter_empty_gt=True, min_size=32, bbox + segm evaluation every epoch.
data = dict(
    root="data/coco/",
    train=dict(ann_file="annotations/instances_train2017.json", img_dir="train2017/"),
    val=dict(ann_file="annotations/instances_val2017.json", img_dir="val2017/"),
    samples_per_gpu=2,
    workers_per_gpu=2,
    flip_prob=0.5,
    filter_empty_gt=True,
    min_size=32,
)
evaluation = dict(interval=1, metric=["bbox", "segm"])
