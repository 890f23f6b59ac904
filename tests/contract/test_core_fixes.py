"""Issue #11 item 1: SyncBN conversion on CUDA keeps layers that are already synchronised, the no-effect
warnings come from the main rank only, and UniGrad's knn_eval names a missing 'model' entry."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from core import dist
from core.dist.syncbn import GroupBatchNorm
from core.flags import warn_no_effect

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _as_two_ranks(monkeypatch):
    monkeypatch.setattr(dist, "is_dist", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)


def test_cuda_conversion_skips_synchronised_layers(monkeypatch):
    """device_type='cuda' (the layers are only built, never run, so this works on CPU): the plain BN becomes
    nn.SyncBatchNorm with the same Parameter objects; an nn.SyncBatchNorm with its own group and a
    GroupBatchNorm stay the very same objects."""
    _as_two_ranks(monkeypatch)
    group = object()  # stands for a bunch process group: it must survive the conversion untouched
    own = nn.SyncBatchNorm(4, affine=False, process_group=group)
    gbn = GroupBatchNorm(4)
    plain = nn.BatchNorm2d(3)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), plain, nn.Sequential(nn.Linear(3, 4), own), gbn)
    w, b = plain.weight, plain.bias
    out = dist.convert_sync_bn(net, device_type="cuda")
    assert type(out[1]) is nn.SyncBatchNorm and out[1].weight is w and out[1].bias is b
    assert out[1].process_group is None  # the global group, as convert_sync_batchnorm(model)
    assert out[2][1] is own and own.process_group is group
    assert out[3] is gbn
    # converting twice changes nothing (TWIST's head BNs are built synchronised, setup_run converts again)
    ids = [id(m) for m in out.modules()]
    again = dist.convert_sync_bn(out, device_type="cuda")
    assert [id(m) for m in again.modules()] == ids


def test_cpu_conversion_also_skips_synchronised_layers(monkeypatch):
    _as_two_ranks(monkeypatch)
    gbn = GroupBatchNorm(4, process_group="bunch")
    out = dist.convert_sync_bn(nn.Sequential(nn.BatchNorm1d(4), gbn), device_type="cpu")
    assert type(out[0]) is GroupBatchNorm and out[1] is gbn and gbn.process_group == "bunch"


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--reduce-mean", dest="reduce_mean", type=int, default=0)
    return p


@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0), ("", 1)])
def test_no_effect_warning_main_rank_only(monkeypatch, capsys, rank, lines):
    if rank:
        monkeypatch.setenv("RANK", rank)
    else:
        monkeypatch.delenv("RANK", raising=False)
    p = _parser()
    hits = warn_no_effect(p.parse_args(["--reduce-mean", "1"]), p, {"reduce_mean": "unused"})
    assert hits == ["reduce_mean"]  # every rank knows which flags were ignored
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: --reduce-mean=1 has no effect (unused)"] * lines


def test_unigrad_knn_eval_names_the_missing_model_entry(tmp_path):
    ck = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, ck)
    r = subprocess.run([sys.executable, "pretrain.py", "configs/unigrad.py", "train_datadir=synthetic",
                        "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128", "image_size=16",
                        "num_samples=16", "whole_batch_size=4", "n_workers=0", "knn_eval=True", f"resume_path={ck}",
                        f"work_dir={tmp_path / 'w'}"],
                       cwd=os.path.join(REPO, "papers", "unigrad"), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == \
        f"error: checkpoint '{ck}' has no 'model' entry (keys: ['state_dict'])"
    assert "Traceback" not in r.stderr


def test_peer_lost_rank_exits_2_without_an_error_line(monkeypatch, capsys):
    from core.errors import cli_main

    monkeypatch.setenv("RANK", "0")

    @cli_main
    def lost():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:3971")

    with pytest.raises(SystemExit) as e:
        lost()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "rank 0: stopping: another process of this run ended first (its own output says why: an error line, "
        "or a kill)"]

    class Exited(Exception):  # torch.multiprocessing's ProcessExitedException carries exit_code
        exit_code = 2

    @cli_main
    def spawned():
        raise Exited("process 1 terminated with exit code 2")

    with pytest.raises(SystemExit) as e:
        spawned()
    assert e.value.code == 2 and capsys.readouterr().err == ""  # the child printed its own line

    @cli_main
    def other():
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):  # anything else keeps its traceback
        other()
