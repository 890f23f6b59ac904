"""evaluate.py pieces in-process: checkpoint keys, subsets, frozen classifier behaviour."""
import os
from types import SimpleNamespace

import pytest
import torch

from core.backbones import build_backbone
from core.errors import UserError

import paper_import

@pytest.fixture(scope="module")
def ev():
    return paper_import.load_script("twist", "evaluate.py", "twist_evaluate_unit")


def test_checkpoint_keys(ev, tmp_path):
    torch.manual_seed(0)
    src = build_backbone("resnet_tiny")
    full = str(tmp_path / "full.pth")
    torch.save({"model": {"backbone." + k: v for k, v in src.state_dict().items()}, "backbone": src.state_dict(),
                "teacher_backbone": src.state_dict()}, full)
    only = str(tmp_path / "only.pth")
    torch.save(src.state_dict(), only)
    for path, key in ((full, "auto"), (full, "backbone"), (full, "teacher_backbone"), (only, "none"),
                      (only, "auto")):
        dst = build_backbone("resnet_tiny")
        ref = ev.load_weights(dst, SimpleNamespace(pretrained=path, key=key))
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v) and torch.equal(ref[k], v)
    with pytest.raises(UserError):
        ev.load_weights(build_backbone("resnet_tiny"), SimpleNamespace(pretrained=full, key="ema_backbone"))
    with pytest.raises(UserError):  # a different architecture
        ev.load_weights(build_backbone("resnet18"), SimpleNamespace(pretrained=only, key="none"))


def test_subsets(ev, tmp_path):
    from core.data import SyntheticShapes, build_dataset, write_imagefolder

    ds = SyntheticShapes(2000, 32)
    sub = ev.subset(SimpleNamespace(train_percent=1, data="synthetic"), ds)
    assert len(sub) == 20 and sorted(set(sub.targets)) == list(range(10))  # 1 % of each class
    assert len(ev.subset(SimpleNamespace(train_percent=10, data="synthetic"), ds)) == 200
    assert ev.subset(SimpleNamespace(train_percent=100, data="synthetic"), ds) is ds
    root = write_imagefolder(str(tmp_path / "d"), num_train=20, num_val=10, image_size=32)
    folder = build_dataset(root, "train")
    names = sorted(os.listdir(os.path.join(root, "train", "star")))[:1] + \
        sorted(os.listdir(os.path.join(root, "train", "cross")))[:1]
    with open(os.path.join(root, "10percent.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    sub = ev.subset(SimpleNamespace(train_percent=10, data=root, subset_list=""), folder)
    assert len(sub) == 2 and sorted(sub.targets) == sorted([folder.class_to_idx["star"],
                                                           folder.class_to_idx["cross"]])
    with pytest.raises(UserError):
        ev.subset(SimpleNamespace(train_percent=1, data=root, subset_list=""), folder)
