"""Semi-supervised subsets given as file lists (SimCLR's 1 % / 10 % ImageNet lists)."""
from __future__ import annotations

import os
from typing import List

from torch.utils.data import Subset

from core.errors import UserError


def read_file_list(path: str) -> List[str]:
    """One image file name per line (``n01440764_10026.JPEG``); blank lines ignored."""
    if not os.path.isfile(path):
        raise UserError(f"subset file list '{path}' does not exist")
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


def subset_by_file_list(image_folder, names: List[str]) -> Subset:
    """Keep the samples of an ImageFolder whose file *basename* is in ``names`` (order of the folder)."""
    wanted = set(os.path.basename(n) for n in names)
    idx = [i for i, (p, _) in enumerate(image_folder.samples) if os.path.basename(p) in wanted]
    if not idx:
        raise UserError("none of the files in the subset list were found in the dataset")
    if len(idx) < len(wanted):
        found = {os.path.basename(image_folder.samples[i][0]) for i in idx}
        missing = sorted(wanted - found)
        raise UserError(f"{len(missing)} files of the subset list are not in the dataset, e.g. {missing[:3]}")
    sub = Subset(image_folder, idx)
    sub.targets = [image_folder.targets[i] for i in idx]
    sub.classes = image_folder.classes
    return sub
