"""The zero-singular-value guard is opt-in (the default is the original formula), and the ImageNet filter keeps
the input dtype as the original (no casts) while the solo filter is built in fp32 as the original's
``torch.cuda.FloatTensor`` cast."""
import numpy as np
import pytest
import torch

from rdm_lib.imagenet_args import simsiam_parser
from rdm_lib.losses import imagenet_cos_term, rdm_solo_loss
from rdm_lib.models import ImageNetSimSiam
from rdm_lib.predictor import apply_imagenet, apply_solo, online_filter_solo, target_transform_solo
from rdm_lib.run_utils import guard_hint
from rdm_lib.solo_args import pretrain_config, pretrain_parser

from core.engine.trainer import TrainingDiverged

SOLO = ["--dataset", "cifar10", "--data_dir", "x", "--brightness", "0.4", "--contrast", "0.4", "--saturation",
        "0.4", "--hue", "0.1", "--optimizer", "sgd", "--method", "rdmsimsiam", "--scheduler", "warmup_cosine"]


def centred(n, d, seed):
    """A batch-centred N x D matrix (as after SimSiam's output BN): rank N - 1, one round-off singular value."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x - x.mean(0, keepdim=True)


def test_parsers_default_to_the_original_formula():
    a = simsiam_parser().parse_args(["DIR"])
    assert a.rdm_guard is False
    assert simsiam_parser().parse_args(["DIR", "--rdm-guard"]).rdm_guard is True
    assert simsiam_parser().parse_args(["DIR", "--no-rdm-guard"]).rdm_guard is False  # the old spelling
    assert pretrain_config(pretrain_parser().parse_args(SOLO))["guard"] is False
    assert pretrain_config(pretrain_parser().parse_args(SOLO + ["--rdm_guard"]))["guard"] is True
    assert ImageNetSimSiam("resnet_tiny", 16, 8, "poly").guard is False


@pytest.mark.parametrize("location,sigma", [("target", -1.0), ("online", -0.5)])
def test_default_imagenet_loss_is_unguarded_where_the_guard_acts(location, sigma):
    """Centred N < D batch: the guard changes the result, and the default is the guard-off (original) value."""
    p, z = centred(8, 20, 0), centred(8, 20, 1)
    default = imagenet_cos_term(p, z, "poly", location, sigma)
    assert torch.equal(default, imagenet_cos_term(p, z, "poly", location, sigma, guard=False))
    assert not torch.equal(default, imagenet_cos_term(p, z, "poly", location, sigma, guard=True))


def test_default_solo_loss_is_unguarded_where_the_guard_acts():
    p, z = centred(8, 20, 2), centred(8, 20, 3)
    default = rdm_solo_loss(p, z, "poly", "target", -1.0)
    assert torch.equal(default, rdm_solo_loss(p, z, "poly", "target", -1.0, guard=False))
    assert not torch.equal(default, rdm_solo_loss(p, z, "poly", "target", -1.0, guard=True))


def well_conditioned(n, d, seed):
    rng = np.random.default_rng(seed)
    k = min(n, d)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return (u * np.linspace(3.0, 0.5, k)) @ v.T


@pytest.mark.parametrize("shape", [(8, 20), (40, 12)])  # SVD branch and eigh branch
def test_imagenet_filter_keeps_float64(shape):
    """No casts in the ImageNet face: a float64 batch is filtered in float64 (to 1e-10 of NumPy float64;
    an fp32 detour would be off by ~1e-6)."""
    p, z = well_conditioned(*shape, 0), well_conditioned(*shape, 1)
    po, zo = apply_imagenet(torch.tensor(p), torch.tensor(z), "log_1", "online", 0.0)
    assert po.dtype == zo.dtype == torch.float64
    u, s, vh = np.linalg.svd(p, full_matrices=False)
    np.testing.assert_allclose(po.numpy(), (u * (s * np.log1p(s))) @ vh, rtol=0, atol=1e-10)
    _, zt = apply_imagenet(torch.tensor(p), torch.tensor(z), "poly", "target", -0.5)
    assert zt.dtype == torch.float64
    np.testing.assert_allclose(zt.numpy(), z @ (vh.T * s ** -0.5) @ vh, rtol=0, atol=1e-10)


def test_solo_filter_is_built_in_fp32_and_cast_back():
    """solo: the SVD runs in fp32 (the original's FloatTensor cast); the result has the input's dtype."""
    p = torch.tensor(well_conditioned(8, 20, 0))
    assert online_filter_solo(p, "poly", 1.0).dtype == torch.float32
    assert target_transform_solo(p, -1.0).dtype == torch.float32
    po, _ = apply_solo(p, p, "poly", "online", 1.0)
    zo = apply_solo(p, p, "poly", "target", 1.0)[1]
    assert po.dtype == zo.dtype == torch.float64


def test_guard_hint_is_one_line_and_only_when_unguarded():
    with pytest.raises(TrainingDiverged) as e:
        with guard_hint(True, "--rdm-guard"):
            raise TrainingDiverged("non-finite loss at step 3: loss=nan")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("non-finite loss at step 3") and "--rdm-guard" in msg
    assert "inf/NaN" in msg
    with pytest.raises(TrainingDiverged) as e:
        with guard_hint(False, "--rdm-guard"):
            raise TrainingDiverged("non-finite loss at step 3: loss=nan")
    assert str(e.value) == "non-finite loss at step 3: loss=nan"
