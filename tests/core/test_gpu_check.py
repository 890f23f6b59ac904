"""tools/gpu_check.py: the CPU (tiny) variant of the list runs every entry point through its own CLI and prints
one line each; the child hook records optimizer steps; a missing upstream checkpoint is an error line, not a
crash."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "tools", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NAMES = ["unigrad pretrain.py", "unigrad lineval.py", "rdm main_simsiam.py", "rdm main_lincls.py",
         "rdm main_pretrain.py", "rdm main_linear.py", "align_uniform main_moco.py", "align_uniform main_lincls.py",
         "twist train.py (R50)", "twist train.py (ViT-S)", "twist evaluate.py", "twist evaluate_vitlinear.py",
         "tools/train_det.py", "resume: align_uniform main_moco.py"]


def test_list_covers_every_entry_point(tmp_path):
    g = load()
    plan = g.Plan(True, 0, str(tmp_path), str(tmp_path / "data"))
    es = g.entries(plan)
    assert [e["name"] for e in es] == NAMES
    real = g.entries(g.Plan(False, 2, str(tmp_path), str(tmp_path / "data")))
    argv = real[0]["argv"]()  # real sizes on CUDA: ResNet-50 at 224 px, 20 steps
    assert "image_size=224" in argv and "max_steps_per_epoch=20" in argv and "arch=resnet_tiny" not in argv
    twist = real[8]["argv"]()
    assert "torch.distributed.launch" in twist and "--nproc_per_node=2" in twist  # 2 NCCL processes


def test_missing_upstream_checkpoint_is_an_error_line(tmp_path):
    g = load()
    plan = g.Plan(True, 0, str(tmp_path), str(tmp_path / "data"))
    lincls = [e for e in g.entries(plan) if e["name"] == "rdm main_lincls.py"][0]
    r = g.run_one(lincls, 60, str(tmp_path))
    assert not r["ok"] and "no checkpoint matches" in r["error"]
    assert g.line(r).startswith("ERROR rdm main_lincls.py")


def test_child_hook_counts_optimizer_steps(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import torch\nm = torch.nn.Linear(2, 1)\no = torch.optim.SGD(m.parameters(), 0.1)\n"
                      "for _ in range(5):\n    m(torch.ones(1, 2)).sum().backward(); o.step()\n")
    out = tmp_path / "stats.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--child", str(out),
                        str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stats = json.loads(out.read_text())
    assert stats["steps"] == 5 and stats["step_s"] > 0 and stats["peak_gb"] is None


def test_cpu_variant_of_two_entries(tmp_path):
    """The tiny CPU run of one pretraining script and of its evaluation (the whole list: the slow test)."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--only",
                        "align_uniform main_moco.py", "--work-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ok", "ERROR"))]
    assert len(lines) == 2 and all(ln.startswith("ok") for ln in lines), r.stdout  # run + resume
    assert "ms/step" in lines[0] and "2/2 ok" in r.stdout


@pytest.mark.slow
def test_cpu_variant_of_the_whole_list(tmp_path):
    """Every entry point at tiny sizes (several minutes on 2 CPU cores)."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--work-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=3600, cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ok", "ERROR"))]
    assert len(lines) == len(NAMES) and r.returncode == 0, r.stdout[-4000:]
