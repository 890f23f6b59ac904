"""Datasets and loaders shared by every paper folder (see :mod:`core.data.datasets`)."""
from core.data.synthetic import SyntheticShapes, write_imagefolder, is_synthetic, SHAPES  # noqa: F401
from core.data.datasets import (ImageFolder, build_dataset, pil_loader, read_class_list,  # noqa: F401
                                torchvision_dataset, split_dir)
from core.data.loader import build_loader, seed_everything, set_loader_epoch  # noqa: F401
from core.data.semi import read_file_list, subset_by_file_list  # noqa: F401
