"""Two gloo processes against one process on the global batch: the bunch BN grouping and the loss /
parameter gradients of every stage (spec 3.3, 4.1)."""
import os

import pytest
import torch
import torch.multiprocessing as mp

import twist_dist_worker as W
from core import dist


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("twist_dist")
    mp.spawn(W.run, args=(2, dist.free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def bn_reference(x, w):
    """Plain (non-distributed) BatchNorm over the rows of one group."""
    bn = torch.nn.BatchNorm1d(x.shape[1], affine=False).double()
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * w).sum().backward()
    return y.detach(), x.grad, bn.running_mean, bn.running_var


@pytest.mark.parametrize("name,groups", [("pair", [[0, 1]]), ("single", [[0], [1]])])
def test_bunch_bn_statistics_follow_groups(results, name, groups):
    x, w = W.bn_inputs(2)
    B = W.B
    for ranks in groups:
        rows = torch.cat([torch.arange(r * B, (r + 1) * B) for r in ranks])
        y, g, rm, rv = bn_reference(x[rows], w[rows])
        for i, r in enumerate(ranks):
            got = results[r]["bn"][name]
            torch.testing.assert_close(got["y"], y[i * B:(i + 1) * B], rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(got["grad"], g[i * B:(i + 1) * B], rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(got["rm"], rm, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got["rv"], rv, rtol=1e-9, atol=1e-12)


def test_bunch_groups_layout():
    from twist_lib.head import bunch_rank_groups
    from core.errors import UserError

    assert bunch_rank_groups(8, 128, 256) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert bunch_rank_groups(32, 60, 240) == [list(range(i, i + 4)) for i in range(0, 32, 4)]
    assert bunch_rank_groups(1, 128, 256) == [[0]]  # one process: the bunch is the world
    with pytest.raises(UserError):
        bunch_rank_groups(8, 60, 250)
    with pytest.raises(UserError):
        bunch_rank_groups(6, 64, 256)


def single_process(mode):
    from twist_lib.builder import build_twist
    from twist_lib.model import TwistMethod
    from twist_lib import loss as L

    args = W.model_args()
    crops, labels = W.model_inputs(2)  # float64 from here on
    torch.manual_seed(0)
    model = build_twist(args, "cpu", None, distributed=False)
    teacher = None
    if mode == "teacher":
        torch.manual_seed(5)
        teacher = build_twist(args, "cpu", None, distributed=False)
    if mode == "selflabel":
        # per-rank CE (threshold per GPU batch), averaged over ranks by DDP
        views = list(model.logits(crops).chunk(len(crops)))
        per = crops[0].shape[0] // 2
        losses = [L.self_label_loss([v[r * per:(r + 1) * per] for v in views], 0.5)["final"] for r in range(2)]
        loss = sum(losses) / 2
    else:
        method = TwistMethod(lam1=-0.6 if mode == "teacher" else 0.0, mme_epochs=1, teacher=teacher)
        model.attach(method)
        loss, _ = model((crops, labels))
    loss.backward()
    torch.set_default_dtype(torch.float32)
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["twist", "teacher", "selflabel"])
def test_two_processes_equal_one_process_on_global_batch(results, mode):
    loss, grads = single_process(mode)
    if mode != "selflabel":  # the TWIST loss is a global-batch quantity on every rank
        for r in range(2):
            torch.testing.assert_close(results[r]["model"][mode]["loss"], loss, rtol=1e-9, atol=1e-12)
    else:
        avg = (results[0]["model"][mode]["loss"] + results[1]["model"][mode]["loss"]) / 2
        torch.testing.assert_close(avg, loss, rtol=1e-9, atol=1e-12)
    got = results[0]["model"][mode]["grads"]
    assert set(got) == set(grads)
    for n in grads:
        torch.testing.assert_close(got[n], grads[n], rtol=1e-7, atol=1e-10, msg=lambda m: f"{n}: {m}")
        torch.testing.assert_close(results[1]["model"][mode]["grads"][n], got[n], rtol=1e-6, atol=1e-8)
