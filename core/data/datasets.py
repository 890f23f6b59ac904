"""Dataset builders: ImageFolder (ImageNet layout), ImageNet-100 by class list, CIFAR-10/100, STL-10, and the
built-in synthetic shapes and digits sets. Every builder fails with a one-line :class:`~core.errors.UserError` on bad input."""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

from PIL import Image, UnidentifiedImageError
import torchvision.datasets as tvd

from core.errors import UserError
from core.data.digits import Digits, is_digits
from core.data.synthetic import SyntheticShapes, is_synthetic

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
# synthetic split sizes when a script gives none
SYNTHETIC_DEFAULT_SIZES = {"train": 5000, "val": 1000}


def is_builtin(name) -> bool:
    """A reserved built-in dataset name (``synthetic`` shapes or ``digits``) instead of a data path."""
    return is_synthetic(name) or is_digits(name)


def pil_loader(path: str) -> Image.Image:
    """Open an image as RGB; a corrupt or unreadable file raises a UserError naming the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image '{path}': {e.__class__.__name__}: {e}") from None


def read_class_list(path_or_list) -> List[str]:
    """A class list file (one WordNet id per line, ``#`` comments allowed) or an iterable of names."""
    if isinstance(path_or_list, str):
        if not os.path.isfile(path_or_list):
            raise UserError(f"class list file '{path_or_list}' does not exist")
        with open(path_or_list) as f:
            names = [ln.split("#")[0].strip() for ln in f]
        return [n for n in names if n]
    return list(path_or_list)


class ImageFolder(tvd.ImageFolder):
    """torchvision ImageFolder with readable errors and an optional class subset (ImageNet-100)."""

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 class_subset: Optional[Sequence[str]] = None):
        if not os.path.isdir(root):
            raise UserError(f"data folder '{root}' does not exist")
        self._subset = list(class_subset) if class_subset is not None else None
        try:
            super().__init__(root, transform=transform, loader=pil_loader)
        except FileNotFoundError as e:
            raise UserError(f"{root}: {_last(str(e))}") from None

    def find_classes(self, directory: str):
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        if not classes:
            raise UserError(f"data folder '{directory}' has no class sub-folders (expected <dir>/<class>/<image>)")
        if self._subset is not None:
            missing = [c for c in self._subset if c not in classes]
            if missing:
                raise UserError(f"{len(missing)} classes of the class list are missing in '{directory}', "
                                f"e.g. {missing[:3]}")
            classes = sorted(self._subset)
        for c in classes:
            d = os.path.join(directory, c)
            if not any(n.lower().endswith(tuple(x.lower() for x in IMG_EXTENSIONS)) for n in os.listdir(d)):
                raise UserError(f"class folder '{d}' is empty (no image files)")
        return classes, {c: i for i, c in enumerate(classes)}


def _last(msg: str) -> str:
    return msg.strip().splitlines()[-1] if msg.strip() else msg


def split_dir(root: str, split: str) -> str:
    """``root/split`` when it exists (the ImageNet layout), else a clear error."""
    if not os.path.isdir(root):
        raise UserError(f"data path '{root}' does not exist")
    d = os.path.join(root, split)
    if not os.path.isdir(d):
        raise UserError(f"data path '{root}' has no '{split}' folder (expected {root}/{split}/<class>/...)")
    return d


def build_dataset(data: str, split: str = "train", transform: Optional[Callable] = None, *,
                  class_subset=None, image_size: int = 32, num_samples: Optional[int] = None,
                  seed: int = 0, root_is_split: bool = False, download: bool = False):
    """One entry point for every script's dataset path.

    ``data`` is a reserved name, ``synthetic`` (shapes) or ``digits`` (scikit-learn's handwritten digits, fixed
    train/val split; ``num_samples`` caps a split), both at ``image_size`` px, or ``cifar10``/``cifar100``/
    ``stl10`` optionally as ``name:ROOT`` (torchvision format under ROOT, default ``./datasets``), or a folder
    in the ImageNet layout (``data/train/<class>``, ``data/val/<class>``; with ``root_is_split`` the folder is
    the split itself). ``class_subset`` is a class-list file or list (ImageNet-100).
    """
    if is_synthetic(data):
        n = num_samples or SYNTHETIC_DEFAULT_SIZES.get(split, 1000)
        return SyntheticShapes(n, image_size, seed, "train" if split == "train" else "val", transform)
    if is_digits(data):
        return Digits("train" if split == "train" else "val", image_size, transform, num_samples)
    name, _, root = data.partition(":")
    if name.lower() in TORCHVISION_SETS:
        return torchvision_dataset(name.lower(), split, transform, root or "./datasets", download)
    folder = data if root_is_split else split_dir(data, split)
    subset = read_class_list(class_subset) if class_subset is not None else None
    return ImageFolder(folder, transform, subset)


def torchvision_dataset(name: str, split: str, transform, root: str, download: bool = False):
    """CIFAR-10/100 (train/test) or STL-10 (train/test/unlabeled/train+unlabeled) from torchvision files."""
    train = split == "train"
    try:
        if name == "cifar10":
            return tvd.CIFAR10(root, train=train, transform=transform, download=download)
        if name == "cifar100":
            return tvd.CIFAR100(root, train=train, transform=transform, download=download)
        stl_split = {"val": "test"}.get(split, split)
        return tvd.STL10(root, split=stl_split, transform=transform, download=download)
    except RuntimeError as e:
        raise UserError(f"{name} files not found under '{root}' ({_last(str(e))}); place the torchvision "
                        f"archive there (no download is attempted without network)") from None
    except OSError as e:
        raise UserError(f"{name} could not be read or downloaded under '{root}': {e}") from None
