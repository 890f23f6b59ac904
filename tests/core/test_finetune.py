"""core.eval.finetune: frozen-backbone classifier behaviour and the originals' validation epochs."""
import torch

from core.backbones import build_backbone
from core.eval.finetune import Classifier, validates


def test_frozen_classifier_keeps_bn_in_eval_and_trains_fc_only():
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
    assert [e for e in range(10) if validates(e, 4, 10)] == [0, 4, 8, 9]
    assert [e for e in range(6) if validates(e, 2, 6)] == [0, 2, 4, 5]
    assert [e for e in range(3) if validates(e, 1, 3)] == [0, 1, 2]
    assert [e for e in range(1) if validates(e, 5, 1)] == [0]
