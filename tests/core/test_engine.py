"""The training engine: exact resume, atomic checkpoints, non-finite loss, readable load errors."""
import os

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from core.data import build_loader, seed_everything
from core.engine import EngineConfig, load_checkpoint, save_checkpoint, train
from core.engine.trainer import TrainingDiverged
from core.errors import UserError


class NoisyData(Dataset):
    """Random augmentation from torch's RNG, so the resumed run must restore RNG state to match."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.arange(n) % 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(4), self.y[i]


class Model(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 3))
        self.scale = scale

    def forward(self, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x) * self.scale, y)
        return loss, {"ce": loss.detach()}


def _run(out, epochs, resume="", seed=0, workers=0, stop=None, names=("checkpoint.pth",)):
    seed_everything(seed)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = build_loader(NoisyData(), 8, num_workers=workers, seed=0)
    lrs = []

    def before(step, total):
        for g in opt.param_groups:
            g["lr"] = 0.1 * (1 - step / total)
        lrs.append(g["lr"])

    cfg = EngineConfig(epochs=epochs, output_dir=str(out), resume=resume, print_freq=2, progress=False,
                       tensorboard=False, plot=False, stop_after_epochs=stop, ckpt_names=names)
    hist = train(model, opt, loader, cfg, before_step=before)
    return hist, model, lrs


def test_resume_continues_exactly(tmp_path):
    full, m_full, lrs_full = _run(tmp_path / "a", 3)
    _run(tmp_path / "b", 3, stop=1)  # interrupted after epoch 0
    resumed, m_res, lrs_res = _run(tmp_path / "b", 3, resume=str(tmp_path / "b" / "checkpoint.pth"), seed=123)
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in full]
    assert resumed[0]["train_loss"] != resumed[1]["train_loss"]
    assert lrs_res == lrs_full[3:]
    for p, q in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(p, q)
    lines = open(tmp_path / "b" / "log.txt").read().strip().splitlines()
    assert len(lines) == 3


def test_resume_with_workers_is_exact(tmp_path):
    full, _, _ = _run(tmp_path / "a", 2, workers=1)
    _run(tmp_path / "b", 2, workers=1, stop=1)
    resumed, _, _ = _run(tmp_path / "b", 2, resume="auto", workers=1)
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in full]


def test_auto_resume_uses_the_latest_name_with_per_epoch_files(tmp_path):
    names = ("checkpoint_{epoch:04d}.pth.tar", "latest.pth")
    full, _, _ = _run(tmp_path / "a", 3, names=names)
    _run(tmp_path / "b", 3, stop=2, names=names)
    assert sorted(os.listdir(tmp_path / "b"))[:3] == ["checkpoint_0000.pth.tar", "checkpoint_0001.pth.tar",
                                                      "latest.pth"]
    resumed, _, _ = _run(tmp_path / "b", 3, resume="auto", names=names)
    assert len(resumed) == 3 and all("_step_losses" not in h for h in resumed)
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in full]


def test_atomic_save_and_load_errors(tmp_path):
    path = str(tmp_path / "ck.pth")
    save_checkpoint({"a": torch.ones(2)}, path)
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(str(tmp_path / "broken.pth"))


def test_atomic_save_failure_keeps_previous_file(tmp_path):
    path = str(tmp_path / "ck.pth")
    save_checkpoint({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"v": Unpicklable()}, path)
    assert load_checkpoint(path)["v"] == 1 and os.listdir(tmp_path) == ["ck.pth"]


def test_non_finite_loss_stops_with_step_and_terms(tmp_path):
    model = Model(scale=float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = EngineConfig(epochs=1, output_dir=str(tmp_path), print_freq=100, progress=False, tensorboard=False)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 0: .*ce=nan"):
        train(model, opt, build_loader(NoisyData(), 8), cfg)
    assert not os.path.exists(tmp_path / "checkpoint.pth")


def test_resume_with_wrong_model_is_readable(tmp_path):
    _run(tmp_path, 1)
    model = nn.Linear(2, 2)
    model.forward = lambda b: (torch.zeros((), requires_grad=True), {})
    cfg = EngineConfig(epochs=2, output_dir=str(tmp_path), resume=str(tmp_path / "checkpoint.pth"),
                       progress=False, tensorboard=False)
    with pytest.raises(UserError, match="does not match the model: 2 missing keys"):
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), build_loader(NoisyData(), 8), cfg)


def test_resume_with_other_shapes_is_readable(tmp_path):
    from core.engine import load_model_state

    with pytest.raises(UserError, match=r"differ in shape, e.g. weight \(3, 2\) vs \(2, 2\)"):
        load_model_state(nn.Linear(2, 2), {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
