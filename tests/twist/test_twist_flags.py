"""The flag surface of the three entry points (issue 12): every option is read by the code or listed in the
script's NO_EFFECT / UNSUPPORTED dicts, listed options warn or stop in one line, the README table is those
dicts, the README ViT recipes are the original's current ones, and evaluate.py spawns like the original."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

import paper_import
from flag_surface import assert_flag_surface

paper_import.register_package("twist", "twist_lib")
T = paper_import.load_script("twist", "train.py", "twist_train_flags", cached=True)
E = paper_import.load_script("twist", "evaluate.py", "twist_evaluate_flags", cached=True)
V = paper_import.load_script("twist", "evaluate_vitlinear.py", "twist_vitlinear_flags", cached=True)

HERE = os.path.dirname(os.path.abspath(__file__))
TWIST = os.path.abspath(os.path.join(HERE, "..", "..", "papers", "twist"))
README = os.path.join(TWIST, "README.md")
SCRIPTS = {
    "train.py": (T, T.get_args_parser, [os.path.join(TWIST, "train.py")]
                 + sorted(glob.glob(os.path.join(TWIST, "twist_lib", "*.py")))),
    "evaluate.py": (E, E.get_parser, [os.path.join(TWIST, "evaluate.py")]),
    "evaluate_vitlinear.py": (V, V.get_parser, [os.path.join(TWIST, "evaluate_vitlinear.py")]),
}


def option(parser, dest):
    for a in parser._actions:
        if a.dest == dest:
            return [s for s in a.option_strings if s.startswith("--")][0]
    raise KeyError(dest)


def run_main(fn, argv, capsys):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_option_is_read_or_listed(script):
    mod, make_parser, sources = SCRIPTS[script]
    assert_flag_surface(make_parser(), sources, mod.NO_EFFECT, mod.UNSUPPORTED)


def test_readme_table_lists_exactly_the_dicts():
    text = open(README).read()
    section = text.split("### Flags with no effect, and flags that stop with an error", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \| (no effect|error) \| (.+?) \|$", section, re.M)
    want = []
    for script, (mod, make_parser, _) in SCRIPTS.items():
        parser = make_parser()
        want += [(script, option(parser, d), "no effect", r) for d, r in mod.NO_EFFECT.items()]
        want += [(script, option(parser, d), "error", r) for d, r in mod.UNSUPPORTED.items()]
    assert sorted(rows) == sorted(want)


def test_train_no_effect_flags_warn_once_each_and_unsupported_stops(capsys):
    argv = ["--dataset", "cifar", "--reduce_mean", "1", "--sched", "step", "--warmup-epochs", "3",
            "--world_size", "4", "--local_rank", "1", "--epochs", "0"]
    code, err = run_main(T.main, argv, capsys)
    warnings = [ln for ln in err if ln.startswith("warning:")]
    assert code == 2 and err[-1] == "error: --batch-size and --epochs must be positive"
    parser = T.get_args_parser()
    named = sorted(option(parser, d) for d in T.NO_EFFECT if d not in T.LAUNCHER_FLAGS)
    assert sorted(ln.split()[1].split("=")[0] for ln in warnings) == named
    assert len(warnings) == len(named) and all("has no effect" in ln for ln in warnings)
    code, err = run_main(T.main, ["--use-lmdb"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --use-lmdb=True is not supported here")


def test_evaluate_flags(capsys):
    code, err = run_main(E.main, ["synthetic", "", "--mode", "prod", "--epochs", "0"], capsys)
    assert code == 2 and err[0].startswith("warning: --mode=prod has no effect") and len(err) == 2
    code, err = run_main(E.main, ["synthetic", "", "--dataset", "cifar10"], capsys)
    assert code == 2 and len(err) == 1 and "--dataset=cifar10 is not supported here" in err[0]
    code, err = run_main(E.main, ["synthetic", "", "--workers", "-2"], capsys)
    assert err == ["error: --workers must be non-negative, got -2"]


def test_vitlinear_flags(capsys):
    code, err = run_main(V.main, ["--use_lmdb", "1"], capsys)
    assert code == 2 and len(err) == 1 and "--use_lmdb=1 is not supported here" in err[0]
    code, err = run_main(V.main, ["--local_rank", "3", "--val_freq", "0"], capsys)  # launcher flag: no warning
    assert err == ["error: --epochs and --val_freq must be positive"]


def test_readme_vit_recipes_are_the_current_original_and_the_seed_form_still_parses():
    lines = [ln for ln in open(README).read().splitlines()
             if "train.py" in ln and ("'vit_s'" in ln or "'vit_b'" in ln)]
    assert len(lines) == 2
    parser = T.get_args_parser()
    for ln in lines:
        argv = shlex.split(ln.split("train.py", 1)[1])
        assert parser.parse_args(argv).act == "gelu"
        seed = [a for a in argv if a not in ("--act", "gelu")]  # the seed page's snapshot
        assert parser.parse_args(seed).act == "relu"


def test_evaluate_spawns_one_process_per_visible_gpu(monkeypatch, tmp_path, capsys):
    from core import dist

    seen = {}
    monkeypatch.setattr(dist, "launch", lambda fn, args, **kw: seen.update(kw))
    E.main(["synthetic", "", "--checkpoint-dir", str(tmp_path / "lin")])
    assert seen == {"multiprocessing_distributed": True}
    assert (tmp_path / "lin").is_dir()  # made before any process starts
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert dist.procs_per_node() == 4


@pytest.mark.slow  # two spawned gloo processes
def test_evaluate_two_processes_floor_the_batch_with_a_warning(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SSL_CPU_PROCS="2")
    p = subprocess.run([sys.executable, "evaluate.py", "synthetic", "", "--backbone", "resnet_tiny", "--img_size",
                        "32", "--batch-size", "5", "--epochs", "1", "--max_steps_per_epoch", "1", "--workers", "0",
                        "--checkpoint-dir", str(tmp_path / "lin")], cwd=TWIST, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "=> 2 processes x 2 images" in p.stdout
    assert p.stderr.count("warning: --batch-size=5 is not divisible by 2 processes") == 2  # each process
    assert (tmp_path / "lin" / "stats.txt").is_file()
