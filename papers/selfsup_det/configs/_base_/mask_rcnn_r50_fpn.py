# mmdet configs/_base_/models/mask_rcnn_r50_fpn.py as torchvision Mask R-CNN (tools/det/model.py, spec §2.3).
# The base model's frozen_stages=1 / norm BN / norm_eval=True are overridden by every selfsup config.
model = dict(
    backbone="resnet50",       # torchvision names; weights come from `pretrained`, never a download
    frozen_stages=1,
    norm="BN",
    norm_eval=True,
    fpn_channels=256,
    anchor_sizes=(32, 64, 128, 256, 512),   # octave scale 8 x strides 4, 8, 16, 32, 64
    anchor_ratios=(0.5, 1.0, 2.0),
    roi_sampling_ratio=0,
    box_fc_dim=1024,
    mask_conv_dim=256,
    min_size=800,              # Resize(scale=(1333, 800), keep_ratio=True)
    max_size=1333,
)
