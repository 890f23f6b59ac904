"""The run set-up door (core.engine.lifecycle), atomic checkpoint copies, errors on every rank, host-sync count."""
import math
import os
import stat
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from core import dist
from core.dist.syncbn import GroupBatchNorm, convert_group_bn
from core.dist.testing import run_ranks
from core.engine import EngineConfig, copy_checkpoint, remove_stale_temp_files, save_checkpoint, setup_run, train
from core.engine.syncs import count_host_syncs
from core.engine.trainer import TrainingDiverged
from core.errors import UserError
from core.losses import barlow_twins_loss, nt_xent, vicreg_loss


def _net():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_group_bn_conversion_keeps_parameter_objects():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # built BEFORE the conversion, as a careless script would
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    conv = convert_group_bn(net)
    assert isinstance(conv[1], GroupBatchNorm)
    assert {id(p) for p in conv.parameters()} == ids
    conv(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert float(conv[1].bias.abs().sum()) > 0  # the BN bias really trains


def _setup_worker(rank, world):
    torch.manual_seed(100 + rank)  # every rank starts from a different random student, as with seed + rank
    ctx = dist.DistContext(rank, rank, world, torch.device("cpu"))
    run = setup_run(ctx, _net(), sync_bn=True, make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.5),
                    teachers={"teacher": lambda s: _copy(s)})
    opt_ids = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    all_in = all(id(p) in opt_ids for p in trainable)
    before = [p.detach().clone() for p in trainable]
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
    run.optimizer.zero_grad()
    run.wrapped(x).pow(2).sum().backward()
    run.optimizer.step()
    changed = all(not torch.equal(b, p) for b, p in zip(before, trainable))
    return {"all_in": all_in, "changed": changed, "bn": type(run.model[1]).__name__,
            "student": [p.detach().clone() for p in run.model.parameters()],
            "teacher": [p.detach().clone() for p in run.teachers["teacher"].parameters()],
            "teacher_grad": any(p.requires_grad for p in run.teachers["teacher"].parameters())}


def _copy(module):
    import copy

    return copy.deepcopy(module)


def test_setup_run_two_ranks_optimizer_teacher_and_bn():
    r0, r1 = run_ranks(_setup_worker, 2)
    for r in (r0, r1):
        assert r["all_in"] and r["changed"] and r["bn"] == "GroupBatchNorm" and not r["teacher_grad"]
    # the teacher was built from the broadcast student: identical on both ranks
    for a, b in zip(r0["teacher"], r1["teacher"]):
        assert torch.equal(a, b)
    # after one DDP step the students are still identical
    for a, b in zip(r0["student"], r1["student"]):
        assert torch.equal(a, b)


def test_copy_checkpoint_atomic_and_follows_umask(tmp_path):
    src = save_checkpoint({"a": torch.arange(3)}, str(tmp_path / "latest.pth"))
    old = os.umask(0o022)
    try:
        dst = copy_checkpoint(src, str(tmp_path / "named.pth"))
    finally:
        os.umask(old)
    assert torch.equal(torch.load(dst)["a"], torch.arange(3))
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o644
    # a copy whose source vanishes mid-way leaves the old destination intact and no temp file
    with pytest.raises(FileNotFoundError):
        copy_checkpoint(str(tmp_path / "missing.pth"), dst)
    assert torch.equal(torch.load(dst)["a"], torch.arange(3))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]


def test_stale_temp_files_removed(tmp_path):
    (tmp_path / ".tmp_abc.pth").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.pth").write_bytes(b"x")
    gone = remove_stale_temp_files(str(tmp_path))
    assert [os.path.basename(g) for g in gone] == [".tmp_abc.pth"]
    assert os.listdir(tmp_path) == ["keep.pth"]


class _Toy(nn.Module):
    def __init__(self, fail_svd=False):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.fail_svd = fail_svd

    def forward(self, batch):
        x = batch[0]
        z = self.lin(x)
        if self.fail_svd:
            torch.linalg.svd(torch.full((3, 3), float("nan")))
            raise torch.linalg.LinAlgError("svd did not converge")  # some LAPACK builds return NaN instead
        return nt_xent(z, z.flip(0), gather=False), {"lr_like": 0.5}


def _loader(n=8):
    ds = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def test_engine_rejects_negative_epochs(tmp_path):
    with pytest.raises(UserError, match="epochs"):
        EngineConfig(epochs=-1, output_dir=str(tmp_path))
    with pytest.raises(UserError, match="max steps"):
        EngineConfig(epochs=1, output_dir=str(tmp_path), max_steps_per_epoch=-2)


def test_linalg_error_is_the_non_finite_error(tmp_path):
    m = _Toy(fail_svd=True)
    cfg = EngineConfig(epochs=1, output_dir=str(tmp_path), tensorboard=False, progress=False, plot=False)
    with pytest.raises(TrainingDiverged, match="non-finite values at step 0"):
        train(m, torch.optim.SGD(m.parameters(), lr=0.1), _loader(), cfg)


def test_after_save_called_after_each_checkpoint(tmp_path):
    m = _Toy()
    seen = []
    cfg = EngineConfig(epochs=2, output_dir=str(tmp_path), tensorboard=False, progress=False, plot=False)
    train(m, torch.optim.SGD(m.parameters(), lr=0.1), _loader(), cfg,
          after_save=lambda e: seen.append((e, torch.load(tmp_path / "checkpoint.pth", weights_only=False)["epoch"])))
    assert seen == [(0, 1), (1, 2)]


def test_clip_grad_applies_without_amp(tmp_path):
    m = _Toy()
    w0 = m.lin.weight.detach().clone()
    cfg = EngineConfig(epochs=1, output_dir=str(tmp_path), clip_grad=1e-3, max_steps_per_epoch=1,
                       tensorboard=False, progress=False, plot=False)
    train(m, torch.optim.SGD(m.parameters(), lr=1.0), _loader(), cfg)
    moved = torch.cat([(m.lin.weight - w0).flatten(), m.lin.bias.flatten() * 0])
    # plain SGD with lr 1 moves the parameters by the clipped gradient: total norm <= 1e-3 (weight + bias)
    assert 0 < float(moved.norm()) <= 1e-3 + 1e-9


def test_train_step_has_no_host_reads():
    m = _Toy()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    with count_host_syncs() as c:
        loss, _ = m((x,))
        loss.backward()
        opt.step()
    assert c.count == 0, c.where
    with count_host_syncs() as c:
        bool(loss > 0)
        x[x > 0]
    assert c.count == 2


def test_losses_with_a_batch_of_one():
    z = torch.randn(1, 5)
    for fn in (barlow_twins_loss, vicreg_loss):
        with pytest.raises(UserError, match="at least 2"):
            fn(z, z, gather=False)


def test_nt_xent_positive_targets_by_hand():
    # with z2 == z1 and orthogonal rows, the positive of view i is i + n: loss = CE with that target
    z1 = torch.eye(3)
    loss = nt_xent(z1, z1.clone(), tau=1.0, gather=False)
    # each row: logits are 1 for the positive and 0 for the 4 others: -log(e / (e + 4))
    expected = -math.log(math.e / (math.e + 4))
    assert torch.allclose(loss, torch.tensor(float(expected)))


def test_per_process_batch_warns_and_floors(capsys):
    assert dist.per_process_batch(10, 4) == 2
    assert "not divisible by 4" in capsys.readouterr().err
    assert dist.per_process_batch(8, 4) == 2
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="smaller than the 4 processes"):
        dist.per_process_batch(3, 4)


_NONMAIN = r'''
import sys
from core.dist import setup_for_distributed
from core.errors import UserError, cli_main
setup_for_distributed(False)   # this process is a rank != 0: plain print is silenced
@cli_main
def main(kind):
    if kind == "user":
        raise UserError("bad image 'x.jpg'")
    open("/proc/definitely/not/here/out.txt", "w")
main(sys.argv[1])
'''


@pytest.mark.parametrize("kind, line", [("user", "error: bad image 'x.jpg'"),
                                        ("os", "error: cannot use '/proc/definitely/not/here/out.txt': "
                                               "No such file or directory")])
def test_error_line_printed_on_a_non_main_rank(kind, line):
    r = subprocess.run([sys.executable, "-c", _NONMAIN, kind], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [line]


def test_peer_wait_times_out_with_one_line(tmp_path):
    code = ("import os\nos.environ['SSL_DIST_TIMEOUT']='3'\nfrom core.dist import init_process_group, free_port\n"
            "from core.errors import cli_main\n"
            "@cli_main\ndef main():\n    init_process_group(0, 2, f'tcp://127.0.0.1:{free_port()}')\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert lines[0].startswith("rank 0: joining 2 processes at tcp://127.0.0.1:")
    assert lines[-1].startswith("error: rank 0: the other processes of a 2-process run did not join")
