"""Argument surfaces: the scripts' python commands (printed by PYTHON=echo) parse to the values of spec §4b,
and the ImageNet scripts keep every flag and default of the originals (spec §3a, §3c)."""
import os
import shlex
import subprocess

import pytest

from rdm_lib.imagenet_args import lincls_parser, simsiam_parser
from rdm_lib.solo_args import pretrain_config, pretrain_parser

RDM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))


def script_argv(script, *pos, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "DEVICES", "EXTRA_ARGS", "PRETRAINED")}
    e.update(PYTHON="echo", **(env or {}))
    out = subprocess.run(["sh", script, *pos], cwd=RDM, env=e, capture_output=True, text=True, check=True)
    argv = shlex.split(out.stdout)
    return argv[0], argv[1:]


def cfg_of(script, *pos):
    prog, argv = script_argv(script, *pos)
    assert prog.endswith("main_pretrain.py")
    return pretrain_config(pretrain_parser().parse_args(argv))


def test_cifar_rdmsimsiam_script():
    c = cfg_of("bash_files/pretrain/cifar/rdmsimsiam.sh", "cifar10", "400", "poly", "target", "-1")
    assert (c["dataset"], c["max_epochs"], c["pred_type"], c["pred_location"], c["sigma"]) == \
        ("cifar10", 400, "poly", "target", -1.0)
    assert c["name"] == "rdmsimsiam-cifar10-400ep-poly_-1" and c["method"] == "rdmsimsiam"
    assert (c["optimizer"], c["lr"], c["classifier_lr"], c["weight_decay"], c["batch_size"]) == \
        ("sgd", 0.5, 0.1, 1e-5, 256)
    assert (c["proj_hidden_dim"], c["proj_output_dim"], c["zero_init_residual"]) == (2048, 2048, True)
    assert c["scheduler"] == "warmup_cosine" and c["devices"] == [0] and c["data_dir"] == "./datasets"
    assert c["precision"] == "16" and c["wandb"] and c["save_checkpoint"] and c["auto_resume"]
    pl = c["pipelines"]
    assert len(pl) == 2 and all(p["crop_size"] == 32 and p["num_crops"] == 1 for p in pl)
    assert [p["saturation"] for p in pl] == [0.4, 0.4] and [p["gaussian_prob"] for p in pl] == [0.0, 0.0]
    assert [p["solarization_prob"] for p in pl] == [0.0, 0.0]
    assert all((p["brightness"], p["contrast"], p["hue"], p["color_jitter_prob"], p["gray_scale_prob"],
                p["min_scale"]) == (0.4, 0.4, 0.1, 0.8, 0.2, 0.08) for p in pl)


def test_cifar_rdmbyol_script():
    c = cfg_of("bash_files/pretrain/cifar/rdmbyol.sh", "cifar100", "400", "poly", "target", "-1")
    assert c["method"] == "rdmbyol" and c["dataset"] == "cifar100"
    assert (c["optimizer"], c["grad_clip_lars"], c["eta_lars"], c["exclude_bias_n_norm"], c["lr"]) == \
        ("lars", True, 0.02, True, 1.0)
    assert (c["proj_hidden_dim"], c["proj_output_dim"], c["zero_init_residual"]) == (4096, 256, False)
    assert (c["base_tau_momentum"], c["final_tau_momentum"], c["momentum_classifier"]) == (0.99, 1.0, True)
    pl = c["pipelines"]
    assert [p["saturation"] for p in pl] == [0.2, 0.2] and [p["solarization_prob"] for p in pl] == [0.0, 0.2]
    assert [p["gaussian_prob"] for p in pl] == [0.0, 0.0]


def test_imagenet100_scripts():
    s = cfg_of("bash_files/pretrain/imagenet-100/rdmsimsiam.sh", "400", "poly", "target", "-1")
    assert s["method"] == "rdmsimsiam"  # spec §4e bug 2 fixed
    assert (s["dataset"], s["devices"], s["strategy"], s["sync_batchnorm"], s["dali"]) == \
        ("imagenet100", [0, 1], "ddp", True, True)
    assert (s["data_dir"], s["train_dir"], s["val_dir"]) == ("/datasets", "imagenet-100/train", "imagenet-100/val")
    assert (s["optimizer"], s["lr"], s["batch_size"], s["zero_init_residual"]) == ("sgd", 0.5, 128, True)
    assert len(s["pipelines"]) == 1 and s["pipelines"][0]["num_crops"] == 2
    assert s["pipelines"][0]["gaussian_prob"] == 0.5 and s["pipelines"][0]["crop_size"] == 224
    assert s["name"] == "rdmsimsiam-imagenet100-400ep-poly_-1"
    b = cfg_of("bash_files/pretrain/imagenet-100/rdmbyol.sh", "400", "poly", "online", "1")
    assert (b["method"], b["pred_location"], b["sigma"]) == ("rdmbyol", "online", 1.0)
    assert (b["optimizer"], b["eta_lars"], b["grad_clip_lars"], b["exclude_bias_n_norm"]) == \
        ("lars", 0.02, True, True)  # spec §4e bug 3 fixed
    assert (b["data_dir"], b["train_dir"]) == ("./datasets", "imagenet100/train")
    assert [p["gaussian_prob"] for p in b["pipelines"]] == [1.0, 0.1]
    assert [p["solarization_prob"] for p in b["pipelines"]] == [0.0, 0.2]
    assert not b["momentum_classifier"] and b["proj_hidden_dim"] == 4096 and b["proj_output_dim"] == 256


def test_scripts_path_alias_and_env_overrides():
    _, a = script_argv("scripts/pretrain/cifar/rdmsimsiam.sh", "cifar10", "400", "poly", "target", "-1",
                       env={"DATA_DIR": "synthetic", "EXTRA_ARGS": "--max_epochs 1 --batch_size 8"})
    args = pretrain_parser().parse_args(a)
    assert args.data_dir == "synthetic" and args.max_epochs == 1 and args.batch_size == 8
    assert args.name == "rdmsimsiam-cifar10-400ep-poly_-1"
    # the seed README's scripts/... paths give the same commands as bash_files/... (every script)
    for script, pos in [("pretrain/cifar/rdmsimsiam.sh", ("cifar10", "400", "poly", "target", "-1")),
                        ("pretrain/cifar/rdmbyol.sh", ("cifar10", "400", "poly", "target", "-1")),
                        ("pretrain/imagenet-100/rdmsimsiam.sh", ("400", "poly", "target", "-1")),
                        ("pretrain/imagenet-100/rdmbyol.sh", ("400", "poly", "online", "1")),
                        ("linear/imagenet-100/rdmsimsiam_linear.sh", ()),
                        ("linear/imagenet-100/rdmbyol_linear.sh", ())]:
        via_alias, via_dir = script_argv(f"scripts/{script}", *pos), script_argv(f"bash_files/{script}", *pos)
        assert os.path.isfile(via_alias[0]) and os.path.samefile(via_alias[0], via_dir[0])
        assert via_alias[1] == via_dir[1]


@pytest.mark.parametrize("name,lr,workers", [("rdmsimsiam", 30.0, 10), ("rdmbyol", 0.3, 4)])
def test_linear_scripts(name, lr, workers):
    prog, argv = script_argv(f"bash_files/linear/imagenet-100/{name}_linear.sh")
    assert prog.endswith("main_linear.py")
    joined = " ".join(argv)
    assert f"--lr {lr}" in joined and f"--num_workers {workers}" in joined
    for flag in ("--max_epochs 100", "--scheduler step", "--lr_decay_steps 60 80", "--weight_decay 0",
                 "--batch_size 256", "--optimizer sgd", "--dataset imagenet100", "--backbone resnet18"):
        assert flag in joined


def test_simsiam_parser_defaults():
    a = simsiam_parser().parse_args(["DIR"])
    assert (a.arch, a.workers, a.epochs, a.start_epoch, a.batch_size, a.lr, a.momentum, a.weight_decay) == \
        ("resnet50", 32, 100, 0, 512, 0.05, 0.9, 1e-4)
    assert (a.print_freq, a.resume, a.world_size, a.rank, a.dist_url, a.dist_backend, a.seed, a.gpu) == \
        (10, "", -1, -1, "tcp://224.66.41.62:23456", "nccl", None, None)
    assert (a.multiprocessing_distributed, a.dim, a.pred_dim, a.fix_pred_lr) == (False, 2048, 512, False)
    assert (a.pred_type, a.pred_location, a.sigma, a.rdm_guard) == ("mlp", "online", 0.0, False)
    with pytest.raises(SystemExit):
        simsiam_parser().parse_args(["DIR", "--pred-type", "cubic"])


def test_lincls_parser_defaults():
    a = lincls_parser().parse_args(["DIR"])
    assert (a.arch, a.workers, a.epochs, a.batch_size, a.lr, a.momentum, a.weight_decay) == \
        ("resnet50", 32, 90, 4096, 0.1, 0.9, 0.0)
    assert (a.evaluate, a.pretrained, a.lars, a.print_freq, a.dist_backend) == (False, "", False, 10, "nccl")
    assert lincls_parser().parse_args(["DIR", "-e", "--lars"]).lars


def test_pretrain_rejects_old_lars_flag_and_unknown_type():
    base = ["--dataset", "cifar10", "--data_dir", "x", "--brightness", "0.4", "--contrast", "0.4",
            "--saturation", "0.4", "--hue", "0.1", "--optimizer", "sgd", "--method", "rdmsimsiam"]
    with pytest.raises(SystemExit):
        pretrain_parser().parse_args(base + ["--lars"])
    with pytest.raises(SystemExit):
        pretrain_parser().parse_args(base + ["--pred_type", "cubic"])


@pytest.mark.parametrize("script,pos,method,epochs,pred_hidden", [
    ("cifar/simsiam.sh", ("cifar10",), "simsiam", 1000, 512), ("cifar/byol.sh", ("cifar10",), "byol", 1000, 4096),
    ("imagenet-100/simsiam.sh", (), "simsiam", 400, 512), ("imagenet-100/byol.sh", (), "byol", 400, 8192)])
def test_baseline_scripts(script, pos, method, epochs, pred_hidden):
    c = cfg_of(f"bash_files/pretrain/{script}", *pos)
    assert (c["method"], c["max_epochs"], c["pred_hidden_dim"]) == (method, epochs, pred_hidden)
    if script == "imagenet-100/byol.sh":
        assert (c["optimizer"], c["data_dir"], c["train_dir"]) == ("lars", "/datasets", "imagenet-100/train")


def test_asymmetric_byol_views_from_script():
    from core.augment import Solarize
    from core.augment.ops import GaussianBlur
    from rdm_lib.solo_data import pretrain_transform

    c = cfg_of("bash_files/pretrain/imagenet-100/rdmbyol.sh", "400", "poly", "online", "1")
    views = pretrain_transform(c["dataset"], c["pipelines"]).transforms
    assert len(views) == 2

    def prob(view, kind):
        return [t.p for t in view.transforms if hasattr(t, "transforms") and isinstance(t.transforms[0], kind)]

    assert [prob(v, GaussianBlur) for v in views] == [[1.0], [0.1]]
    assert [prob(v, Solarize) for v in views] == [[0.0], [0.2]]
    norm = views[0].transforms[-1]
    assert tuple(norm.std) == (0.228, 0.224, 0.225)  # DALI's std in solo-learn
