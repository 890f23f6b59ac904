"""The built-in ``digits`` set (scikit-learn's handwritten digits): split, determinism, balance, pixel values
against scikit-learn's own array, and that every script which accepts ``synthetic`` accepts ``digits``
(parse + dataset build only; the pretraining scripts run one step each in tests/core/test_compare.py)."""
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from paper_import import load_script, register_package

from core.data import Digits, build_dataset, is_builtin, is_digits

SK = load_digits()


def test_split_is_a_fixed_stratified_partition():
    tr, va = Digits("train", 8), Digits("val", 8)
    assert len(tr) + len(va) == 1797 == len(SK.target)
    assert sorted(tr.indices + va.indices) == list(range(1797))  # disjoint and complete
    counts = np.bincount(SK.target, minlength=10)
    val_counts = np.bincount(va.targets, minlength=10)
    # round(0.2 n) images of every class go to val, the rest to train
    assert val_counts.tolist() == [int(round(0.2 * c)) for c in counts]
    assert (np.bincount(tr.targets, minlength=10) == counts - val_counts).all()
    # round-robin order: any prefix is balanced
    assert np.bincount(tr.targets[:100], minlength=10).tolist() == [10] * 10
    assert np.bincount(Digits("train", 8, num_samples=50).targets, minlength=10).tolist() == [5] * 10


def test_split_and_pixels_are_deterministic_and_seed_free():
    a = build_dataset("digits", "train", image_size=32, seed=0)
    b = build_dataset("Digits", "train", image_size=32, seed=7)  # the run seed does not move the split
    assert a.indices == b.indices
    assert np.array_equal(np.asarray(a.image(5)), np.asarray(b.image(5)))
    assert build_dataset("digits", "val").indices == build_dataset("digits", "test").indices


def test_pixels_equal_sklearn_at_native_size():
    for split in ("train", "val"):
        ds = Digits(split, 8)
        for i in (0, 1, 17, len(ds) - 1):
            img, y = ds[i]
            raw = SK.images[ds.indices[i]]
            arr = np.asarray(img)
            assert img.mode == "RGB" and arr.shape == (8, 8, 3) and y == SK.target[ds.indices[i]]
            expect = np.floor(raw * 255 / 16 + 0.5)  # 0..16 grey levels onto 0..255
            for c in range(3):
                assert np.array_equal(arr[..., c], expect)


def test_upscaled_to_the_run_size_grey_and_bilinear():
    ds = Digits("train", 32)
    img = ds.image(3)
    arr = np.asarray(img).astype(float)
    assert img.size == (32, 32) and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    ref = Image.fromarray(np.floor(SK.images[ds.indices[3]] * 255 / 16 + 0.5).astype(np.uint8))
    assert np.array_equal(arr[..., 0], np.asarray(ref.resize((32, 32), Image.BILINEAR)).astype(float))
    assert set(ds.classes) == {str(c) for c in range(10)} and len(build_dataset("digits", "val")) == 359


def test_reserved_names_and_bad_sizes():
    assert is_digits("digits") and is_builtin("digits") and is_builtin("synthetic")
    assert not is_builtin("/data/digits") and not is_digits("synthetic")
    with pytest.raises(ValueError):
        Digits("train", 4)
    with pytest.raises(ValueError):
        Digits("unlabeled", 32)


class _Built(Exception):
    """Raised by a patched ``build_loader``: the script got as far as a built dataset."""


def stop_at_loader(monkeypatch, mod, attr="build_loader"):
    seen = []

    def fake(ds, *a, **k):
        seen.append(ds)
        raise _Built

    monkeypatch.setattr(mod, attr, fake)
    return seen


def assert_digits(ds):
    base = getattr(ds, "ds", ds)
    base = getattr(base, "dataset", base)
    assert isinstance(base, Digits), type(base)


def test_unigrad_pretrain_and_lineval_accept_digits(monkeypatch, tmp_path):
    register_package("unigrad", "unigrad_lib")
    pre = load_script("unigrad", "pretrain.py", "digits_unigrad_pretrain")
    from unigrad_lib.config import load_config
    from paper_import import paper_dir
    import os
    cfg = load_config(os.path.join(paper_dir("unigrad"), "configs", "simclr.py"),
                      ["train_datadir=digits", "test_datadir=digits", "image_size=16", "num_samples=40"])
    tr, va = pre.make_dataset(cfg.train_datadir, "train", None, cfg), pre.make_dataset("digits", "val", None, cfg)
    assert isinstance(tr, Digits) and len(tr) == 40 and len(va) == 359 and tr.image(0).size == (16, 16)
    lin = load_script("unigrad", "lineval.py", "digits_unigrad_lineval")
    seen = stop_at_loader(monkeypatch, lin)
    with pytest.raises(_Built):
        lin.main(["--data", "digits", "-a", "resnet_tiny", "--image-size", "16", "-j", "0", "--epochs", "1",
                  "--save_name", str(tmp_path / "lin")])
    assert_digits(seen[0])


def test_rdm_solo_and_imagenet_faces_accept_digits(monkeypatch, tmp_path):
    register_package("rdm", "rdm_lib")
    from rdm_lib.solo_data import solo_dataset
    ds = solo_dataset("cifar10", "digits", None, "train", None, 32, num_samples=30)
    assert isinstance(ds, Digits) and len(ds) == 30
    assert len(solo_dataset("cifar10", "digits", None, "val", None, 32, num_samples=30)) == 359
    for script in ("main_simsiam.py", "main_lincls.py"):
        mod = load_script("rdm", script, "digits_rdm_" + script[:-3])
        seen = stop_at_loader(monkeypatch, mod)
        with pytest.raises(_Built):
            mod.main(["-a", "resnet_tiny", "--epochs", "1", "-j", "0", "--image-size", "16",
                      "--output-dir", str(tmp_path / script), "digits"])
        assert_digits(seen[0])


def test_align_uniform_scripts_accept_digits(monkeypatch, tmp_path):
    register_package("align_uniform", "au_lib")
    for script in ("main_moco.py", "main_lincls.py"):
        mod = load_script("align_uniform", script, "digits_au_" + script[:-3])
        seen = stop_at_loader(monkeypatch, mod)
        extra = ["--results-dir", str(tmp_path)] if script == "main_moco.py" else []
        with pytest.raises(_Built):
            mod.main(["-a", "resnet_tiny", "--epochs", "1", "-j", "0", "--image-size", "16", "-b", "8",
                      "--moco-k", "16", *extra, "digits"] if script == "main_moco.py"
                     else ["-a", "resnet_tiny", "--epochs", "1", "-j", "0", "--image-size", "16", "-b", "8", "digits"])
        assert_digits(seen[0])


def test_twist_scripts_accept_digits(monkeypatch, tmp_path):
    import sys
    from paper_import import paper_dir
    if paper_dir("twist") not in sys.path:
        sys.path.insert(0, paper_dir("twist"))
    ev = load_script("twist", "evaluate.py", "digits_twist_evaluate")
    args = ev.get_parser().parse_args(["digits", "none", "--train-percent", "10"])
    sub = ev.subset(args, build_dataset("digits", "train", image_size=16))
    per_class = np.bincount(build_dataset("digits", "train").targets, minlength=10)
    assert np.bincount(sub.targets, minlength=10).tolist() == [int(round(0.1 * n)) for n in per_class]
    from twist_lib import cluster
    seen = stop_at_loader(monkeypatch, cluster)
    targs = __import__("twist_lib.config", fromlist=["x"]).get_args_parser().parse_args(
        ["--data-path", "digits", "--img_size", "16", "--num_workers", "0"])
    with pytest.raises(_Built):
        cluster.val_loader(targs, None)
    assert_digits(seen[0])
    tr = load_script("twist", "train.py", "digits_twist_train")
    seen = stop_at_loader(monkeypatch, tr)
    with pytest.raises(_Built):
        tr.main(["--data-path", "digits", "--output_dir", str(tmp_path), "--backbone", "resnet_tiny",
                 "--img_size", "16", "--aug", "barlow", "--batch-size", "8", "--bunch-size", "8", "--epochs", "1",
                 "--num_workers", "0", "--dim", "16", "--hid_dim", "16", "--device", "cpu"])
    assert_digits(seen[0])


@pytest.mark.slow  # a whole (tiny) demo run; its code path is the default demo's apart from the data branch
def test_demo_runs_on_digits(tmp_path, capsys):
    from core import demo
    demo.main(["--data", "digits", "--out", str(tmp_path), "--epochs", "1", "--num-train", "64", "--num-test", "30",
               "--batch-size", "32", "--workers", "0", "--image-size", "16"])
    res = __import__("json").loads((tmp_path / "results.json").read_text())
    assert 0 <= res["random_init"]["knn20"] <= 100 and "SimCLR 1 ep" in capsys.readouterr().out
