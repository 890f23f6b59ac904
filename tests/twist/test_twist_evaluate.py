"""evaluate.py pieces in-process: checkpoint keys, subsets, frozen classifier behaviour."""
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from core.backbones import build_backbone
from core.errors import UserError

TWIST = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "twist"))


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("twist_evaluate_unit", os.path.join(TWIST, "evaluate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_frozen_classifier_keeps_bn_in_eval_and_trains_fc_only():
    from twist_lib.lineval import Classifier

    bb = build_backbone("resnet_tiny")
    m = Classifier(bb, bb.feat_dim, 10, freeze=True)
    m.train()
    assert m.training and not m.backbone.training and not any(x.training for x in m.backbone.modules())
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert torch.all(m.fc.bias == 0) and abs(m.fc.weight.std().item() - 0.01) < 0.003
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    loss, logs = m((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])))
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())  # no BN stat update
    ft = Classifier(build_backbone("resnet_tiny"), 128, 10, freeze=False).train()
    assert ft.backbone.training


def test_validation_epochs_as_the_originals():
    # evaluate.py / evaluate_vitlinear.py: `epoch % n == 0 or epoch == epochs - 1` (0-based)
    from twist_lib.lineval import validates

    assert [e for e in range(10) if validates(e, 4, 10)] == [0, 4, 8, 9]
    assert [e for e in range(6) if validates(e, 2, 6)] == [0, 2, 4, 5]
    assert [e for e in range(3) if validates(e, 1, 3)] == [0, 1, 2]
    assert [e for e in range(1) if validates(e, 5, 1)] == [0]
