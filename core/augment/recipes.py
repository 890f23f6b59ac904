"""Augmentation recipes of the five papers, with their exact parameters and order.

Sizes: every recipe takes the crop ``size`` of the run (224 on ImageNet). Local crops of multi-crop
recipes scale with it (96/224 of the global size), so the same recipe runs on 32-px data.
Each builder returns a ``torchvision.transforms.v2.Compose`` whose members carry their parameters,
so tests can check them.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torchvision.transforms import v2 as T
from torchvision.transforms import InterpolationMode

from core.augment.ops import ColorJitter, Equalize, GaussianBlur, MultiView, Solarize, ToNormalizedTensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
BICUBIC = InterpolationMode.BICUBIC
BILINEAR = InterpolationMode.BILINEAR


def to_tensor_normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``ToTensor`` + ``Normalize`` (v2 ``ToImage``, ``ToDtype(float32, scale=True)``, ``Normalize``), as one
    bit-identical table lookup for PIL RGB images (:class:`core.augment.ops.ToNormalizedTensor`)."""
    return [ToNormalizedTensor(mean, std)]


def local_size(size: int, base_global: int = 224, base_local: int = 96) -> int:
    """The local-crop size that keeps the 96/224 ratio at another resolution (at least 8 px)."""
    return max(8, int(round(size * base_local / base_global)))


def moco_v1(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """MoCo v1 / InstDisc (``main_moco.py`` default): crop (0.2, 1), grayscale 0.2, then jitter
    (0.4, 0.4, 0.4, 0.4) always, flip."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomGrayscale(p=0.2),
        ColorJitter(0.4, 0.4, 0.4, 0.4),
        T.RandomHorizontalFlip(),
        *to_tensor_normalize(mean, std),
    ])


def moco_v2(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """MoCo v2 ``--aug-plus`` = SimSiam = UniGrad: crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
    grayscale 0.2, PIL blur sigma U[0.1, 2] p 0.5, flip."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        *to_tensor_normalize(mean, std),
    ])


def byol_view(size: int = 224, blur_p: float = 1.0, solarize_p: float = 0.0,
              scale: Tuple[float, float] = (0.08, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """One BYOL / Barlow Twins view (bicubic crop, flip, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2,
    PIL blur with probability ``blur_p``, solarize with probability ``solarize_p``)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=blur_p),
        T.RandomApply([Solarize(128)], p=solarize_p),
        *to_tensor_normalize(mean, std),
    ])


def byol_pair(size: int = 224, scale=(0.08, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> MultiView:
    """BYOL / Barlow Twins asymmetric views: blur 1.0 / 0.1, solarize 0.0 / 0.2."""
    return MultiView([byol_view(size, 1.0, 0.0, scale, mean, std), byol_view(size, 0.1, 0.2, scale, mean, std)])


def solo_pipeline(size: int = 32, *, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                  hue: float = 0.1, color_jitter_prob: float = 0.8, gray_scale_prob: float = 0.2,
                  gaussian_prob: float = 0.0, solarization_prob: float = 0.0, equalization_prob: float = 0.0,
                  min_scale: float = 0.08, max_scale: float = 1.0, horizontal_flip_prob: float = 0.5,
                  mean=CIFAR10_MEAN, std=CIFAR10_STD) -> T.Compose:
    """solo-learn's pipeline (CIFAR and, in the same order, the ImageNet-100 DALI one): bicubic crop,
    jitter with p, grayscale, PIL blur, solarize, equalize, flip, normalize."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(min_scale, max_scale), interpolation=BICUBIC),
        T.RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p=color_jitter_prob),
        T.RandomGrayscale(p=gray_scale_prob),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=gaussian_prob),
        T.RandomApply([Solarize(128)], p=solarization_prob),
        T.RandomApply([Equalize()], p=equalization_prob),
        T.RandomHorizontalFlip(p=horizontal_flip_prob),
        *to_tensor_normalize(mean, std),
    ])


def _twist_flip_color():
    return [T.RandomHorizontalFlip(p=0.5), T.RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2)]


def multicrop(size: int = 224, local_crops_number: int = 12, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
              local_crop_size: Optional[int] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> MultiView:
    """TWIST / DINO multi-crop: global 1 (blur 1.0), global 2 (blur 0.1, solarize 0.2), ``local_crops_number``
    local crops (blur 0.5) at 96/224 of ``size``; all bicubic with the shared flip + colour block.
    Order returned: [global1, global2, local1 ... localL]."""
    lsize = local_crop_size or local_size(size)
    norm = to_tensor_normalize(mean, std)

    def view(crop, scale, blur_p, sol_p=0.0):
        ops = [T.RandomResizedCrop(crop, scale=scale, interpolation=BICUBIC), *_twist_flip_color(),
               T.RandomApply([GaussianBlur((0.1, 2.0))], p=blur_p)]
        if sol_p:
            ops.append(T.RandomApply([Solarize(128)], p=sol_p))
        return T.Compose(ops + norm)

    views = [view(size, tuple(global_scale), 1.0), view(size, tuple(global_scale), 0.1, 0.2)]
    views += [view(lsize, tuple(local_scale), 0.5) for _ in range(local_crops_number)]
    return MultiView(views)


def twist_views(kind: str, size: int = 224, local_crops_number: int = 12, global_scale=(0.4, 1.0),
                local_scale=(0.05, 0.4), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> MultiView:
    """TWIST ``--aug`` sets: ``barlow`` (BYOL-style pair, crop (0.08, 1)), ``moco`` (two identical views),
    ``multicrop`` (default), ``rand`` (timm RandAugment 'rand-m9-mstd0.5-inc1', erasing 0.25)."""
    if kind == "barlow":
        return byol_pair(size, (0.08, 1.0), mean, std)
    if kind == "moco":
        one = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=BICUBIC),
                         T.RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                         T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5), T.RandomHorizontalFlip(),
                         *to_tensor_normalize(mean, std)])
        return MultiView([one, one])
    if kind == "multicrop":
        return multicrop(size, local_crops_number, global_scale, local_scale, mean=mean, std=std)
    if kind == "rand":
        from timm.data import create_transform

        one = create_transform(size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                               interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                               mean=mean, std=std)
        return MultiView([one, one])
    from core.errors import UserError

    raise UserError(f"unknown augmentation '{kind}' (choose barlow, moco, multicrop or rand)")


def eval_transform(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Validation: Resize(size * 256/224) then CenterCrop(size) (Resize 256 + CenterCrop 224 on ImageNet)."""
    return T.Compose([T.Resize(int(round(size * 256 / 224)), interpolation=BILINEAR), T.CenterCrop(size),
                      *to_tensor_normalize(mean, std)])


def linear_train_transform(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Linear-probe training: RandomResizedCrop(size) + flip (the MoCo/SimSiam ``main_lincls.py`` recipe)."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *to_tensor_normalize(mean, std)])
