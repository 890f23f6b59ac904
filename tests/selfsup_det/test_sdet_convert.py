"""Checkpoint layout recognition and the torchvision / MMDetection / detectron2 writers (spec §1, §3.1, §5)."""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

from core.errors import UserError
from tools.checkpoint_convert import (convert, detect_layout, extract_backbone, load_file,
                                      torchvision_to_detectron2, write_detectron2_pkl)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _rand_like(sd, seed):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
                       for k, v in sd.items())


@pytest.fixture(scope="module")
def ref():
    """A torchvision ResNet-18 trunk (no fc) with random, distinct tensors: the expected extraction."""
    m = torchvision.models.resnet18(weights=None)
    sd = OrderedDict((k, v) for k, v in m.state_dict().items() if not k.startswith("fc."))
    return _rand_like(sd, 0)


def _prefixed(sd, prefix):
    return OrderedDict((prefix + k, v) for k, v in sd.items())


def _layouts(ref):
    other = _rand_like(ref, 1)  # momentum / key / student copies: must never be picked
    head = {"fc.0.weight": torch.randn(8, 512), "fc.0.bias": torch.randn(8), "fc.2.weight": torch.randn(4, 8),
            "fc.2.bias": torch.randn(4)}
    seq = OrderedDict()
    names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    for k, v in ref.items():
        first, rest = k.split(".", 1)
        seq[f"{names[first]}.{rest}"] = v
    seq_other = OrderedDict((k, torch.randn_like(v) if v.is_floating_point() else v) for k, v in seq.items())
    out = {
        "moco": {"epoch": 200, "arch": "resnet18", "optimizer": {}, "state_dict": {
            **_prefixed(ref, "module.encoder_q."), **_prefixed(head, "module.encoder_q."),
            **_prefixed(other, "module.encoder_k."), **_prefixed(head, "module.encoder_k."),
            "module.queue": torch.randn(4, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        "simsiam": {"epoch": 100, "arch": "resnet18", "state_dict": {
            **_prefixed(ref, "module.encoder."),
            **{f"module.encoder.fc.{i}.weight": torch.randn(8, 8) for i in (0, 1, 3, 4, 6)},
            "module.encoder.fc.7.running_mean": torch.zeros(8), "module.predictor.0.weight": torch.randn(2, 8)}},
        "swav": {**_prefixed(ref, "module."), "module.projection_head.0.weight": torch.randn(8, 512),
                 "module.projection_head.1.running_mean": torch.zeros(8),
                 "module.projection_head.3.weight": torch.randn(4, 8), "module.prototypes.weight": torch.randn(6, 4)},
        "swav_wrapped": {"epoch": 800, "state_dict": {**_prefixed(ref, "module."),
                                                      "module.prototypes.weight": torch.randn(6, 4)}},
        "barlow_plain": OrderedDict(ref),
        "barlow_full": {"epoch": 1000, "optimizer": {}, "model": {
            **_prefixed(ref, "module.backbone."), "module.projector.0.weight": torch.randn(8, 512),
            "module.bn.running_mean": torch.zeros(8)}},
        "twist": {"epoch": 300, "args": {"backbone": "resnet18"}, "optimizer": {},
                  "model": {**_prefixed(other, "backbone."), "head.0.weight": torch.randn(8, 512)},
                  "backbone": OrderedDict(ref)},
        "unigrad": {"epoch": 100, "step": 10, "F": None, "optimizer": {}, "model": {
            **_prefixed(seq, "module.encoder."), **_prefixed(seq_other, "module.momentum_encoder."),
            "module.projector.0.weight": torch.randn(8, 512)}},
        "dino": {"epoch": 100, "args": {}, "optimizer": {},
                 "student": {**_prefixed(other, "module.backbone."), "module.head.mlp.0.weight": torch.randn(4, 4)},
                 "teacher": {**_prefixed(ref, "module.backbone."), "module.head.last_layer.weight_g": torch.ones(1)}},
        "mmselfsup": {"meta": {}, "state_dict": {**_prefixed(ref, "backbone."), "neck.mlp.0.weight": torch.randn(2, 2),
                                                 "head.predictor.weight": torch.randn(2, 2)}},
        "openselfsup": {"state_dict": {**_prefixed(ref, "encoder_q.0."), "encoder_q.1.mlp.0.weight": torch.randn(2, 2),
                                       **_prefixed(other, "encoder_k.0.")}},
        "byol_converted": OrderedDict((k, v) for k, v in {**ref, "fc.weight": torch.randn(10, 512),
                                                          "fc.bias": torch.randn(10)}.items()
                                      if not k.endswith("num_batches_tracked")),
        "detectron2": {"model": torchvision_to_detectron2(ref), "__author__": "MOCO", "matching_heuristics": True},
    }
    return out


EXPECTED_LAYOUT = {"moco": "moco", "simsiam": "simsiam", "swav": "swav", "swav_wrapped": "swav",
                   "barlow_plain": "plain", "barlow_full": "barlow", "twist": "twist", "unigrad": "unigrad",
                   "dino": "dino", "mmselfsup": "mmselfsup", "openselfsup": "openselfsup",
                   "byol_converted": "plain", "detectron2": "detectron2"}


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYOUT))
def test_every_layout_gives_the_same_backbone(ref, name, tmp_path):
    obj = _layouts(ref)[name]
    path = tmp_path / "ck.pth"
    if name == "detectron2":
        path = tmp_path / "ck.pkl"
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path)
    layout, bb = extract_backbone(load_file(str(path)))
    assert layout == EXPECTED_LAYOUT[name]
    expected = {k: v for k, v in ref.items()
                if not (name == "byol_converted" and k.endswith("num_batches_tracked"))}
    assert list(bb) == list(expected)
    for k, v in expected.items():
        assert torch.equal(bb[k], v), k


def _engine_checkpoint(tmp_path, attr_q, attr_k, model_prefix=""):
    """A real checkpoint written by core.engine.train for a two-branch model (query/online + momentum)."""
    from core.backbones import resnet_tiny
    from core.engine import EngineConfig, train

    class TwoBranch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            setattr(self, attr_q, resnet_tiny())
            setattr(self, attr_k, resnet_tiny())
            self.projector = torch.nn.Linear(128, 8)

        def forward(self, batch):
            z = self.projector(getattr(self, attr_q)(batch[0]))
            with torch.no_grad():
                getattr(self, attr_k)(batch[0])
            loss = z.pow(2).mean()
            return loss, {}

    torch.manual_seed(0)
    model = TwoBranch()
    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4))]
    cfg = EngineConfig(epochs=1, output_dir=str(tmp_path), tensorboard=False, progress=False, plot=False,
                       model_prefix=model_prefix)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, cfg)
    expected = {k: v for k, v in getattr(model, attr_q).state_dict().items() if not k.startswith("fc.")}
    return str(tmp_path / "checkpoint.pth"), expected


@pytest.mark.parametrize("attr_q,attr_k,prefix", [("backbone", "momentum_backbone", ""),
                                                  ("encoder_q", "encoder_k", "module."),
                                                  ("online_encoder", "target_encoder", ""),
                                                  # the copy sorts first by length or name: only the ranking
                                                  # of momentum / EMA / key names below the online one picks q
                                                  ("student", "ema", ""), ("backbone", "teacher", ""),
                                                  ("encoder_q", "encoder_k", ""),
                                                  ("query_encoder", "key_encoder", "")])
def test_repo_engine_checkpoints(tmp_path, attr_q, attr_k, prefix):
    path, expected = _engine_checkpoint(tmp_path, attr_q, attr_k, prefix)
    layout, bb = extract_backbone(path)
    assert layout == ("moco" if prefix == "module." and attr_q == "encoder_q" else "repo")
    assert list(bb) == list(expected)
    for k, v in expected.items():
        assert torch.equal(bb[k], v), k


def test_unknown_layout_lists_top_level_keys(tmp_path):
    torch.save({"weights_foo": {"a.b": torch.zeros(1)}, "bar_epoch": 3}, tmp_path / "x.pth")
    with pytest.raises(UserError) as e:
        extract_backbone(str(tmp_path / "x.pth"))
    assert "weights_foo" in str(e.value) and "bar_epoch" in str(e.value)
    with pytest.raises(UserError, match="unknown checkpoint layout"):
        detect_layout({"state_dict": {"encoder.blocks.0.attn.qkv.weight": torch.zeros(1)}})


def test_method_mismatch_is_an_error(ref):
    with pytest.raises(UserError, match="looks like a 'swav'"):
        extract_backbone(_layouts(ref)["swav"], method="moco")
    with pytest.raises(UserError, match="unknown method"):
        extract_backbone(_layouts(ref)["swav"], method="nope")


def _expected_detectron2_table():
    """detectron2 names of every torchvision ResNet-50 key, enumerated independently of the converter."""
    table = {"conv1.weight": "stem.conv1.weight", "fc.weight": "stem.fc.weight", "fc.bias": "stem.fc.bias"}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for p in bn:
        table[f"bn1.{p}"] = f"stem.conv1.norm.{p}"
    for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        for b in range(blocks):
            src, dst = f"layer{stage}.{b}", f"res{stage + 1}.{b}"
            for c in (1, 2, 3):
                table[f"{src}.conv{c}.weight"] = f"{dst}.conv{c}.weight"
                for p in bn:
                    table[f"{src}.bn{c}.{p}"] = f"{dst}.conv{c}.norm.{p}"
            if b == 0:
                table[f"{src}.downsample.0.weight"] = f"{dst}.shortcut.weight"
                for p in bn:
                    table[f"{src}.downsample.1.{p}"] = f"{dst}.shortcut.norm.{p}"
    return table


def test_detectron2_mapping_every_resnet50_key():
    sd = torchvision.models.resnet50(weights=None).state_dict()
    table = _expected_detectron2_table()
    assert set(table) == set(sd) and len(sd) == 320
    out = torchvision_to_detectron2(sd)
    assert list(out) == [table[k] for k in sd]
    for k, v in sd.items():
        assert isinstance(out[table[k]], np.ndarray)
        np.testing.assert_array_equal(out[table[k]], v.numpy())
    # the spec's rows, literally
    spec_rows = {"conv1.weight": "stem.conv1.weight", "bn1.weight": "stem.conv1.norm.weight",
                 "layer1.0.conv1.weight": "res2.0.conv1.weight",
                 "layer1.0.bn3.running_var": "res2.0.conv3.norm.running_var",
                 "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
                 "layer1.0.downsample.1.bias": "res2.0.shortcut.norm.bias",
                 "layer4.2.bn2.weight": "res5.2.conv2.norm.weight", "fc.0.weight": "stem.fc.0.weight",
                 "bn1.num_batches_tracked": "stem.conv1.norm.num_batches_tracked"}
    got = torchvision_to_detectron2({k: torch.zeros(1) for k in spec_rows})
    assert list(got) == list(spec_rows.values())


def test_detectron2_pkl_file(ref, tmp_path):
    path = write_detectron2_pkl(torchvision_to_detectron2(ref), str(tmp_path / "out.pkl"))
    with open(path, "rb") as f:
        obj = pickle.load(f)
    assert set(obj) == {"model", "__author__", "matching_heuristics"}
    assert obj["matching_heuristics"] is True and obj["__author__"] == "MOCO"
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    # convert() writes the same mapping and the file round-trips to the torchvision tensors
    convert(_layouts(ref)["moco"], str(tmp_path / "moco.pkl"), "detectron2")
    layout, bb = extract_backbone(str(tmp_path / "moco.pkl"))
    assert layout == "detectron2" and all(torch.equal(bb[k], ref[k]) for k in ref)
    with pytest.raises(UserError, match=".pkl"):
        convert(_layouts(ref)["moco"], str(tmp_path / "moco.pth"), "detectron2")


def test_selfsup2mmdet_as_printed(tmp_path):
    """The seed's command, run verbatim from a folder that looks like the repo root (tools/ linked)."""
    os.symlink(os.path.join(REPO, "tools"), tmp_path / "tools")
    sd = torchvision.models.resnet50(weights=None).state_dict()
    sd = _rand_like(OrderedDict((k, v) for k, v in sd.items()), 3)  # includes fc.* (replaced by MoCo v2 head)
    sd.pop("fc.weight"), sd.pop("fc.bias")
    head = {"fc.0.weight": torch.randn(2048, 8), "fc.0.bias": torch.randn(2048), "fc.2.weight": torch.randn(128, 2048),
            "fc.2.bias": torch.randn(128)}
    q = {**sd, **head}
    torch.save({"epoch": 800, "arch": "resnet50", "optimizer": {},
                "state_dict": {**_prefixed(q, "module.encoder_q."), **_prefixed(q, "module.encoder_k."),
                               "module.queue": torch.randn(128, 32), "module.queue_ptr": torch.zeros(1)}},
               tmp_path / "moco_v2_800ep_pretrain.pth.tar")
    cmd = ("python -u tools/model_converters/selfsup2mmdet.py ./moco_v2_800ep_pretrain.pth.tar "
           "mocov2_r50_800ep_pretrain.pth --selfsup moco").split()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "module.encoder_q.layer1.0.conv1.weight -> layer1.0.conv1.weight" in r.stdout
    out = torch.load(tmp_path / "mocov2_r50_800ep_pretrain.pth", weights_only=False)
    assert list(out) == ["state_dict"] and list(out["state_dict"]) == list(sd)
    # mmengine's Pretrained init: take state_dict, strip ^module., load strict=False into the mmdet ResNet
    net = torchvision.models.resnet50(weights=None)
    res = net.load_state_dict(out["state_dict"], strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and res.unexpected_keys == []
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    # SwAV: raw file with heads -> backbone only (the original wrote nothing, spec §0)
    torch.save({**_prefixed(sd, "module."), "module.prototypes.weight": torch.randn(30, 128)}, tmp_path / "swav.pth.tar")
    r = subprocess.run(["python", "-u", "tools/model_converters/selfsup2mmdet.py", "swav.pth.tar", "swav_conv.pth",
                        "--selfsup", "swav"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert list(torch.load(tmp_path / "swav_conv.pth", weights_only=False)["state_dict"]) == list(sd)
    # bad input: one line
    r = subprocess.run(["python", "tools/model_converters/selfsup2mmdet.py", "missing.pth", "o.pth", "--selfsup",
                        "moco"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


@pytest.mark.parametrize("method", ["unigrad", "moco", "byol", "barlow", "simsiam"])
def test_own_pretraining_checkpoints_accept_their_method(ref, method):
    """This repo's papers/unigrad (``model`` with ``module.encoder.*`` + momentum copies, every method) and
    papers/rdm main_pretrain (``state_dict`` with ``backbone.*`` + ``momentum_backbone.*``) checkpoints convert
    with ``--selfsup`` naming the method they were trained with."""
    other = _rand_like(ref, 1)
    unigrad = {"epoch": 1, "F": None, "optimizer": {}, "model": {
        **_prefixed(ref, "module.encoder."), **_prefixed(other, "module.momentum_encoder."),
        "module.projector.0.weight": torch.randn(8, 512), "module.queue": torch.randn(4, 8)}}
    rdm = {"epoch": 1, "args": {"method": method}, "state_dict": {
        **_prefixed(ref, "backbone."), **_prefixed(other, "momentum_backbone."),
        "projector.0.weight": torch.randn(8, 512), "classifier.weight": torch.randn(10, 512)}}
    for obj in (unigrad, rdm):
        _, bb = extract_backbone(obj, method=method)
        assert list(bb) == list(ref) and all(torch.equal(bb[k], ref[k]) for k in ref)
    with pytest.raises(UserError, match="looks like a 'simsiam'"):
        extract_backbone(unigrad, method="swav")
