"""scripts/create_imagenet_subset.py on a temporary tree (the two printed commands) and the hub entry point on
saved checkpoints (both printed torch.hub.load calls)."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from core.errors import UserError


def _subset_cmd(paper_dir, *args):
    return subprocess.run([sys.executable, "scripts/create_imagenet_subset.py", *map(str, args)], cwd=paper_dir,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def imagenet(tmp_path, paper_dir):
    classes = open(os.path.join(paper_dir, "scripts", "imagenet100_classes.txt")).read().split()
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c in classes + ["n99999999"]:  # one class that is not in ImageNet-100
            (root / split / c).mkdir(parents=True)
            (root / split / c / "x.JPEG").write_bytes(b"")
    return root, classes


def test_class_list_is_the_100_cmc_classes(paper_dir):
    text = open(os.path.join(paper_dir, "scripts", "imagenet100_classes.txt")).read()
    lines = text.splitlines()
    assert len(text) == 1000 and text.endswith("\n") and len(set(lines)) == 100
    assert lines[0] == "n02869837" and lines[-1] == "n02090622"
    assert all(len(x) == 9 and x[0] == "n" and x[1:].isdigit() for x in lines)


def test_subset_default_force_and_custom(paper_dir, imagenet, tmp_path):
    root, classes = imagenet
    dst = tmp_path / "in100"
    p = _subset_cmd(paper_dir, root, dst)
    assert p.returncode == 0, p.stderr
    assert "Using class names specified in" in p.stdout and "Finished creating ImageNet subset" in p.stdout
    for split in ("train", "val"):
        names = sorted(os.listdir(dst / split))
        assert names == sorted(classes)
        link = dst / split / classes[0]
        assert link.is_symlink() and os.readlink(link) == str(root / split / classes[0])
    p = _subset_cmd(paper_dir, root, dst)  # existing links without --force: one-line error
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "--force" in p.stderr
    assert _subset_cmd(paper_dir, root, dst, "--force").returncode == 0
    custom = tmp_path / "classes.txt"
    custom.write_text("n99999999\nn01749939\n")
    dst2 = tmp_path / "custom"
    p = _subset_cmd(paper_dir, root, dst2, "--subset", custom)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(dst2 / "val")) == ["n01749939", "n99999999"]
    (dst2 / "train" / "n01749939").unlink()
    (dst2 / "train" / "n01749939").mkdir()  # a real folder cannot be replaced
    p = _subset_cmd(paper_dir, root, dst2, "--subset", custom, "-f")
    assert p.returncode == 2 and "not a symlink" in p.stderr
    custom.write_text("cat\n")
    p = _subset_cmd(paper_dir, root, tmp_path / "bad", "-s", custom)
    assert p.returncode == 2 and "WordNet" in p.stderr


def _encoder_ckpt(path):
    net = torchvision.models.resnet50(weights=None, num_classes=128)
    net.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), net.fc)
    sd = {"module.encoder_q." + k: v for k, v in net.state_dict().items()}
    sd["module.encoder_k.fc.2.bias"] = torch.zeros(128)
    sd["module.queue"] = torch.zeros(128, 16)
    torch.save({"state_dict": sd, "epoch": 1, "arch": "resnet50"}, path)
    return net


def test_hub_encoder_from_local_checkpoint(paper_dir, tmp_path, monkeypatch):
    path = tmp_path / "enc.pth.tar"
    ref = _encoder_ckpt(path)
    model = torch.hub.load(paper_dir, "imagenet_resnet50_encoder", source="local", checkpoint=str(path))
    for (n, a), (_, b) in zip(model.fc[:3].state_dict().items(), ref.fc.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    monkeypatch.setenv("AU_ENCODER_CKPT", str(path))
    again = torch.hub.load(paper_dir, "imagenet_resnet50_encoder", source="local")
    assert torch.equal(again.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)


def test_hub_linear_clf_and_missing_checkpoint(paper_dir, tmp_path, monkeypatch):
    net = torchvision.models.resnet50(weights=None, num_classes=1000)
    path = tmp_path / "clf.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    monkeypatch.setenv("AU_LINEAR_CLF_CKPT", str(path))
    model = torch.hub.load(paper_dir, "imagenet_resnet50_encoder", source="local", with_linear_clf=True)
    assert torch.equal(model.fc.weight, net.fc.weight) and model.fc.out_features == 1000
    monkeypatch.delenv("AU_ENCODER_CKPT", raising=False)
    with pytest.raises(UserError, match="AU_ENCODER_CKPT"):
        torch.hub.load(paper_dir, "imagenet_resnet50_encoder", source="local")


def test_hub_encoder_on_a_builder_checkpoint(paper_dir, tmp_path):
    """A checkpoint laid out as main_moco saves it (DDP prefix, MoCo(resnet50, --mlp) state dict): the hub encoder
    keeps encoder_q with its MLP head and equals normalize(encoder_q(x))."""
    from au_lib.builder import MoCo
    from au_lib.nets import net_constructor

    torch.manual_seed(0)
    moco = MoCo(net_constructor("resnet50"), dim=128, K=16, mlp=True, contr_tau=None, align_alpha=2.0, unif_t=3.0)
    path = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "optimizer": {},
                "state_dict": {"module." + k: v for k, v in moco.state_dict().items()}}, path)
    model = torch.hub.load(paper_dir, "imagenet_resnet50_encoder", source="local", checkpoint=str(path))
    model.eval()
    moco.encoder_q.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.nn.functional.normalize(moco.encoder_q(x), dim=1))
