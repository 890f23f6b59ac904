"""The rows of the comparison: each method is trained through its own paper script (a subprocess of the script's
CLI, as a user runs it) under one shared :class:`Budget`.

A :class:`Method` turns the budget into the script's command line and records every value that differs from
the original recipe, with the reason (``changes``). Only the shared budget differs: backbone, image size,
batch (with the lr scaled by the batch as the original scales it), epochs (schedules that are given in epochs
scaled with them), data and its size (MoCo queues scaled with the train set), loader workers.
"""
from __future__ import annotations

import dataclasses
import glob

import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from core.data.datasets import TORCHVISION_SETS
from core.data.digits import is_digits
from core.data.synthetic import is_synthetic
from core.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGENET_TRAIN = 1_281_167  # images of ImageNet-1k train, the set the MoCo queue size 65536 was chosen for
BACKBONE_WIDTH = {"resnet_tiny": 128, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
                  "resnet152": 2048, "resnet50w2": 4096, "resnet50w4": 8192, "resnet50w5": 10240}

@dataclasses.dataclass(frozen=True)
class Budget:
    """What every row shares. ``max_steps`` caps the steps per epoch (tests); ``num_train`` / ``num_val`` size
    the synthetic splits (digits and real data use their whole splits; ``num_val`` is only read at evaluation)."""
    data: str = "synthetic"
    backbone: str = "resnet_tiny"
    image_size: int = 32
    batch_size: int = 128
    epochs: int = 2
    seed: int = 0
    num_train: int = 2000
    num_val: int = 1000
    workers: int = 0
    stem: str = "cifar"
    max_steps: Optional[int] = None

    def fingerprint(self) -> Dict:
        return dataclasses.asdict(self)

    def train_size(self) -> int:
        """Images of the train split (the synthetic size, digits' fixed split, else the real set's size)."""
        if is_synthetic(self.data):
            return self.num_train
        if is_digits(self.data):
            from core.data.digits import split_indices
            return len(split_indices("train"))
        from core.data.datasets import build_dataset
        return len(build_dataset(self.data, "train"))

    def steps_per_epoch(self) -> int:
        n = self.train_size() // self.batch_size
        return min(n, self.max_steps) if self.max_steps else n

@dataclasses.dataclass
class Command:
    argv: List[str]
    cwd: str
    env: Dict[str, str]
    changes: List[Tuple[str, str]]  # (what changed, why)

@dataclasses.dataclass(frozen=True)
class Method:
    key: str  # --only name
    label: str  # table row
    folder: str  # papers/<folder>
    build: Callable[[Budget, str], Command]  # (budget, run dir) -> command
    checkpoint: Callable[[str], str]  # run dir -> checkpoint file
    prefix: str  # key prefix of the backbone inside the checkpoint's state dict
    zero_init: bool  # the recipe zero-initialises the last BN of every residual block

def _py() -> str:
    return sys.executable

def _width(b: Budget) -> int:
    if b.backbone not in BACKBONE_WIDTH:
        raise UserError(f"--backbone {b.backbone}: core.compare knows the ResNets "
                        f"{', '.join(BACKBONE_WIDTH)}")
    return BACKBONE_WIDTH[b.backbone]

def scaled(value: float, original_epochs: int, epochs: int) -> float:
    """An epoch count of a schedule, kept at the same fraction of the (shorter) run."""
    return value * epochs / original_epochs

def queue_size(b: Budget, multiple: int) -> int:
    """MoCo's 65536 keys are 5.1 % of ImageNet; the same fraction of this train set, rounded to a multiple of
    the keys one step enqueues (at least one step's keys)."""
    k = 65536 * b.train_size() / IMAGENET_TRAIN
    return max(multiple, int(round(k / multiple)) * multiple)

def _common_changes(b: Budget, orig_backbone: str, orig_size: int, orig_batch: int, orig_epochs: int,
                    lr_rule: str) -> List[Tuple[str, str]]:
    out = []
    if b.backbone != orig_backbone:
        out.append((f"backbone {orig_backbone} -> {b.backbone}", "shared budget"))
    if b.image_size != orig_size:
        out.append((f"image size {orig_size} -> {b.image_size}", "shared budget"))
    if b.batch_size != orig_batch:
        out.append((f"batch {orig_batch} -> {b.batch_size}", f"shared budget; {lr_rule}"))
    if b.epochs != orig_epochs:
        out.append((f"epochs {orig_epochs} -> {b.epochs}", "shared budget"))
    return out

def data_args_unigrad(data: str) -> List[str]:
    if is_synthetic(data) or is_digits(data) or data.partition(":")[0].lower() in TORCHVISION_SETS:
        return [f"train_datadir={data}", f"test_datadir={data}"]
    return [f"train_datadir={os.path.join(data, 'train')}", f"test_datadir={os.path.join(data, 'val')}"]

def unigrad_method(key: str, label: str, config: str) -> Method:
    """A row of UniGrad's folder: ``pretrain.py configs/<config>.py key=value ...`` (ImageNet recipe:
    ResNet-50, 224 px, batch 1024, lr 0.05 x batch / 256, 100 epochs, 5 warm-up epochs)."""

    def build(b: Budget, run: str) -> Command:
        warm = round(scaled(5, 100, b.epochs), 4)
        argv = [_py(), "pretrain.py", f"configs/{config}.py", *data_args_unigrad(b.data), f"arch={b.backbone}",
                f"projector_input_dim={_width(b)}", f"image_size={b.image_size}", f"whole_batch_size={b.batch_size}",
                f"epochs={b.epochs}", f"warmup_epochs={warm}", f"seed={b.seed}", f"n_workers={b.workers}",
                f"work_dir={run}", f"save_freq={b.epochs}", "print_freq=10"]
        changes = _common_changes(b, "resnet50", 224, 1024, 100, "lr = 0.05 x batch / 256 as the original")
        changes.append((f"warmup_epochs 5 -> {warm:g}", "5 % of the run as 5 of 100 epochs"))
        if is_synthetic(b.data):
            argv.append(f"num_samples={b.num_train}")
        if config == "moco":
            k = queue_size(b, b.batch_size)
            argv.append(f"queue_size={k}")
            changes.append((f"queue 65536 -> {k}", "same fraction of the train set as 65536 of ImageNet"))
        if b.max_steps:
            argv.append(f"max_steps_per_epoch={b.max_steps}")
        return Command(argv, os.path.join(REPO, "papers", "unigrad"), {}, changes)

    return Method(key, label, "unigrad", build, lambda run: os.path.join(run, "latest.pth.tar"), "module.encoder.",
                  True)

def solo_data_args(data: str) -> Tuple[str, List[str]]:
    """(``--dataset`` positional of the cifar script, extra data flags)."""
    name, _, root = data.partition(":")
    if is_synthetic(data) or is_digits(data):
        return "cifar10", ["--data_dir", data]
    if name.lower() in ("cifar10", "cifar100"):
        return name.lower(), ["--data_dir", root or "./datasets", "--train_dir", ".", "--val_dir", "."]
    return "custom", ["--data_dir", data, "--train_dir", "train", "--val_dir", "val"]

def rdm_method(key: str, label: str, script: str, zero_init: bool, batch: int = 256) -> Method:
    """RDM's solo-learn CIFAR script ``sh bash_files/pretrain/cifar/<script>.sh DATASET EPOCHS poly target -1``
    (ResNet-18, 32 px, batch 256, 400 epochs, lr x batch / 256, 10 warm-up epochs), budget through its
    ``EXTRA_ARGS`` / ``DATA_DIR`` hooks."""

    def build(b: Budget, run: str) -> Command:
        dataset, data_flags = solo_data_args(b.data)
        warm = int(round(scaled(10, 400, b.epochs)))
        extra = ["--backbone", b.backbone, "--batch_size", str(b.batch_size), "--num_workers", str(b.workers),
                 "--crop_size", str(b.image_size), "--checkpoint_dir", run, "--seed", str(b.seed),
                 "--warmup_epochs", str(warm), *data_flags[2:]]
        if b.max_steps:
            extra += ["--max_steps_per_epoch", str(b.max_steps)]
        if is_synthetic(b.data):
            extra += ["--num_samples", str(b.num_train)]
        if any(" " in a for a in extra):
            raise UserError(f"the RDM scripts pass EXTRA_ARGS through sh: paths with spaces are not supported ({run})")
        env = {"PYTHON": _py(), "DATA_DIR": data_flags[1], "DEVICES": "0", "EXTRA_ARGS": " ".join(extra)}
        argv = ["sh", f"bash_files/pretrain/cifar/{script}.sh", dataset, str(b.epochs), "poly", "target", "-1"]
        changes = _common_changes(b, "resnet18", 32, batch, 400, "lr x batch / 256 as solo-learn")
        changes.append((f"warmup_epochs 10 -> {warm}", "2.5 % of the run as 10 of 400 epochs"))
        return Command(argv, os.path.join(REPO, "papers", "rdm"), env, changes)

    def ckpt(run: str) -> str:
        found = sorted(glob.glob(os.path.join(run, script, "*", "*.ckpt")))
        return found[-1] if found else os.path.join(run, script, "<missing>.ckpt")

    return Method(key, label, "rdm", build, ckpt, "backbone.", zero_init)

def au_method() -> Method:
    """``main_moco.py -a resnet50 --lr 0.03 --batch-size 128 ... DIR`` with its default objective
    3 L_align(2) + L_uniform(3) (200 epochs, lr drops at 120 and 160, 224 px, MoCo v1 augmentation)."""

    def build(b: Budget, run: str) -> Command:
        lr = 0.03 * b.batch_size / 128
        sched = [max(1, int(round(scaled(e, 200, b.epochs)))) for e in (120, 160)]
        k = queue_size(b, b.batch_size)
        name, _, root = b.data.partition(":")
        data = b.data
        argv = [_py(), "main_moco.py", "-a", b.backbone, "--lr", f"{lr:g}", "--batch-size", str(b.batch_size),
                "--epochs", str(b.epochs), "--schedule", *map(str, sched), "--seed", str(b.seed),
                "-j", str(b.workers), "--image-size", str(b.image_size), "--moco-k", str(k),
                "--results-dir", run, "-p", "10"]
        if is_synthetic(b.data):
            argv += ["--num-samples", str(b.num_train)]
        if b.max_steps:
            argv += ["--max-steps", str(b.max_steps)]
        argv.append(data)
        changes = _common_changes(b, "resnet50", 224, 128, 200, "lr = 0.03 x batch / 128 (linear scaling)")
        changes.append((f"lr drops at 120,160 -> {','.join(map(str, sched))}", "same fractions of the run"))
        changes.append((f"queue 65536 -> {k}", "same fraction of the train set as 65536 of ImageNet"))
        return Command(argv, os.path.join(REPO, "papers", "align_uniform"), {}, changes)

    def ckpt(run: str) -> str:
        found = sorted(glob.glob(os.path.join(run, "*", "checkpoint_*.pth.tar")))
        return found[-1] if found else os.path.join(run, "<missing>", "checkpoint.pth.tar")

    return Method("moco_au", "MoCo + align/uniform", "align_uniform", build, ckpt, "module.encoder_q.", False)

def twist_method() -> Method:
    """``train.py --aug barlow`` (the README's ResNet-50 run: two views) with train.py's other defaults (C = 4096,
    LARS lr 0.5 x batch / 256, 850 epochs of which 800 with the TWIST loss, then self-labeling)."""

    def build(b: Budget, run: str) -> Command:
        mme = max(1, int(round(scaled(800, 850, b.epochs))))
        argv = [_py(), "train.py", "--data-path", b.data, "--output_dir", run, "--aug", "barlow", "--backbone", b.backbone,
                "--img_size", str(b.image_size), "--batch-size", str(b.batch_size), "--bunch-size",
                str(b.batch_size), "--epochs", str(b.epochs), "--mme_epochs", str(mme), "--seed", str(b.seed),
                "--num_workers", str(b.workers)]
        if is_synthetic(b.data):
            argv += ["--num_samples", str(b.num_train)]
        if b.max_steps:
            argv += ["--max_steps_per_epoch", str(b.max_steps)]
        changes = _common_changes(b, "resnet50", 224, 128, 850, "lr = 0.5 x batch / 256 as the original")
        changes.append((f"mme_epochs 800 -> {mme}", "same fraction of the run"))
        changes.append((f"bunch size 256 -> {b.batch_size}", "one process holds the whole batch"))
        changes.append(("--aug barlow, --dim 4096", "the README's ResNet-50 run: 2 views as every row; train.py's "
                        "default C = 4096 (that run's 32768 is an 8x larger head)"))
        return Command(argv, os.path.join(REPO, "papers", "twist"), {}, changes)

    return Method("twist", "TWIST", "twist", build, lambda run: os.path.join(run, "checkpoint.pth"), "", False)

METHODS: Sequence[Method] = (
    unigrad_method("simclr", "SimCLR", "simclr"),
    unigrad_method("moco", "MoCo", "moco"),
    au_method(),
    unigrad_method("simsiam", "SimSiam", "simsiam"),
    unigrad_method("byol", "BYOL", "byol"),
    unigrad_method("barlow", "Barlow Twins", "barlow_twins"),
    unigrad_method("vicreg", "VICReg", "vicreg"),
    unigrad_method("unigrad", "UniGrad", "unigrad"),
    rdm_method("rdm_simsiam", "RDM-SimSiam", "rdmsimsiam", True),  # the script passes --zero_init_residual
    rdm_method("rdm_byol", "RDM-BYOL", "rdmbyol", False),
    twist_method(),
)
METHOD_KEYS = tuple(m.key for m in METHODS)

def select(only: Optional[Sequence[str]]) -> List[Method]:
    if not only:
        return list(METHODS)
    unknown = [k for k in only if k not in METHOD_KEYS]
    if unknown:
        raise UserError(f"--only: unknown method(s) {unknown}; choose from {', '.join(METHOD_KEYS)}")
    return [m for m in METHODS if m.key in only]

def check_stem(stem: str) -> None:
    if stem not in ("cifar", "imagenet"):
        raise UserError(f"--stem must be cifar or imagenet, got {stem!r}")

def default_stem(image_size: int) -> str:
    """The CIFAR stem (3x3 conv, stride 1, no max-pool) at <= 64 px, else the ImageNet stem."""
    return "cifar" if image_size <= 64 else "imagenet"

