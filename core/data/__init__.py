"""Datasets and loaders shared by every paper folder (see :mod:`core.data.datasets`)."""
from core.data.synthetic import SyntheticShapes, write_imagefolder, is_synthetic, SHAPES  # noqa: F401
from core.data.digits import Digits, is_digits  # noqa: F401
from core.data.datasets import (ImageFolder, build_dataset, is_builtin, pil_loader,  # noqa: F401
                                read_class_list, torchvision_dataset, split_dir)
from core.data.loader import build_loader, seed_everything, set_loader_epoch  # noqa: F401
from core.data.semi import read_file_list, subset_by_file_list  # noqa: F401
