# Mask R-CNN R50-FPN, backbone pre-trained by SwAV, ms-2x schedule (mmdet configs/selfsup_pretrain).
_base_ = [
    "_base_/mask_rcnn_r50_fpn.py", "_base_/coco_instance.py", "_base_/schedule_2x.py", "_base_/default_runtime.py",
    "_base_/selfsup_backbone.py",
]
pretrained = "./swav_800ep_pretrain.pth.tar"
# multi-scale training: RandomResize(scale=[(1333, 640), (1333, 800)], keep_ratio=True), short side uniform
model = dict(min_size_train_range=(640, 800))
# seed's results table (COCO val2017, 8 GPUs x 2 images), for reference only
reference = dict(box_ap=41.3, mask_ap=37.3, source="mmdet configs/selfsup_pretrain/README.md")
