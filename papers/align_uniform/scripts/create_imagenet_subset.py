#!/usr/bin/env python
"""Build an ImageNet subset (default: the 100 CMC classes of ``imagenet100_classes.txt``) as directory symlinks
``SUBSET_DIR/<split>/<wnid> -> IMAGENET_DIR/<split>/<wnid>`` for the splits train and val.

    python scripts/create_imagenet_subset.py IMAGENET_DIR SUBSET_DIR [--subset CLASS_FILE] [--force]
"""
from __future__ import annotations

import argparse
import errno
import os
import re
from typing import Iterable, List, Sequence

from core.errors import UserError, cli_main

HERE = os.path.dirname(os.path.abspath(__file__))
WNID = re.compile(r"n\d{8}")


def read_classes(path: str) -> List[str]:
    """One class per line, stripped (blank lines ignored)."""
    if not os.path.isfile(path):
        raise UserError(f"class subset file '{path}' does not exist")
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


def _link(src: str, dst: str, force: bool) -> None:
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        if not force:
            raise UserError(f"'{dst}' already exists (pass --force to overwrite existing symlinks)") from None
        if not os.path.islink(dst):
            raise UserError(f"--force cannot overwrite existing '{dst}' because it is not a symlink") from None
        os.remove(dst)
        os.symlink(src, dst, target_is_directory=True)


def create_subset(imagenet_dir: str, subset_dir: str, classes: Iterable[str], force: bool = False,
                  splits: Sequence[str] = ("train", "val")) -> None:
    """Create ``subset_dir/<split>/<wnid>`` symlinks to ``imagenet_dir/<split>/<wnid>``."""
    imagenet_dir, subset_dir = os.path.abspath(imagenet_dir), os.path.abspath(subset_dir)
    classes = list(classes)
    for c in classes:
        if WNID.match(c) is None:
            raise UserError(f"class '{c}' is not a WordNet id of the form n######## (n followed by 8 digits)")
    for split in splits:
        for c in classes:
            if not os.path.isdir(os.path.join(imagenet_dir, split, c)):
                raise UserError(f"'{os.path.join(imagenet_dir, split, c)}' is not a folder "
                                f"(expected IMAGENET_DIR/{split}/<wnid>/ class folders)")
    for split in splits:
        os.makedirs(os.path.join(subset_dir, split), exist_ok=True)
        for c in classes:
            _link(os.path.join(imagenet_dir, split, c), os.path.join(subset_dir, split, c), force)


@cli_main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Create an ImageNet subset made of directory symlinks")
    parser.add_argument("full_imagenet_path", metavar="IMAGENET_DIR", help="path to the full ImageNet")
    parser.add_argument("subset_imagenet_path", metavar="SUBSET_DIR", help="path to create the subset at")
    parser.add_argument("-s", "--subset", default=os.path.join(HERE, "imagenet100_classes.txt"),
                        help="file with one class (WordNet id) per line (default: the ImageNet-100 classes)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing symlinks")
    args = parser.parse_args(argv)
    print(f"Using class names specified in {args.subset}")
    create_subset(args.full_imagenet_path, args.subset_imagenet_path, read_classes(args.subset), args.force)
    print(f"Finished creating ImageNet subset at {os.path.abspath(args.subset_imagenet_path)}")


if __name__ == "__main__":
    main()
