# Mask R-CNN R50-FPN, backbone pre-trained by MoCo v2, 1x schedule (mmdet configs/selfsup_pretrain).
_base_ = [
    "_base_/mask_rcnn_r50_fpn.py", "_base_/coco_instance.py", "_base_/schedule_1x.py", "_base_/default_runtime.py",
    "_base_/selfsup_backbone.py",
]
pretrained = "./mocov2_r50_800ep_pretrain.pth"
# seed's results table (COCO val2017, 8 GPUs x 2 images), for reference only
reference = dict(box_ap=38.0, mask_ap=34.3, source="mmdet configs/selfsup_pretrain/README.md")
