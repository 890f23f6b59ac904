"""Datasets and augmentations of the solo-learn face (spec §4c): CIFAR torchvision pipelines, the
ImageNet-100 recipe (DALI in the original, the same steps in torchvision here), validation transforms."""
from __future__ import annotations

import os

from torchvision.transforms import v2 as T

from core.augment import (BICUBIC, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN,
                          MultiView, eval_transform, solo_pipeline, to_tensor_normalize)
from core.data import build_dataset, is_builtin

# solo's DALI normalisation uses std 0.228 for the red channel (spec §4c)
DALI_STD = (0.228, 0.224, 0.225)
CIFAR_VAL_MEAN, CIFAR_VAL_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
CIFAR_LIKE = ("cifar10", "cifar100")


def mean_std(dataset: str):
    return {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}.get(
        dataset, (IMAGENET_MEAN, DALI_STD))


def pretrain_transform(dataset: str, pipelines) -> MultiView:
    """One view per crop: each pipeline's ``solo_pipeline`` repeated ``num_crops`` times."""
    mean, std = mean_std(dataset)
    views = []
    for pl in pipelines:
        kw = dict(brightness=pl["brightness"], contrast=pl["contrast"], saturation=pl["saturation"],
                  hue=pl["hue"], color_jitter_prob=pl["color_jitter_prob"], gray_scale_prob=pl["gray_scale_prob"],
                  gaussian_prob=pl["gaussian_prob"], solarization_prob=pl["solarization_prob"],
                  equalization_prob=pl["equalization_prob"], min_scale=pl["min_scale"], max_scale=pl["max_scale"],
                  horizontal_flip_prob=pl["horizontal_flip_prob"])
        views += [solo_pipeline(pl["crop_size"], mean=mean, std=std, **kw)] * pl["num_crops"]
    return MultiView(views)


def val_transform(dataset: str, size: int):
    if dataset in CIFAR_LIKE:
        return T.Compose(to_tensor_normalize(CIFAR_VAL_MEAN, CIFAR_VAL_STD))
    mean, std = mean_std(dataset)
    return eval_transform(size, mean, std)


def linear_train_transform(dataset: str, size: int):
    """solo ``main_linear.py``: RandomResizedCrop(size, (0.08, 1), bicubic) + flip."""
    mean, std = (CIFAR_VAL_MEAN, CIFAR_VAL_STD) if dataset in CIFAR_LIKE else mean_std(dataset)
    return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=BICUBIC),
                      T.RandomHorizontalFlip(), *to_tensor_normalize(mean, std)])


def solo_dataset(dataset: str, data_dir: str, sub_dir, split: str, transform, image_size: int,
                 num_samples=None):
    """``synthetic`` / ``digits`` -> the built-in set; CIFAR -> torchvision files under ``data_dir/<sub_dir or
    dataset/split>``; otherwise an ImageFolder at ``data_dir/sub_dir``. ``num_samples``: size of a built-in
    train split (``--num_samples``)."""
    if is_builtin(data_dir):
        return build_dataset(data_dir, split, transform, image_size=max(image_size, 8),
                             num_samples=num_samples if split == "train" else None)
    if dataset in ("cifar10", "cifar100", "stl10"):
        root = os.path.join(data_dir, sub_dir or os.path.join(dataset, "train" if split == "train" else "val"))
        return build_dataset(f"{dataset}:{root}", split, transform)
    folder = os.path.join(data_dir, sub_dir or split)
    return build_dataset(folder, split, transform, root_is_split=True)


def num_classes_of(ds, dataset: str, default: dict) -> int:
    classes = getattr(ds, "classes", None)
    return len(classes) if classes else default.get(dataset, 10)

