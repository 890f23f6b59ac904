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
        # accuracies over the 40 test images: whole multiples of 100 / 40 = 2.5 points, within [0, 100]
        assert all(0 <= v <= 100 and abs(v / 2.5 - round(v / 2.5)) < 1e-4 for v in res[row].values()), res[row]
    assert os.path.getsize(out / "curves.png") > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    log = [json.loads(line) for line in open(out / "log.txt")]
    assert len(log) == 1  # one line per epoch
    assert {"train_loss", "eff_rank", "l2_std", "align", "uniform", "pos_sim"} <= set(log[0])
    printed = capsys.readouterr().out
    # the printed / written table carries the measured numbers of results.json, the gain is their difference
    rows = [f"| {name} | {r['knn20']:.1f} | {r['knn200']:.1f} | {r['linear']:.1f} |"
            for name, r in (("random init", res["random_init"]), ("SimCLR 1 ep", res["pretrained"]))]
    table = open(out / "results.md").read().splitlines()
    assert table[0].startswith("| backbone | kNN top-1 (k=20) |") and table[2:] == rows
    assert all(r in printed for r in rows)
    assert f"kNN gain: {res['pretrained']['knn20'] - res['random_init']['knn20']:+.1f} points" in printed
