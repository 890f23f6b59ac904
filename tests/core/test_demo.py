"""The main job's plumbing on a tiny run (the quality target is measured by `make demo` itself)."""
import json
import os

from core import demo


def test_demo_tiny_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    demo.main(["--out", str(out), "--epochs", "1", "--num-train", "96", "--num-test", "40", "--batch-size", "32",
               "--workers", "0"])
    res = json.load(open(out / "results.json"))
    for row in ("random_init", "pretrained"):
        assert set(res[row]) == {"knn20", "knn200", "linear"}
        assert all(0 <= v <= 100 for v in res[row].values())
    assert os.path.getsize(out / "curves.png") > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    log = [json.loads(line) for line in open(out / "log.txt")]
    assert {"train_loss", "eff_rank", "l2_std", "align", "uniform", "pos_sim"} <= set(log[0])
    printed = capsys.readouterr().out
    assert "| random init |" in printed and "kNN top-1 (k=20)" in printed


def test_bench_reports_throughput():
    from core import bench

    res = bench.main(["--steps", "1", "--warmup", "1", "--batch-size", "4", "--image-size", "32"])
    assert res["images_per_sec"] > 0 and res["amp"] == "off" and res["device"] == "cpu"
