"""Every config parses and builds; the four released configs keep every original value; overrides work."""
import os

import pytest
import torch

from core.errors import UserError
from unigrad_lib.config import LOSS_NAMES, load_config, uses_momentum_encoder
from unigrad_lib.model import SiameseNet

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(HERE, "..", "..", "papers", "unigrad", "configs")
CONFIGS = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))
TINY = ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=32", "projector_output_dim=16",
        "queue_size=24", "predictor_hidden_dim=8", "whole_batch_size=8"]

COMMON = dict(seed=42, launcher="pytorch", port=28500, train_datadir="/path/to/imagenet/train/data",
              test_datadir="/path/to/imagenet/val/data", n_workers=5, arch="resnet50", projector_input_dim=2048,
              projector_hidden_dim=2048, projector_output_dim=2048, num_layers=3, base_momentum=0.996,
              resume_path=None, base_lr=0.05, whole_batch_size=1024, momentum=0.9, weight_decay=1e-4, epochs=100,
              warmup_epochs=5, print_freq=50, test_freq=10, save_freq=10, knn_k=200, knn_t=0.1, knn_eval=False)
ORIGINAL = {
    "unigrad.py": dict(loss="loss_unigrad", lambd=100.0, rho=0.99, eps=0.3, moco_t=None),
    "simclr_grad_mm.py": dict(loss="loss_simclr_grad_mm", lambd=None, rho=None, eps=None, moco_t=0.2),
    "byol_directpred_grad.py": dict(loss="loss_byol_directpred_grad", lambd=None, rho=0.99, eps=0.3, moco_t=None),
    "barlow_twins_grad_mm.py": dict(loss="loss_barlow_twins_grad_mm", lambd=50, rho=None, eps=None, moco_t=None),
}


def test_every_table_row_has_a_config():
    names = {load_config(os.path.join(CONFIG_DIR, c)).loss for c in CONFIGS}
    for method in ("moco", "simclr", "simsiam", "byol", "vicreg", "barlow_twins"):
        forms = {LOSS_NAMES[n][1] for n in names if LOSS_NAMES[n][0] == method}
        assert forms == {"loss", "grad", "grad_mm"}, method
    assert "unigrad.py" in CONFIGS and "unigrad_cutmix.py" in CONFIGS
    cut = load_config(os.path.join(CONFIG_DIR, "unigrad_cutmix.py"))
    assert cut.cutmix is True and cut.epochs == 800 and cut.method == "unigrad"


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_configs_keep_every_value(name):
    cfg = load_config(os.path.join(CONFIG_DIR, name))
    for k, v in {**COMMON, **ORIGINAL[name]}.items():
        assert cfg[k] == v and type(cfg[k]) is type(v), (k, cfg[k], v)
    assert isinstance(cfg.weight_decay, float) and cfg.lambd == ORIGINAL[name]["lambd"]
    assert cfg.form == "grad_mm"  # every released config uses the momentum encoder


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_steps(name):
    torch.manual_seed(0)
    cfg = load_config(os.path.join(CONFIG_DIR, name), TINY)
    model = SiameseNet(cfg)
    assert hasattr(model, "momentum_encoder") == uses_momentum_encoder(cfg.method, cfg.form)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loss, logs = model(([x1, x2], torch.zeros(4)))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.encoder.conv1.weight.grad is not None
    assert {"eff_rank", "align", "uniform", "view_sim"} <= set(logs)


def test_resnet50_projector_shapes_and_zero_init():
    cfg = load_config(os.path.join(CONFIG_DIR, "unigrad.py"))
    m = SiameseNet(cfg)
    lin = [l for l in m.projector if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features, l.bias is not None) for l in lin] == \
        [(2048, 2048, False), (2048, 2048, False), (2048, 2048, True)]
    assert sum(isinstance(l, torch.nn.BatchNorm1d) for l in m.projector) == 2
    assert torch.count_nonzero(m.encoder.layer1[0].bn3.weight) == 0  # zero_init_residual
    assert m.F.shape == (2048, 2048)
    for p, q in zip(m.encoder.parameters(), m.momentum_encoder.parameters()):
        assert torch.equal(p, q) and not q.requires_grad


def test_overrides_and_form_switch():
    path = os.path.join(CONFIG_DIR, "byol_directpred_grad.py")
    cfg = load_config(path, ["form=loss", "weight_decay=1e-5", "knn_eval=true", "resume_path=null"])
    assert cfg.loss == "loss_byol" and cfg.method == "byol" and cfg.form == "loss"
    assert cfg.weight_decay == 1e-5 and cfg.knn_eval is True and cfg.predictor_hidden_dim == 4096
    assert load_config(path, ["form=grad"]).loss == "loss_byol_directpred_grad_nomm"
    assert load_config(os.path.join(CONFIG_DIR, "simclr_grad_mm.py"), ["form=grad"]).loss == "loss_simclr_grad"
    with pytest.raises(UserError, match="unknown config key"):
        load_config(path, ["lambda=3"])
    with pytest.raises(UserError, match="key=value"):
        load_config(path, ["lambd"])
    with pytest.raises(UserError, match="needs a number for 'moco_t'"):
        load_config(path, ["loss=loss_simclr_grad_mm", "moco_t=null"])
    with pytest.raises(UserError, match="does not exist"):
        load_config(os.path.join(CONFIG_DIR, "nope.py"))
    with pytest.raises(UserError, match="'warmup_epochs' must be a number"):
        load_config(path, ["warmup_epochs=abc"])
    with pytest.raises(UserError, match="'warmup_epochs' must be a number"):
        load_config(path, ["warmup_epochs=-1"])
    assert load_config(path, ["epochs=2"]).warmup_epochs == 5  # longer than the run: allowed, as the original
    for bad in ("knn_freq=abc", "diag_freq=-1", "projector_hidden_dim=abc", "queue_size=0", "num_samples=2.5",
                "cutmix=maybe", "knn_eval=2", "cutmix_alpha=abc"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config(path, [bad])
    with pytest.raises(UserError, match="must lie in"):
        load_config(path, ["rho=1.5"])
    with pytest.raises(UserError, match="must be positive"):
        load_config(path, ["loss=loss_simclr_grad_mm", "moco_t=0"])
    with pytest.raises(UserError, match="unknown loss"):
        load_config(path, ["loss=loss_foo"])
