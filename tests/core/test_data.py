"""Datasets and loaders: determinism, the ImageNet layout on disk, and one-line errors on bad input."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (SyntheticShapes, build_dataset, build_loader, is_synthetic, read_class_list,
                       read_file_list, subset_by_file_list, write_imagefolder)
from core.errors import UserError


def test_synthetic_is_deterministic_balanced_and_sized():
    a, b = SyntheticShapes(30, 32, seed=1), SyntheticShapes(30, 32, seed=1)
    assert np.array_equal(np.asarray(a.image(7)), np.asarray(b.image(7)))
    assert not np.array_equal(np.asarray(a.image(7)), np.asarray(SyntheticShapes(30, 32, seed=2).image(7)))
    assert not np.array_equal(np.asarray(a.image(7)), np.asarray(SyntheticShapes(30, 32, 1, "val").image(7)))
    assert [a[i][1] for i in range(20)] == [i % 10 for i in range(20)]
    for size in (32, 96, 224):
        assert SyntheticShapes(1, size).image(0).size == (size, size)
    assert is_synthetic("synthetic") and not is_synthetic("/data/imagenet")


def test_synthetic_shape_is_bright_on_dark():
    img = np.asarray(SyntheticShapes(10, 64).image(0)).astype(float)
    # the shape (bright) and the background (dark) both exist
    assert img.max() > 180 and np.percentile(img.max(axis=2), 10) < 80


def test_imagefolder_roundtrip_and_class_subset(tmp_path):
    root = write_imagefolder(str(tmp_path / "data"), num_train=20, num_val=10, image_size=32)
    ds = build_dataset(root, "train")
    assert len(ds) == 20 and len(ds.classes) == 10
    i = next(i for i, (path, _) in enumerate(ds.samples) if path.endswith("train_000003.png"))
    img, y = ds[i]
    assert isinstance(img, Image.Image) and y == ds.classes.index("diamond")  # index 3 -> class 3
    (tmp_path / "classes.txt").write_text("circle\n# comment\nstar\n")
    sub = build_dataset(root, "val", class_subset=str(tmp_path / "classes.txt"))
    assert sub.classes == ["circle", "star"] and len(sub) == 2


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(str(tmp_path / "nope"))
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no class sub-folders"):
        build_dataset(str(tmp_path / "d"))
    (tmp_path / "d" / "train" / "cat").mkdir()
    with pytest.raises(UserError, match="is empty"):
        build_dataset(str(tmp_path / "d"))
    (tmp_path / "d" / "train" / "cat" / "x.jpg").write_bytes(b"not an image")
    ds = build_dataset(str(tmp_path / "d"))
    with pytest.raises(UserError, match="cannot read image .*x.jpg"):
        ds[0]
    with pytest.raises(UserError, match="no 'val' folder"):
        build_dataset(str(tmp_path / "d"), "val")
    with pytest.raises(UserError, match="cifar10 files not found"):
        build_dataset(f"cifar10:{tmp_path}/cifar")
    with pytest.raises(UserError, match="class list file"):
        read_class_list(str(tmp_path / "missing.txt"))


def test_file_list_subset(tmp_path):
    root = write_imagefolder(str(tmp_path / "data"), num_train=20, num_val=0, image_size=32)
    ds = build_dataset(root, "train")
    names = [os.path.basename(p) for p, _ in ds.samples[:5]]
    (tmp_path / "1percent.txt").write_text("\n".join(names) + "\n")
    sub = subset_by_file_list(ds, read_file_list(str(tmp_path / "1percent.txt")))
    assert len(sub) == 5 and sub.targets == [ds.targets[i] for i in range(5)]
    with pytest.raises(UserError, match="not in the dataset"):
        subset_by_file_list(ds, names + ["n0000_missing.JPEG"])


def test_loader_drop_last_and_seeded_order():
    ds = SyntheticShapes(10, 32, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    torch.manual_seed(0)
    a = [y.tolist() for _, y in build_loader(ds, 4, seed=0)]
    torch.manual_seed(0)
    b = [y.tolist() for _, y in build_loader(ds, 4, seed=0)]
    assert a == b and len(a) == 2 and all(len(x) == 4 for x in a)
