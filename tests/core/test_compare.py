"""core.compare: every row of the table for one step through its own paper script; the table, CSV, JSON,
cache, --only and --seeds logic on a fake method; the baselines' kNN against a hand computation; the stem
override every script obeys."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import torch

from core.backbones import build_backbone
from core.compare import cli, methods as M, protocol, report, runner
from core.errors import UserError


def test_every_method_trains_one_step_through_its_script_and_evaluates(tmp_path, capsys):
    """One step per script (image 16 px, batch 8, tiny synthetic splits), 2 scripts at a time."""
    out = tmp_path / "cmp"
    cli.main(["--data", "synthetic", "--image-size", "16", "--batch-size", "8", "--epochs", "1", "--max-steps", "1",
              "--num-train", "16", "--num-val", "20", "--out", str(out), "--jobs", "2"])
    text = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    keys = [a["key"] for a in res["aggregate"]]
    assert keys == list(M.METHOD_KEYS) + ["random", "random_zero", "pixels"]
    for a in res["aggregate"]:
        assert not a["errors"], a["errors"]
        assert 0 <= a["knn20"] <= 100 and 0 <= a["linear"] <= 100 and a["eff_rank"] >= 1
    for r in res["rows"]:
        if r["key"] in M.METHOD_KEYS:  # the script itself ran: its log and checkpoint exist
            assert os.path.isfile(r["log"]) and r["images"] == 8 and r["img_s"] > 0
    assert "| TWIST | twist | no |" in text and "CIFAR stem" in text
    assert (out / "results.png").stat().st_size > 0 and (out / "results.md").read_text().count("\n| ") >= 14


def fake_method(key="fake", label="Fake"):
    """A 'paper script' that writes a random resnet_tiny (seeded by --seed) as a solo-style checkpoint."""

    def build(b, run):
        code = ("import sys, torch; from core.backbones import build_backbone; torch.manual_seed(int(sys.argv[2]));"
                "net = build_backbone('resnet_tiny', cifar_stem=True);"
                "torch.save({'state_dict': {'backbone.' + k: v for k, v in net.state_dict().items()}}, sys.argv[1])")
        return M.Command([sys.executable, "-c", code, os.path.join(run, "x.ckpt"), str(b.seed)], run, {},
                         [("epochs 9 -> %d" % b.epochs, "shared budget")])

    return M.Method(key, label, "fakes", build, lambda run: os.path.join(run, "x.ckpt"), "backbone.", False)


def test_table_cache_only_and_seeds_on_a_fake_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(M, "METHODS", (fake_method(), fake_method("other", "Other")))
    monkeypatch.setattr(M, "METHOD_KEYS", ("fake", "other"))
    out = str(tmp_path / "o")
    argv = ["--data", "synthetic", "--image-size", "16", "--batch-size", "8", "--epochs", "1", "--num-train", "40",
            "--num-val", "20", "--out", out, "--only", "fake", "--seeds", "0", "1", "--jobs", "1"]
    cli.main(argv)
    first = capsys.readouterr().out
    assert "Other" not in first and first.count("trained") == 2
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    fake = [r for r in rows if r["key"] == "fake"]
    assert [r["seed"] for r in fake] == ["0", "1"]
    k = [float(r["knn20"]) for r in fake]
    agg = json.load(open(os.path.join(out, "results.json")))["aggregate"][0]
    assert agg["knn20"] == pytest.approx(np.mean(k)) and agg["knn20_std"] == pytest.approx(np.std(k, ddof=1))
    # the fake's checkpoint is its random init with the same seed and stem: equal to the random-init row
    rand = [r for r in rows if r["key"] == "random"]
    assert [r["knn20"] for r in rand] == [r["knn20"] for r in fake]
    md = open(os.path.join(out, "results.md")).read()
    assert f"| Fake | fakes | no | {np.mean(k):.1f} ± {np.std(k, ddof=1):.1f} |" in md
    assert "epochs 9 -> 1 (shared budget)" in md
    cli.main(argv)  # the run folder is the cache
    again = capsys.readouterr().out
    assert again.count("(cached)") == 8 and "trained" not in again
    cli.main(argv[:-5] + ["--seeds", "0", "--jobs", "1", "--epochs", "2"])  # another budget: trained again
    assert capsys.readouterr().out.count("trained") == 1


def test_failed_script_is_a_row_and_one_error_line(tmp_path, monkeypatch, capsys):
    def build(b, run):
        return M.Command([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], run, {}, [])

    monkeypatch.setattr(M, "METHODS", (M.Method("bad", "Bad", "fakes", build, lambda r: "", "", False),))
    monkeypatch.setattr(M, "METHOD_KEYS", ("bad",))
    with pytest.raises(SystemExit) as e:
        cli.main(["--data", "synthetic", "--image-size", "16", "--batch-size", "8", "--num-train", "16",
                  "--num-val", "10", "--out", str(tmp_path), "--jobs", "1"])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert "| Bad | fakes | no | failed: exit status 3: boom" in cap.out
    assert cap.err.strip().count("\n") == 0 and cap.err.startswith("error: 1 row(s) failed: Bad")
    with pytest.raises(SystemExit):
        cli.main(["--only", "nope"])
    assert "unknown method" in capsys.readouterr().err


def test_knn_of_the_pixel_baseline_by_hand():
    """Weighted kNN (k, T = 0.07) of L2-normalised raw pixels, recomputed with numpy."""
    sets = protocol.datasets("synthetic", 16, 60, num_val=30)
    res = protocol.evaluate(protocol.Pixels(), "synthetic", 16, 60, sets=sets)
    train, val, _ = sets
    X = np.stack([train[i][0].numpy().ravel() for i in range(len(train))]).astype(np.float64)
    Q = np.stack([val[i][0].numpy().ravel() for i in range(len(val))]).astype(np.float64)
    ytr, yq = np.array(train.targets), np.array(val.targets)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    for k in (20, 200):
        hits = 0
        for q, y in zip(Q, yq):
            s = X @ q
            top = np.argsort(-s)[:min(k, len(X))]
            votes = np.zeros(10)
            np.add.at(votes, ytr[top], np.exp(s[top] / 0.07))
            hits += int(votes.argmax() == y)
        assert res[f"knn{k}"] == pytest.approx(100 * hits / len(Q), abs=1e-4)
    # effective rank of the diagnostics: exp(entropy) of the normalised singular values, by numpy
    z = torch.cat([v.flatten(1) for v in sets[2]]).double().numpy()
    sv = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = sv / sv.sum()
    assert res["eff_rank"] == pytest.approx(float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())), rel=1e-6)


def test_aggregate_and_markdown_by_hand():
    rows = [{"key": "a", "label": "A", "folder": "f", "seed": s, "zero_init": True, "changes": [("x", "y")],
             **{m: v for m in report.METRICS}} for s, v in ((0, 10.0), (1, 14.0))]
    rows += [{"key": "random_zero", "label": "rz", "folder": "-", "seed": 0, "zero_init": True, "changes": [],
              **{m: 12.5 for m in report.METRICS}}]
    aggs = report.aggregate(rows)
    assert aggs[0]["knn20"] == 12.0 and aggs[0]["knn20_std"] == pytest.approx(np.sqrt(8.0))
    assert "| A | f | yes | 12.0 ± 2.8 |" in report.markdown(aggs)
    assert report.learning_proxy(aggs) == ["A: kNN@20 -0.5 vs rz -> DOES NOT beat it"]


def test_stem_override_and_budget_rules(monkeypatch):
    monkeypatch.setenv("SSL_RESNET_STEM", "cifar")
    assert build_backbone("resnet_tiny").conv1.kernel_size == (3, 3)
    assert build_backbone("resnet18").maxpool.__class__.__name__ == "Identity"
    monkeypatch.setenv("SSL_RESNET_STEM", "imagenet")
    assert build_backbone("resnet_tiny", cifar_stem=True).conv1.kernel_size == (7, 7)
    monkeypatch.setenv("SSL_RESNET_STEM", "big")
    with pytest.raises(UserError):
        build_backbone("resnet_tiny")
    monkeypatch.delenv("SSL_RESNET_STEM")
    assert build_backbone("resnet_tiny", cifar_stem=True).conv1.kernel_size == (3, 3)
    b = M.Budget(data="synthetic", num_train=5000, batch_size=128)
    # 65536 / 1,281,167 of 5000 images = 255.8 keys -> 2 batches
    assert M.queue_size(b, 128) == 256 and M.queue_size(M.Budget(data="digits"), 128) == 128
    assert M.default_stem(64) == "cifar" and M.default_stem(96) == "imagenet"
    assert M.data_args_unigrad("/d") == ["train_datadir=/d/train", "test_datadir=/d/val"]
    assert M.solo_data_args("cifar10:/c") == ("cifar10", ["--data_dir", "/c", "--train_dir", ".", "--val_dir", "."])
    assert M.solo_data_args("/d")[0] == "custom"
    with pytest.raises(UserError):
        cli.budget_from(cli.parser().parse_args(["--batch-size", "5000", "--data", "digits"]))
