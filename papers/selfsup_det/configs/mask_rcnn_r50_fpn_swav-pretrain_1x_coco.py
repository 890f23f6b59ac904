# Mask R-CNN R50-FPN, backbone pre-trained by SwAV, 1x schedule (mmdet configs/selfsup_pretrain).
_base_ = [
    "_base_/mask_rcnn_r50_fpn.py", "_base_/coco_instance.py", "_base_/schedule_1x.py", "_base_/default_runtime.py",
    "_base_/selfsup_backbone.py",
]
pretrained = "./swav_800ep_pretrain.pth.tar"
# seed's results table (COCO val2017, 8 GPUs x 2 images), for reference only
reference = dict(box_ap=39.1, mask_ap=35.7, source="mmdet configs/selfsup_pretrain/README.md")
