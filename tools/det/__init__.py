"""Detection fine-tuning of self-supervised backbones: torchvision Mask R-CNN R50-FPN trained with the
mmdetection ``selfsup_pretrain`` recipe (papers/selfsup_det, spec §2), COCO-format data and pycocotools AP."""
