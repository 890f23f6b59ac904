"""CLI surfaces (every flag and default of the originals), run names, the startup line and the per-epoch lr
(hand-computed values)."""
import math

import pytest

from au_lib.config import (epoch_lr, lincls_parser, lincls_save_folder, moco_parser, optimize_line,
                           resolve_loss_terms, run_name)

MOCO_DEFAULTS = dict(arch="resnet50", workers=32, epochs=200, start_epoch=0, batch_size=128, lr=0.03,
                     schedule=[120, 160], momentum=0.9, weight_decay=1e-4, print_freq=50, resume="",
                     world_size=-1, rank=-1, dist_url="tcp://localhost:10001", dist_backend="nccl", seed=None,
                     gpus=None, multiprocessing_distributed=False, moco_dim=128, moco_k=65536, moco_m=0.999,
                     moco_contr_w=0, moco_contr_tau=0.07, moco_align_w=3, moco_align_alpha=2, moco_unif_w=1,
                     moco_unif_t=3, moco_unif_no_intra_batch=False, mlp=False, aug_plus=False, cos=False)
LINCLS_DEFAULTS = dict(arch="resnet50", workers=32, epochs=100, start_epoch=0, batch_size=256, lr=30.0,
                       schedule=[60, 80], momentum=0.9, weight_decay=0.0, print_freq=50, resume="",
                       evaluate=False, world_size=-1, rank=-1, dist_url="tcp://localhost:10001",
                       dist_backend="nccl", seed=None, gpus=None, multiprocessing_distributed=False,
                       pretrained="")


def test_moco_defaults():
    a = moco_parser().parse_args(["DIR"])
    assert a.data == "DIR"
    for k, v in MOCO_DEFAULTS.items():
        assert getattr(a, k) == v, k


def test_moco_has_no_moco_t_or_gpu_flag():
    p = moco_parser()
    options = {s for a in p._actions for s in a.option_strings}
    assert "--moco-t" not in options and "--gpu" not in options and "--gpus" in options
    with pytest.raises(SystemExit):
        p.parse_args(["--moco-t", "0.2", "D"])
    a = p.parse_args(["D", "-a", "resnet18", "-j", "4", "-b", "64", "--learning-rate", "0.06", "--wd", "0",
                      "-p", "10", "--gpus", "0", "1", "2", "3"])
    assert (a.arch, a.workers, a.batch_size, a.lr, a.weight_decay, a.print_freq, a.gpus) == \
        ("resnet18", 4, 64, 0.06, 0.0, 10, [0, 1, 2, 3])


def test_lincls_defaults():
    a = lincls_parser().parse_args(["DIR"])
    for k, v in LINCLS_DEFAULTS.items():
        assert getattr(a, k) == v, k
    assert lincls_parser().parse_args(["-e", "D"]).evaluate


def test_run_name_and_zero_weight_switches_term_off():
    a = moco_parser().parse_args(["D"])
    assert run_name(a) == "mocom0.999_align3alpha2_unif1t3_b128_lr0.03_e120,160,200"
    assert a.moco_contr_tau is None and a.moco_align_alpha == 2 and a.moco_unif_t == 3
    assert optimize_line(a) == "=> Optimize:\n\t3 * loss_align(alpha=2)\n\t + 1 * loss_uniform(t=3)"
    a = moco_parser().parse_args(["--moco-contr-w", "1", "--moco-align-w", "0", "--moco-unif-w", "0",
                                  "--moco-contr-tau", "0.2", "--mlp", "--aug-plus", "--cos", "D"])
    assert run_name(a) == "mocom0.999_contr1tau0.2_mlp_aug+_cos_b128_lr0.03_e120,160,200"
    assert a.moco_align_alpha is None and a.moco_unif_t is None and a.moco_contr_tau == 0.2
    assert optimize_line(a) == "=> Optimize:\n\t1 * loss_contrastive(tau=0.2)"
    a = moco_parser().parse_args(["--moco-unif-no-intra-batch", "--moco-unif-t", "2", "D"])
    terms = resolve_loss_terms(a)
    assert "unif1t2(no-intra-batch)" in terms
    assert "loss_uniform_no_intra_batch(t=2)" in optimize_line(a)
    # all three terms: separator "\n\t + " between them (as the original's "\n\t + ".join)
    a = moco_parser().parse_args(["--moco-contr-w", "0.5", "D"])
    assert optimize_line(a) == ("=> Optimize:\n\t0.5 * loss_contrastive(tau=0.07)\n\t + 3 * loss_align(alpha=2)"
                                "\n\t + 1 * loss_uniform(t=3)")
    # empty --schedule: "e{schedule joined by ','},{epochs}" keeps its comma, as the original format string
    a = moco_parser().parse_args(["--cos", "--schedule", "--epochs", "100", "D"])
    assert run_name(a) == "mocom0.999_align3alpha2_unif1t3_cos_b128_lr0.03_e,100"


def test_epoch_lr_step_and_cosine_by_hand():
    assert epoch_lr(0.03, 0, 200, [120, 160]) == pytest.approx(0.03)
    assert epoch_lr(0.03, 119, 200, [120, 160]) == pytest.approx(0.03)
    assert epoch_lr(0.03, 120, 200, [120, 160]) == pytest.approx(0.003)
    assert epoch_lr(0.03, 160, 200, [120, 160]) == pytest.approx(0.0003)
    assert epoch_lr(30.0, 80, 100, [60, 80]) == pytest.approx(0.3)
    assert epoch_lr(0.03, 0, 200, [120, 160], cos=True) == pytest.approx(0.03)
    assert epoch_lr(0.03, 100, 200, [120, 160], cos=True) == pytest.approx(0.015)
    assert epoch_lr(0.03, 50, 200, [], cos=True) == pytest.approx(0.03 * (2 + math.sqrt(2)) / 4)


def test_lincls_save_folder_layout():
    got = lincls_save_folder("results/run/checkpoint_0199.pth.tar", 256, 30.0, [60, 80], 100)
    assert got == "results/run/lincls/checkpoint_0199.pth.tar/b256_lr30_e60,80,100"
    assert lincls_save_folder("r/c.pth.tar", 256, 30.0, [], 100) == "r/lincls/c.pth.tar/b256_lr30_e,100"


def test_launch_prepare_divides_batch_and_workers(monkeypatch):
    from au_lib import launch
    from core.errors import UserError

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    a = moco_parser().parse_args(["D", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                                  "--gpus", "0", "1", "2", "3"])
    assert launch.prepare(a) == 4
    assert (a.batch_size, a.workers, launch.global_batch(a)) == (32, 8, 128)
    a = moco_parser().parse_args(["D", "-b", "130", "--multiprocessing-distributed", "--gpus", "0", "1", "2", "3"])
    with pytest.raises(UserError, match="divisible"):
        launch.prepare(a)
    a = moco_parser().parse_args(["D", "--gpus", "0", "1"])  # no --multiprocessing-distributed: one process
    launch.prepare(a)
    assert a.batch_size == 128 and launch.global_batch(a) == 128


def test_two_crops_pipelines_in_original_order():
    from torchvision.transforms import v2 as T

    from au_helpers import load_script
    from core.augment import ColorJitter, GaussianBlur

    main_moco = load_script("main_moco")
    v1 = main_moco.two_crops(False, 224)
    v2 = main_moco.two_crops(True, 224)
    assert len(v1) == 2 and v1.transforms[0] is v1.transforms[1]
    t1 = v1.transforms[0].transforms
    assert [type(t) for t in t1[:4]] == [T.RandomResizedCrop, T.RandomGrayscale, ColorJitter, T.RandomHorizontalFlip]
    assert t1[0].scale == (0.2, 1.0) and t1[1].p == 0.2 and t1[2].hue == (-0.4, 0.4)
    t2 = v2.transforms[0].transforms
    assert [type(t) for t in t2[:5]] == [T.RandomResizedCrop, T.RandomApply, T.RandomGrayscale, T.RandomApply,
                                         T.RandomHorizontalFlip]
    assert t2[1].p == 0.8 and isinstance(t2[1].transforms[0], T.ColorJitter) and t2[1].transforms[0].hue == (-0.1, 0.1)
    assert t2[3].p == 0.5 and isinstance(t2[3].transforms[0], GaussianBlur) and t2[3].transforms[0].sigma == (0.1, 2.0)
