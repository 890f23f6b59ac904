"""torchvision Mask R-CNN R50-FPN configured like mmdet's ``mask_rcnn_r50_fpn`` + the selfsup overrides.

* backbone: torchvision ``resnet50(weights=None)`` with ``BatchNorm2d`` (never ImageNet weights: the backbone
  comes from a converted self-supervised checkpoint), or ``resnet_tiny`` (core, 4 BasicBlock stages 16-128,
  standard 7x7 stem) for CPU tests; FPN over layer1-4 (256 channels, LastLevelMaxPool -> 5 levels);
* ``frozen_stages`` with mmdet semantics (spec §2.3): ``>= 0`` freezes the stem (conv1 + bn1, BN in eval mode),
  ``k >= 1`` also layer1..k; ``-1`` freezes nothing. The seed's configs use 0: layer1-4 train, stem frozen;
* ``norm_eval``: True keeps every backbone BN in eval mode; the selfsup configs use False (BN trains);
* ``norm``: ``SyncBN`` (the seed's): the backbone BNs synchronise over ranks (``core.engine.setup_run``; the
  body holds the only BN layers of the detector); ``BN``: per-process BN; ``GN``: GroupNorm (``norm_groups``);
* heads and test settings as mmdet's base model: anchors 32-512 (scale 8 x strides 4-64), ratios 0.5/1/2,
  RPN NMS 0.7 with 2000/1000 pre/post-NMS boxes in training and 1000/1000 at test, 512 RoIs at 25% positives,
  2x1024-fc box head, 4-conv mask head, score threshold 0.05, NMS 0.5, 100 detections, mask threshold 0.5;
* initialisation of the box head and FPN as mmdet's ``init_cfg`` (:func:`init_as_mmdet`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from core.errors import UserError
from tools.checkpoint_convert import extract_backbone, load_file

BODIES = ("resnet50", "resnet18", "resnet_tiny")


def build_body(name: str) -> nn.Module:
    """The ResNet trunk (torchvision names, random init, no download)."""
    if name in ("resnet50", "resnet18"):
        return getattr(torchvision.models, name)(weights=None, norm_layer=nn.BatchNorm2d)
    if name == "resnet_tiny":
        from core.backbones import resnet_tiny

        return resnet_tiny(cifar_stem=False)
    raise UserError(f"unknown detection backbone '{name}' (choose one of {', '.join(BODIES)})")


def apply_norm(body: nn.Module, norm: str = "BN", groups: int = 32) -> nn.Module:
    """mmdet ``norm_cfg.type`` of the backbone. ``BN`` / ``SyncBN``: the trunk's ``BatchNorm2d`` (SyncBN is
    converted by ``core.engine.setup_run`` when several processes run; one process keeps BN, as mmengine
    reverts SyncBN there). ``GN``: every ``BatchNorm2d`` becomes ``GroupNorm(groups, C)`` with weight 1, bias 0
    (mmcv's norm init)."""
    if norm in ("BN", "SyncBN"):
        return body
    if norm != "GN":
        raise UserError(f"config model.norm={norm!r} is not supported (choose BN, SyncBN, GN)")

    def swap(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            if isinstance(child, nn.BatchNorm2d):
                c = child.num_features
                if c % groups:
                    raise UserError(f"config model.norm_groups={groups} does not divide the {c} channels of "
                                    f"the backbone's {name}")
                setattr(mod, name, nn.GroupNorm(groups, c, eps=child.eps))
            else:
                swap(child)

    swap(body)
    return body


def _stage_channels(body: nn.Module):
    out = []
    for i in (1, 2, 3, 4):
        last = list(getattr(body, f"layer{i}").children())[-1]
        conv = getattr(last, "conv3", None) or last.conv2
        out.append(conv.out_channels)
    return out


class FP32AnchorGenerator(AnchorGenerator):
    """torchvision's generator builds anchors in the feature dtype: under bf16 autocast the anchors of an
    800 x 1216 input are off by up to 7 px. This one always builds them in float32 (only the features' shapes
    and device are read, through zero-size stand-ins)."""

    def forward(self, image_list, feature_maps):
        stand_ins = [torch.empty((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, stand_ins)


class FP32BoxCoder(BoxCoder):
    """torchvision decodes boxes in the regression dtype (bf16 under autocast: boxes off by up to 11 px at
    800 x 1216); box encoding and decoding here run in float32 whatever the autocast dtype."""

    def decode(self, rel_codes, boxes):
        return super().decode(rel_codes.float(), [b.float() for b in boxes])

    def encode(self, reference_boxes, proposals):
        return super().encode([b.float() for b in reference_boxes], [p.float() for p in proposals])


def fp32_box_coding(model: MaskRCNN) -> MaskRCNN:
    """Anchors and box coding of the RPN and the RoI heads in float32 (same weights and clip as before)."""
    ag = model.rpn.anchor_generator
    model.rpn.anchor_generator = FP32AnchorGenerator(ag.sizes, ag.aspect_ratios)
    for owner in (model.rpn, model.roi_heads):
        bc = owner.box_coder
        owner.box_coder = FP32BoxCoder(bc.weights, bc.bbox_xform_clip)
    return model


class SelfSupMaskRCNN(MaskRCNN):
    """MaskRCNN whose ``train()`` re-applies ``frozen_stages`` / ``norm_eval`` (like mmdet's ResNet.train),
    and whose ``forward`` also accepts the engine's batch dict, returning ``(loss, logs)``."""

    def __init__(self, backbone, num_classes, frozen_stages: int = 0, norm_eval: bool = False, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    def _frozen_modules(self):
        body = self.backbone.body
        mods = []
        if self.frozen_stages >= 0:
            mods += [body.conv1, body.bn1]
        for i in range(1, self.frozen_stages + 1):
            mods.append(getattr(body, f"layer{i}"))
        return mods

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.backbone.body.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, images, targets=None):
        if isinstance(images, dict):  # engine batch
            losses = super().forward(images["images"], images["targets"])
            loss = sum(losses.values())
            logs = {k: v.detach() for k, v in losses.items()}
            return loss, logs
        return super().forward(images, targets)


def build_mask_rcnn(cfg: Dict[str, Any], num_classes: int) -> SelfSupMaskRCNN:
    """Build the detector from the ``model`` section of a config; ``num_classes`` excludes background."""
    body = apply_norm(build_body(cfg.get("backbone", "resnet50")), cfg.get("norm", "BN"),
                      int(cfg.get("norm_groups", 32)))
    in_channels = _stage_channels(body)
    out_ch = int(cfg.get("fpn_channels", 256))
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               in_channels, out_ch, extra_blocks=LastLevelMaxPool())
    sizes = tuple((s,) for s in cfg.get("anchor_sizes", (32, 64, 128, 256, 512)))
    ratios = (tuple(cfg.get("anchor_ratios", (0.5, 1.0, 2.0))),) * len(sizes)
    sr = int(cfg.get("roi_sampling_ratio", 0))
    box_fc = int(cfg.get("box_fc_dim", 1024))
    mask_dim = int(cfg.get("mask_conv_dim", 256))
    min_size = cfg.get("min_size", 800)
    min_size = tuple(min_size) if isinstance(min_size, (list, tuple)) else int(min_size)
    model = SelfSupMaskRCNN(
        backbone, None,
        frozen_stages=int(cfg.get("frozen_stages", 0)), norm_eval=bool(cfg.get("norm_eval", False)),
        min_size=min_size, max_size=int(cfg.get("max_size", 1333)),
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sr),
        box_head=TwoMLPHead(out_ch * 7 * 7, box_fc),
        box_predictor=_predictor(box_fc, num_classes + 1),
        box_batch_size_per_image=512, box_positive_fraction=0.25,
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, sr),
        mask_head=MaskRCNNHeads(out_ch, [mask_dim] * 4, 1),
        mask_predictor=_mask_predictor(mask_dim, num_classes + 1),
    )
    init_as_mmdet(model)
    return fp32_box_coding(model)


@torch.no_grad()
def init_as_mmdet(model: MaskRCNN) -> None:
    """mmdet 2.x ``init_cfg`` of the parts whose torchvision init differs: ``BBoxHead`` fc_cls ~ N(0, 0.01) and
    fc_reg ~ N(0, 0.001); ``Shared2FCBBoxHead`` shared fcs and every FPN conv Xavier-uniform (gain 1); all of
    their biases 0. (RPN head N(0, 0.01) and the mask head's kaiming fan_out init are already the same.)"""
    pred = model.roi_heads.box_predictor
    nn.init.normal_(pred.cls_score.weight, 0.0, 0.01)
    nn.init.normal_(pred.bbox_pred.weight, 0.0, 0.001)
    layers = [pred.cls_score, pred.bbox_pred]
    fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.backbone.fpn.modules() if isinstance(m, nn.Conv2d)]
    for m in fcs + convs:
        nn.init.xavier_uniform_(m.weight, gain=1.0)
    for m in layers + fcs + convs:
        nn.init.zeros_(m.bias)


def _predictor(dim, classes):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    return FastRCNNPredictor(dim, classes)


def _mask_predictor(dim, classes):
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    return MaskRCNNPredictor(dim, dim, classes)


def load_pretrained(model: SelfSupMaskRCNN, path_or_obj, method: str = None) -> Tuple[str, int]:
    """Load a converted (or raw, any layout of :mod:`tools.checkpoint_convert`) checkpoint into
    ``model.backbone.body``. Every trunk key must be present (``num_batches_tracked`` may be absent, e.g.
    BYOL conversions) and shapes must match; otherwise a one-line UserError. Returns ``(layout, n_loaded)``."""
    obj = load_file(path_or_obj) if isinstance(path_or_obj, str) else path_or_obj
    layout, bb = extract_backbone(obj, method=method)
    body = model.backbone.body
    own = body.state_dict()
    missing = [k for k in own if k not in bb and not k.endswith("num_batches_tracked")]
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body.modules())
    # a GN trunk takes a BN checkpoint's weight/bias; its running statistics are left out, as mmengine's
    # strict=False load reports them as unexpected and skips them
    skip = () if has_bn else ("running_mean", "running_var", "num_batches_tracked")
    unexpected = [k for k in bb if k not in own and not (skip and k.endswith(skip))]
    bad = [k for k in own if k in bb and tuple(bb[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise UserError(f"pretrained backbone ({layout} layout) does not fit the detector's "
                        f"{type(body).__name__}: {len(missing)} missing {missing[:3]}, {len(unexpected)} "
                        f"unexpected {unexpected[:3]}, {len(bad)} with other shapes {bad[:3]}")
    state = OrderedDict((k, bb[k].to(own[k].dtype)) for k in own if k in bb)
    body.load_state_dict(state, strict=False)
    return layout, len(state)
