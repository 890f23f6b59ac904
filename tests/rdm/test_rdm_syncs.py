"""No host reads in the RDM training step (issue #13.5): forward + backward of each method with its spectral
filter, the optimizer step, the EMA update and the rank monitor's per-step hook read nothing back (the SVD /
eigh the method needs is linear algebra, not a host read)."""
import pytest
import torch

from core.engine.syncs import count_host_syncs
from core.optim import ema_momentum
from rdm_lib.diagnostics import RankMonitor
from rdm_lib.models import ImageNetSimSiam, build_solo_method


def solo(method, pred_type="poly", location="online", sigma=1.0, guard=False):
    return build_solo_method(method, backbone="resnet_tiny", num_classes=4, cifar=True, zero_init_residual=False,
                             proj_hidden_dim=16, proj_output_dim=16, pred_hidden_dim=8, pred_type=pred_type,
                             pred_location=location, sigma=sigma, guard=guard, momentum_classifier=True)


CASES = [
    ("imagenet", dict(pred_type="poly", location="target", sigma=-0.5, guard=False)),
    ("imagenet", dict(pred_type="log_1", location="online", sigma=0.0, guard=True)),   # N >= D: eigh branch
    ("imagenet", dict(pred_type="mlp", location="online", sigma=0.0, guard=False)),
    ("rdmsimsiam", dict(pred_type="poly", location="target", sigma=-1.0, guard=True)),
    ("rdmbyol", dict(pred_type="log_2", location="online", sigma=1.0, guard=False)),
    ("simsiam", {}),
    ("byol", {}),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_training_step_reads_nothing_back(tmp_path, kind, kw):
    torch.manual_seed(0)
    if kind == "imagenet":
        dim = 8 if kw["pred_type"] == "log_1" else 16  # batch 8: eigh branch at dim 8, SVD branch at 16
        model = ImageNetSimSiam("resnet_tiny", dim, 8, kw["pred_type"], kw["location"], kw["sigma"], kw["guard"])
    else:
        model = solo(kind, **kw)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    monitor = RankMonitor(lambda: model, str(tmp_path), True)
    g = torch.Generator().manual_seed(1)
    batch = ([torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)],
             torch.arange(8) % 4)
    with count_host_syncs() as c:
        for step in range(2):
            loss, logs = model(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(model, "ema_update"):
                model.ema_update(ema_momentum(0.99, step, 4, 1.0))
            monitor.after_step(step, 4)
    assert c.count == 0, c.where
    assert torch.isfinite(loss.detach()) and all(torch.is_tensor(v) or isinstance(v, float) for v in logs.values())
