"""The table of training entry points for the contract tests, and how a test runs one as a user would.

Each entry is run as a subprocess from its paper folder (``python script.py ...``, built-in synthetic data,
resnet_tiny, 16-32 px); two processes are started the way torchrun starts them (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT`` in the environment), which every script's ``core.dist.launch`` honours. The
engine's probe (``core.engine.probe``, ``SSL_ENGINE_PROBE``) writes what a test reads: per rank, the
parameters the optimizer misses, the states after set-up / the first step / the end, per-step losses and host
reads. ``steps`` is the number of optimizer steps per epoch of the tiny command.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PAPERS = os.path.join(REPO, "papers")


@dataclass
class Entry:
    name: str
    folder: str                                  # the script's folder, relative to the repo
    script: str                                  # run by path with cwd = the output folder
    argv: Callable[[str, int, int, int], List[str]]  # (out, epochs, steps, workers) -> flags
    loop: str = "train"                          # probe file prefix: train (core.engine.train) | lineval
    steps: int = 1                               # steps per epoch in the tiny command
    moves_at_end: bool = False                   # compare the parameters at the end (``steps`` steps), not after
                                                 # step 1: see the reason where an entry sets it
    still_ok: tuple = ()                         # trainable parameters whose gradient is 0 up to round-off
    resume: Optional[Callable[[str], List[str]]] = None  # out -> flags that resume from the epoch checkpoint
    ckpt: str = ""                               # glob (under out) of the checkpoint written every epoch
    needs: Optional[str] = None                  # "rdm_solo" = a solo-learn pretrained checkpoint in out/pre.ckpt
    env: Dict[str, str] = field(default_factory=dict)
    latest: tuple = ()                           # checkpoint names every epoch rewrites (not epoch-named)
    named_copy: str = ""                         # a named checkpoint written as a copy after the first epoch
    copy_flags: tuple = ()                       # flags that make the first epoch write ``named_copy``
    seed_flags: tuple = ()                       # flags that change the seed (a run whose files differ)
    local_bn: bool = False                       # plain per-rank BN by design: running stats differ over ranks
                                                 # after a step (DDP broadcasts rank 0's at the next forward)


def _unigrad(out, epochs, steps, workers):
    return [os.path.join(PAPERS, "unigrad", "configs", "unigrad.py"), "train_datadir=synthetic",
            "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=32", "projector_output_dim=32", "image_size=16",
            "num_samples=32", "whole_batch_size=4", f"max_steps_per_epoch={steps}", "warmup_epochs=0",
            "print_freq=10", "diag_freq=0", "knn_freq=0", f"n_workers={workers}", f"epochs={epochs}",
            "save_freq=1", f"work_dir={out}"]


def _unigrad_lineval(out, epochs, steps, workers):
    return ["--data", "synthetic", "-a", "resnet_tiny", "--image-size", "16", "--num-samples", "16",
            "-j", str(workers), "-b", "4", "--epochs", str(epochs), "--max-steps-per-epoch", str(steps),
            "--save_name", os.path.join(out, "checkpoint.pth.tar")]


def _simsiam(out, epochs, steps, workers):
    # global batch 16 over at most 2 processes, outputs 8-d: full-rank features for the spectral filter; a
    # seed, as the original is unseeded without --seed
    return ["synthetic", "-a", "resnet_tiny", "--image-size", "32", "-j", str(workers), "--max-steps-per-epoch",
            str(steps), "--epochs", str(epochs), "-b", "16", "--dim", "8", "--pred-dim", "4", "--pred-type", "poly",
            "--sigma", "1", "--seed", "0", "--output-dir", out]


_SOLO = ["--dataset", "cifar10", "--data_dir", "synthetic", "--brightness", "0.4", "--contrast", "0.4",
         "--saturation", "0.4", "--hue", "0.1", "--optimizer", "sgd", "--crop_size", "32",
         "--num_crops_per_aug", "1", "1", "--backbone", "resnet_tiny", "--batch_size", "4",
         "--proj_hidden_dim", "16", "--proj_output_dim", "16"]


def _rdm_pretrain(out, epochs, steps, workers):
    return _SOLO + ["--method", "rdmbyol", "--scheduler", "warmup_cosine", "--warmup_epochs", "0",
                    "--max_epochs", str(epochs), "--max_steps_per_epoch", str(steps), "--num_workers",
                    str(workers), "--save_checkpoint", "--checkpoint_dir", out, "--name", "run"]


def _rdm_lincls(out, epochs, steps, workers):
    return ["synthetic", "-a", "resnet_tiny", "--image-size", "32", "-j", str(workers), "--max-steps-per-epoch",
            str(steps), "--epochs", str(epochs), "-b", "8", "--seed", "0", "--output-dir", out]


def _rdm_linear(out, epochs, steps, workers):
    return ["--dataset", "cifar10", "--data_dir", "synthetic", "--backbone", "resnet_tiny", "--optimizer", "sgd",
            "--scheduler", "none", "--batch_size", "4", "--max_steps_per_epoch", str(steps), "--num_workers",
            str(workers), "--crop_size", "32", "--name", "lin", "--max_epochs", str(epochs),
            "--pretrained_feature_extractor", os.path.join(out, "pre.ckpt"), "--checkpoint_dir", out]


def _moco(out, epochs, steps, workers):
    return ["synthetic", "-a", "resnet_tiny", "--image-size", "32", "-j", str(workers), "--batch-size", "8",
            "--moco-k", "32", "--num-samples", "32", "--max-steps", str(steps), "--epochs", str(epochs),
            "--seed", "0", "--results-dir", out]


def _au_lincls(out, epochs, steps, workers):
    return ["synthetic", "-a", "resnet_tiny", "--image-size", "32", "-j", str(workers), "--batch-size", "8",
            "--num-samples", "32", "--max-steps", str(steps), "--epochs", str(epochs), "--seed", "0"]  # -> cwd/results/


def _twist(out, epochs, steps, workers):
    return ["--backbone", "resnet_tiny", "--img_size", "32", "--batch-size", "4", "--dim", "16", "--hid_dim",
            "32", "--max_steps_per_epoch", str(steps), "--num_workers", str(workers), "--num_samples", "32",
            "--local_crops_number", "2", "--amp", "0", "--use_momentum_encoder", "1", "--epochs", str(epochs),
            "--output_dir", out]


def _twist_eval(out, epochs, steps, workers):
    return ["synthetic", "", "--img_size", "32", "--workers", str(workers), "--max_steps_per_epoch", str(steps),
            "--batch-size", "8", "--epochs", str(epochs), "--checkpoint-dir", out]


def _twist_vit(out, epochs, steps, workers):
    return ["--arch", "vit_t", "--data_path", "synthetic", "--output_dir", out, "--epochs", str(epochs),
            "--batch_size_per_gpu", "4", "--img_size", "32", "--patch_size", "16", "--max_steps_per_epoch",
            str(steps), "--num_workers", str(workers)]


def _det(out, epochs, steps, workers):
    return [os.path.join(PAPERS, "selfsup_det", "configs", "synthetic_tiny.py"), "--work-dir", out,
            "--epochs", str(epochs), "--max-iters-per-epoch", str(steps), "--no-eval", "--cfg-options",
            "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
            "model.min_size=64", "model.max_size=96", "data.samples_per_gpu=2",
            f"data.workers_per_gpu={workers}"]


ENTRIES = [
    # zero_init_residual: bn2.weight = 0 in every block, so bn1 and conv1 get a zero gradient at step 1
    Entry("unigrad/pretrain", "papers/unigrad", "pretrain.py", _unigrad, steps=2, moves_at_end=True,
          resume=lambda out: [f"resume_path={out}/latest.pth.tar"], ckpt="latest.pth.tar",
          latest=("latest.pth.tar",), named_copy="checkpoint_0.pth.tar", seed_flags=("seed=1",)),
    Entry("unigrad/lineval", "papers/unigrad", "lineval.py", _unigrad_lineval, loop="lineval"),
    # zero_init_residual (as the original SimSiam): bn1 of every block gets a zero gradient at step 1
    Entry("rdm/main_simsiam", "papers/rdm", "main_simsiam.py", _simsiam, steps=2, moves_at_end=True,
          resume=lambda out: ["--resume", sorted(glob.glob(f"{out}/checkpoint_*.pth.tar"))[0]],
          ckpt="checkpoint_0000.pth.tar"),
    Entry("rdm/main_pretrain", "papers/rdm", "main_pretrain.py", _rdm_pretrain,
          resume=lambda out: ["--resume_from_checkpoint", sorted(glob.glob(f"{out}/**/*.ckpt", recursive=True))[0]],
          ckpt="**/*.ckpt", latest=("run.ckpt",), local_bn=True),  # solo-learn: SyncBN only with --sync_batchnorm
    Entry("rdm/main_lincls", "papers/rdm", "main_lincls.py", _rdm_lincls, loop="lineval"),
    Entry("rdm/main_linear", "papers/rdm", "main_linear.py", _rdm_linear, needs="rdm_solo"),
    Entry("align_uniform/main_moco", "papers/align_uniform", "main_moco.py", _moco,
          resume=lambda out: ["--resume", sorted(glob.glob(f"{out}/*/checkpoint_0000.pth.tar"))[0]],
          ckpt="*/checkpoint_0000.pth.tar", local_bn=True),  # MoCo: shuffle BN, per-rank BN by design
    Entry("align_uniform/main_lincls", "papers/align_uniform", "main_lincls.py", _au_lincls, loop="lineval"),
    # lr 0 at the first warm-up step (warm-up from 0, as the original): compared after 2 steps; the biases of
    # the head's Linear layers feed a BatchNorm, which removes any shift: their gradient is 0 up to round-off
    Entry("twist/train", "papers/twist", "train.py", _twist, steps=2, moves_at_end=True,
          still_ok=("projection_heads.projection_head.0.bias", "projection_heads.projection_head.4.bias",
                    "projection_heads.last_linear.bias"),
          resume=lambda out: ["--resume", f"{out}/checkpoint.pth"], ckpt="checkpoint.pth",
          latest=("checkpoint.pth",), named_copy="mme_ckpt.pth", copy_flags=("--mme_epochs", "1"),
          seed_flags=("--seed", "1")),
    Entry("twist/evaluate", "papers/twist", "evaluate.py", _twist_eval),
    Entry("twist/evaluate_vitlinear", "papers/twist", "evaluate_vitlinear.py", _twist_vit),
    Entry("tools/train_det", ".", "tools/train_det.py", _det),
]
BY_NAME = {e.name: e for e in ENTRIES}
PRETRAINING = ["unigrad/pretrain", "rdm/main_simsiam", "align_uniform/main_moco", "twist/train"]


def _env(extra: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SSL_CPU_PROCS",
              "SSL_ENGINE_PROBE", "SSL_ENGINE_KILL_AT", "SSL_ENGINE_KILL_IN_WRITE", "SSL_ENGINE_FAULT"):
        env.pop(k, None)
    env.update(extra)
    return env


def prepare(entry: Entry, out: str) -> None:
    """What an entry needs before it runs (a pretrained checkpoint for rdm main_linear)."""
    os.makedirs(out, exist_ok=True)
    if entry.needs == "rdm_solo" and not os.path.exists(os.path.join(out, "pre.ckpt")):
        code = ("import sys, torch; sys.path.insert(0, 'papers/rdm'); from rdm_lib.models import solo_backbone; "
                "torch.manual_seed(0); sd = {'backbone.' + k: v for k, v in solo_backbone('resnet_tiny', True)"
                ".state_dict().items()}; torch.save({'state_dict': sd}, sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, os.path.join(out, "pre.ckpt")], cwd=REPO, check=True,
                       env=_env({}), timeout=300)


def run(entry: Entry, out: str, *, procs: int = 1, epochs: int = 1, steps: Optional[int] = None,
        workers: int = 0, extra: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
        umask: Optional[int] = None, timeout: float = 600) -> List[subprocess.CompletedProcess]:
    """Run ``entry`` in ``procs`` processes (env launch as torchrun does); one CompletedProcess per rank."""
    from core.dist import free_port

    prepare(entry, out)
    script = os.path.join(REPO, entry.folder, entry.script)
    argv = [sys.executable, script] + entry.argv(out, epochs, steps or entry.steps, workers) + (extra or [])
    cwd = out  # relative output paths of a script's defaults land in the test's folder
    base = {**entry.env, **(env or {})}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    if procs == 1:
        return [subprocess.run(argv, cwd=cwd, env=_env(base), capture_output=True, text=True, timeout=timeout,
                               preexec_fn=pre)]
    port = str(free_port())
    ps = [subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre,
                           env=_env({**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(procs),
                                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}))
          for r in range(procs)]
    res = []
    for r, p in enumerate(ps):
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in ps:
                q.kill()
            raise
        res.append(subprocess.CompletedProcess(argv, p.returncode, so, se))
    return res


def probes(entry: Entry, folder: str, procs: int) -> List[dict]:
    return [torch.load(os.path.join(folder, f"{entry.loop}_rank{r}.pt"), weights_only=False) for r in range(procs)]


def tail(res: List[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- rank {r} rc={p.returncode}\n{p.stderr[-3000:]}" for r, p in enumerate(res))
