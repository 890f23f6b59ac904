"""Flag surface of the four RDM entry points (issue #12): every parser option is read by the script's code or
listed in its ``NO_EFFECT`` / ``UNSUPPORTED`` dict, a listed option set to a non-default value warns (one line)
or stops (one line), and the README table lists exactly the same entries."""
import importlib.util
import os
import re

import pytest

from flag_surface import assert_flag_surface

from core.errors import UserError
from core.flags import _option_string, reject_unsupported, warn_no_effect

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RDM = os.path.join(ROOT, "papers", "rdm")
LIB = os.path.join(RDM, "rdm_lib")
DIST = os.path.join(ROOT, "core", "dist", "__init__.py")
# the files whose code reads each script's parsed flags
SOURCES = {
    "main_simsiam": [DIST],
    "main_lincls": [DIST],
    "main_pretrain": [os.path.join(LIB, f) for f in ("solo_args.py", "solo_train.py", "solo_data.py", "run_utils.py")],
    "main_linear": [os.path.join(LIB, f) for f in ("solo_args.py", "run_utils.py")],
}


def load(name):
    spec = importlib.util.spec_from_file_location(f"rdm_flags_{name}", os.path.join(RDM, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parser_of(name, mod):
    from rdm_lib.imagenet_args import lincls_parser, simsiam_parser
    from rdm_lib.solo_args import pretrain_parser

    return {"main_simsiam": simsiam_parser, "main_lincls": lincls_parser, "main_pretrain": pretrain_parser,
            "main_linear": getattr(mod, "build_parser", None)}[name]()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_flag_surface(name):
    mod = load(name)
    assert_flag_surface(parser_of(name, mod), [os.path.join(RDM, f"{name}.py")] + SOURCES[name],
                        mod.NO_EFFECT, mod.UNSUPPORTED)


def readme_rows():
    with open(os.path.join(RDM, "README.md")) as f:
        text = f.read()
    rows = re.findall(r"^\| `(main_\w+)\.py` \| `(--[\w-]+)` \| (no effect \(warning\)|error) \| (.+) \|$",
                      text, flags=re.M)
    return {(s, flag, "no_effect" if kind.startswith("no effect") else "unsupported", why)
            for s, flag, kind, why in rows}


def test_readme_table_equals_the_dicts():
    want = set()
    for name in SOURCES:
        mod = load(name)
        parser = parser_of(name, mod)
        for kind, table in (("no_effect", mod.NO_EFFECT), ("unsupported", mod.UNSUPPORTED)):
            want |= {(name, _option_string(parser, d), kind, why) for d, why in table.items()}
    assert readme_rows() == want


SOLO = ["--dataset", "cifar10", "--data_dir", "x", "--brightness", "0.4", "--contrast", "0.4", "--saturation",
        "0.4", "--hue", "0.1", "--optimizer", "sgd", "--method", "rdmsimsiam"]


def test_listed_no_effect_flag_warns_once(capsys):
    mod = load("main_pretrain")
    parser = parser_of("main_pretrain", mod)
    assert warn_no_effect(parser.parse_args(SOLO), parser, mod.NO_EFFECT) == []
    assert capsys.readouterr().err == ""
    assert warn_no_effect(parser.parse_args(SOLO + ["--knn_k", "5"]), parser, mod.NO_EFFECT) == ["knn_k"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --knn_k=5 has no effect")


def test_linear_sync_batchnorm_warns_and_knn_eval_stops(capsys):
    mod = load("main_linear")
    parser = parser_of("main_linear", mod)
    args = parser.parse_args(["--dataset", "cifar10", "--data_dir", "x", "--pretrained_feature_extractor", "p",
                              "--optimizer", "sgd", "--sync_batchnorm"])
    assert warn_no_effect(args, parser, mod.NO_EFFECT) == ["sync_batchnorm"]
    pre = load("main_pretrain")
    pp = parser_of("main_pretrain", pre)
    with pytest.raises(UserError, match="--knn_eval"):
        reject_unsupported(pp.parse_args(SOLO + ["--knn_eval"]), pp, pre.UNSUPPORTED)


def test_linear_defaults_are_solo_learns():
    """solo ``LinearModel.add_model_specific_args``: --optimizer required (sgd/lars/adam/adamw), lr 0.3,
    weight_decay 1e-4, scheduler reduce, lr_decay_steps None, warmup 10 epochs from 0.003."""
    mod = load("main_linear")
    parser = parser_of("main_linear", mod)
    base = ["--dataset", "cifar10", "--data_dir", "x", "--pretrained_feature_extractor", "p"]
    with pytest.raises(SystemExit):
        parser.parse_args(base)  # --optimizer is required
    a = parser.parse_args(base + ["--optimizer", "adamw"])
    assert (a.lr, a.weight_decay, a.scheduler, a.lr_decay_steps) == (0.3, 1e-4, "reduce", None)
    assert (a.warmup_epochs, a.warmup_start_lr, a.min_lr, a.exclude_bias_n_norm) == (10, 0.003, 0.0, False)
    for opt in ("sgd", "lars", "adam"):
        assert parser.parse_args(base + ["--optimizer", opt]).optimizer == opt
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--optimizer", "sgd", "--scheduler", "cosine"])  # not a solo linear choice
