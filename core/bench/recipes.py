"""The main training recipe of each paper, built from the paper's own classes with its defaults.

Each builder returns a :class:`Recipe`: the model (``model(batch) -> (loss, logs)``, as the engine trains it), the
optimizer the paper's script builds, a synthetic batch maker, the per-step hook the script runs after the
optimizer step (EMA teachers), the clipping of the script, and the networks that run per pair for the FLOP count
(:class:`FlopPart`). ``tiny`` swaps in ``resnet_tiny`` / 32 px and narrow heads (CI); the rest is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from core.augment import MultiView, moco_v1, moco_v2
from core.augment.recipes import local_size
from core.paper_import import load_script, paper_dir, register_package
from core.errors import UserError


@dataclass
class FlopPart:
    """``module`` applied to ``calls`` inputs of shape ``shape`` per pair; ``trained`` networks also run a
    backward pass (counted as 2 x forward)."""
    name: str
    module: nn.Module
    shape: tuple
    calls: int = 1
    trained: bool = True


@dataclass
class Recipe:
    name: str
    what: str
    model: nn.Module
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    make_batch: Callable[[int, torch.device], Any]
    transform: Callable                      # PIL image -> the views of one sample (input pipeline)
    flop_parts: List[FlopPart]
    after_step: Optional[Callable[[], None]] = None
    clip_grad: float = 0.0
    cuda_batch: int = 128                    # default pairs per step on CUDA
    batch_multiple: int = 1                  # the batch must be a multiple of this
    extra: Dict[str, Any] = field(default_factory=dict)


def _views(n: int, sizes, device) -> list:
    return [torch.randn(n, 3, s, s, device=device) for s in sizes]


def two_view_batch(size: int):
    def make(n: int, device):
        return (_views(n, (size, size), device), torch.zeros(n, dtype=torch.long, device=device))
    return make


# ------------------------------------------------------------------------------------------------ UniGrad
UNIGRAD_TINY = ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=64", "projector_output_dim=64"]


def unigrad(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """UniGrad (configs/unigrad.py): R50, 2048-2048-2048 projector, momentum encoder, the EMA correlation F; SGD
    as pretrain.py (lr base_lr * batch / 256, momentum 0.9, wd 1e-4)."""
    register_package("unigrad", "unigrad_lib")
    from unigrad_lib.config import load_config
    from unigrad_lib.model import SiameseNet

    pretrain = load_script("unigrad", "pretrain.py", "bench_unigrad_pretrain", cached=True)
    cfg = load_config(paper_dir("unigrad", "configs", "unigrad.py"), UNIGRAD_TINY if tiny else [])
    model = SiameseNet(cfg)
    online = nn.Sequential(model.encoder, model.projector)
    parts = [FlopPart("encoder+projector", online, (3, size, size), 2)]
    if model.use_mm:
        parts.append(FlopPart("momentum encoder+projector",
                              nn.Sequential(model.momentum_encoder, model.momentum_projector), (3, size, size), 2,
                              trained=False))
    return Recipe("unigrad", "UniGrad R50 2x224, momentum encoder + F", model,
                  pretrain.make_optimizer(cfg, cfg.base_lr * cfg.whole_batch_size / 256), two_view_batch(size),
                  MultiView([moco_v2(size), moco_v2(size)]), parts)


# ------------------------------------------------------------------------------------------------ RDM
def rdm_simsiam(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """RDM SimSiam (seed: main_simsiam.py --fix-pred-lr --pred-type poly --sigma 1 --pred-location target):
    R50 + 3-layer projector, the spectral (SVD) predictor; SGD lr 0.05 * batch / 256, momentum 0.9, wd 1e-4,
    predictor group at a fixed lr."""
    register_package("rdm", "rdm_lib")
    from rdm_lib.models import ImageNetSimSiam

    arch, dim, pred_dim = ("resnet_tiny", 64, 16) if tiny else ("resnet50", 2048, 512)
    model = ImageNetSimSiam(arch, dim, pred_dim, "poly", "target", 1.0, guard=False)

    def make_optimizer(m):
        params = [{"params": m.encoder.parameters(), "fix_lr": False},
                  {"params": m.predictor.parameters(), "fix_lr": True}]
        return torch.optim.SGD(params, 0.05, momentum=0.9, weight_decay=1e-4)

    return Recipe("rdm_simsiam", "RDM SimSiam R50 2x224, SVD predictor (poly, target)", model, make_optimizer,
                  two_view_batch(size), MultiView([moco_v2(size), moco_v2(size)]),
                  [FlopPart("encoder+projector", model.encoder, (3, size, size), 2)])


# ------------------------------------------------------------------------------------------------ MoCo + A/U
def moco_au(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """main_moco.py defaults: MoCo R50, dim 128, queue 65536, m 0.999, loss 3 * align(alpha 2) + unif(t 3),
    MoCo v1 augmentation; SGD lr 0.03, momentum 0.9, wd 1e-4."""
    register_package("align_uniform", "au_lib")
    from au_lib.config import moco_parser, resolve_loss_terms

    main_moco = load_script("align_uniform", "main_moco.py", "bench_au_main_moco", cached=True)
    argv = ["-a", "resnet_tiny", "--moco-k", "256"] if tiny else ["-a", "resnet50"]
    args = moco_parser().parse_args(argv + ["synthetic"])
    resolve_loss_terms(args)
    model = main_moco.build_model(args)
    return Recipe("moco_au", "MoCo R50 + align/uniform, queue 65536", model,
                  lambda m: torch.optim.SGD(m.parameters(), args.lr, momentum=args.momentum,
                                            weight_decay=args.weight_decay),
                  two_view_batch(size), MultiView([moco_v1(size), moco_v1(size)]),
                  [FlopPart("encoder_q", model.encoder_q, (3, size, size), 1),
                   FlopPart("encoder_k", model.encoder_k, (3, size, size), 1, trained=False)],
                  batch_multiple=1, extra={"queue": args.moco_k})


# ------------------------------------------------------------------------------------------------ TWIST
VITS_SEED = ["--backbone", "vit_s", "--batch-size", "64", "--bunch-size", "256", "--clip_norm", "3.0",
             "--lam1", "-0.6", "--lam2", "1.0", "--act", "gelu", "--local_crops_number", "6", "--lr", "0.0003",
             "--momentum_start", "0.996", "--momentum_end", "1.0", "--optim", "admw", "--use_momentum_encoder", "1",
             "--weight_decay", "0.06", "--weight_decay_end", "0.12"]


def _twist(name: str, what: str, argv: List[str], size: int, device_type: str = "cpu") -> Recipe:
    register_package("twist", "twist_lib")
    from twist_lib import builder
    from twist_lib.config import get_args_parser
    from twist_lib.model import TwistMethod, ema_update

    args = builder.finalize_args(get_args_parser().parse_args(argv + ["--img_size", str(size)]), 1)
    model = builder.build_twist(args, device_type)  # SyncBatchNorm on CUDA as train.py (plain BN in 1 process)
    teacher = None
    if args.use_momentum_encoder:
        teacher = builder.build_twist(args, device_type)
        teacher.load_state_dict(model.state_dict())
        for p in teacher.parameters():
            p.requires_grad_(False)
    method = TwistMethod(lam1=args.lam1, lam2=args.lam2, tau=args.tau, eps=args.EPS, mme_epochs=args.mme_epochs,
                         style=args.crops_interact_style, multicrop=args.aug == "multicrop",
                         threshold=args.threshold, teacher=teacher, watch=False)
    model.attach(method)
    niter = 100
    sched = builder.schedules(args, niter)
    lsize = local_size(size)
    n_local = args.local_crops_number
    sizes = [size, size] + [lsize] * n_local

    def make_optimizer(m):
        opt = builder.build_optimizer(m, args)
        builder.set_step(opt, args, sched, niter // 2, niter)  # a mid-warm-up lr and weight decay
        return opt

    def make_batch(n, device):
        return (_views(n, sizes, device), torch.zeros(n, dtype=torch.long, device=device))

    def after_step():
        if teacher is not None:
            ema_update(model, teacher, float(sched["momentum"][niter // 2]))

    parts = [FlopPart("backbone (global)", model.backbone, (3, size, size), 2),
             FlopPart("backbone (local)", model.backbone, (3, lsize, lsize), n_local),
             FlopPart("head", model.projection_heads, (model.backbone.feat_dim,), 2 + n_local)]
    if teacher is not None:
        parts.append(FlopPart("teacher", nn.Sequential(teacher.backbone, teacher.projection_heads),
                              (3, size, size), 2, trained=False))
    return Recipe(name, what, model, make_optimizer, make_batch,
                  builder.train_transform(args.aug, size, n_local, args.global_crops_scale, args.local_crops_scale),
                  parts, after_step=after_step, clip_grad=args.clip_norm if args.amp else 0.0, cuda_batch=64,
                  extra={"teacher": teacher})


def twist_r50(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """TWIST R50 (train.py defaults: LARS, 4096-class head) with 2 x 224 + 6 x 96 crops."""
    tiny_args = ["--backbone", "resnet_tiny", "--dim", "64", "--hid_dim", "64"] if tiny else []
    return _twist("twist_r50", "TWIST R50 2x224 + 6x96 multi-crop", tiny_args + ["--local_crops_number", "6"], size,
                  device_type)


def twist_vits(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """TWIST ViT-S/16, the seed's DeiT-S command (AdamW, EMA teacher, clip 3.0, 2 x 224 + 6 x 96)."""
    argv = list(VITS_SEED)
    if tiny:  # ViT-T/4 on 28 px crops (12 px local crops): both multiples of the patch
        argv[1] = "vit_t"
        argv += ["--dim", "64", "--hid_dim", "64", "--patch-size", "4"]
        size = 28 if size == 32 else size
    return _twist("twist_vits", "TWIST ViT-S/16 2x224 + 6x96, EMA teacher", argv, size, device_type)


# ------------------------------------------------------------------------------------------------ Mask R-CNN
DET_CONFIG = "mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py"


def det_input(img):
    """The detection set's per-image work (``tools/det/data.py``): float tensor in [0, 1], CHW, random flip."""
    import numpy as np

    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def mask_rcnn(tiny: bool, size: int, device_type: str = "cpu") -> Recipe:
    """Mask R-CNN R50-FPN (the MoCo v2 1x config: SGD 0.02 for 16 images, momentum 0.9, wd 1e-4), COCO-sized
    640 x 480 images with 4 boxes + masks each; one 'pair' here is one image."""
    from tools.det.config import grad_clip, load_config, scaled_lr
    from tools.det.model import build_mask_rcnn
    from tools import train_det

    cfg_path = paper_dir("selfsup_det", "configs", "synthetic_tiny.py" if tiny else DET_CONFIG)
    cfg = load_config(cfg_path)
    mcfg = train_det.model_cfg(cfg)
    model = build_mask_rcnn(mcfg, 80)
    h, w = (size, size) if tiny else (480, 640)
    min_size = mcfg.get("min_size", 800)
    min_size = min(min_size) if isinstance(min_size, (list, tuple)) else int(min_size)
    scale = min(min_size / min(h, w), int(mcfg.get("max_size", 1333)) / max(h, w))
    th, tw = (-(-int(round(h * scale)) // 32) * 32, -(-int(round(w * scale)) // 32) * 32)

    def make_batch(n, device):
        g = torch.Generator().manual_seed(0)
        images, targets = [], []
        for i in range(n):
            xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = (0.1 + 0.3 * torch.rand(4, 2, generator=g)) * torch.tensor([w, h])
            boxes = torch.cat([xy, xy + wh], 1)
            masks = torch.zeros(4, h, w, dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[k, y0:y1, x0:x1] = 1
            images.append(torch.rand(3, h, w, generator=g).to(device))
            targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 81, (4,), generator=g).to(device),
                            "masks": masks.to(device), "image_id": i})
        return {"ids": torch.arange(n), "images": images, "targets": targets}

    fpn = int(mcfg.get("fpn_channels", 256))
    rois = 512  # box_batch_size_per_image; masks on the positive quarter at most
    parts = [FlopPart("backbone+FPN", model.backbone, (3, th, tw)),
             FlopPart("box head (512 RoIs)", nn.Sequential(model.roi_heads.box_head, model.roi_heads.box_predictor),
                      (fpn, 7, 7), rois),
             FlopPart("mask head (128 RoIs, an upper bound)", nn.Sequential(model.roi_heads.mask_head,
                                                            model.roi_heads.mask_predictor), (fpn, 14, 14), rois // 4)]
    lr = scaled_lr(float(cfg["optimizer"]["lr"]), 2, int(cfg["optimizer"].get("base_batch_size", 16)))
    return Recipe("mask_rcnn", f"Mask R-CNN R50-FPN {h}x{w} -> {th}x{tw}", model,
                  lambda m: train_det.build_optimizer(m, cfg, lr), make_batch, det_input, parts,
                  clip_grad=float(grad_clip(cfg) or 0.0),
                  cuda_batch=2, extra={"channels_last": False, "cpu_batch": 1})


BUILDERS: Dict[str, Callable[..., Recipe]] = {
    "unigrad": unigrad, "rdm_simsiam": rdm_simsiam, "moco_au": moco_au, "twist_r50": twist_r50,
    "twist_vits": twist_vits, "mask_rcnn": mask_rcnn,
}


def build(name: str, tiny: bool = False, size: Optional[int] = None, device_type: str = "cpu") -> Recipe:
    """The recipe ``name``; ``device_type`` is where it will run (TWIST builds SyncBatchNorm on CUDA)."""
    if name not in BUILDERS:
        raise UserError(f"unknown recipe '{name}' (choose {', '.join(BUILDERS)} or all)")
    recipe = BUILDERS[name](tiny, size or (32 if tiny else 224), device_type)
    if tiny:
        recipe.what = "tiny stand-in for: " + recipe.what
    return recipe


def parse_recipes(spec: str) -> List[str]:
    names = list(BUILDERS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in BUILDERS:
            raise UserError(f"unknown recipe '{n}' (choose {', '.join(BUILDERS)} or all)")
    return names


