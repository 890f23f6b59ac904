"""Augmentation recipes (:mod:`core.augment.recipes`) and the PIL-exact ops they use."""
from core.augment.ops import ColorJitter, Equalize, GaussianBlur, MultiView, Solarize  # noqa: F401
from core.augment.recipes import *  # noqa: F401,F403
from core.augment.recipes import (BICUBIC, BILINEAR, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN,  # noqa: F401
                                  CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD)
