"""Argument surfaces of ``imagenet/main_simsiam.py`` and ``imagenet/main_lincls.py`` (spec §3a, §3c): every
flag and default of the originals, plus ours (``--rdm-guard``, ``--output-dir``, ``--image-size``,
``--max-steps-per-epoch``)."""
import argparse

from core import dist
from rdm_lib.models import ARCHS
from rdm_lib.predictor import PRED_LOCATIONS, PRED_TYPES


def simsiam_parser():
    p = argparse.ArgumentParser(description="PyTorch ImageNet Training (SimSiam / RDM)")
    p.add_argument("data", metavar="DIR", help="path to dataset (with train/), or 'synthetic'")
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", choices=ARCHS,
                   help="model architecture: torchvision name or resnet_tiny (default: resnet50)")
    p.add_argument("-j", "--workers", default=32, type=int, metavar="N", help="number of data loading workers")
    p.add_argument("--epochs", default=100, type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="manual epoch number")
    p.add_argument("-b", "--batch-size", default=512, type=int, metavar="N",
                   help="total batch size of all GPUs on the current node")
    p.add_argument("--lr", "--learning-rate", default=0.05, type=float, metavar="LR", dest="lr",
                   help="initial (base) learning rate")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum of SGD solver")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, metavar="W", dest="weight_decay")
    p.add_argument("-p", "--print-freq", default=10, type=int, metavar="N", help="print frequency")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to latest checkpoint")
    dist.add_launch_args(p)
    p.add_argument("--seed", default=None, type=int, help="seed for initializing training")
    p.add_argument("--dim", default=2048, type=int, help="feature dimension")
    p.add_argument("--pred-dim", default=512, type=int, help="hidden dimension of the predictor")
    p.add_argument("--fix-pred-lr", action="store_true", help="fix learning rate for the predictor")
    p.add_argument("--pred-type", default="mlp", type=str, choices=("mlp",) + PRED_TYPES,
                   help="mlp (original SimSiam) or an RDM spectral filter")
    p.add_argument("--pred-location", default="online", type=str, choices=PRED_LOCATIONS)
    p.add_argument("--sigma", default=0.0, type=float, help="exponentiation of the poly filter")
    # ours
    p.add_argument("--rdm-guard", dest="rdm_guard", action="store_true",
                   help="(ours) zero-singular-value guard: drop round-off singular directions where the filter is "
                        "unbounded at 0 (log, negative powers); off = the original formula, which gives inf/NaN "
                        "there")
    p.add_argument("--no-rdm-guard", dest="rdm_guard", action="store_false",
                   help="(ours) the original filter without guard: the default; kept for older commands")
    p.add_argument("--output-dir", default=".", help="where checkpoint_XXXX.pth.tar, log.txt, spectra.png go")
    p.add_argument("--image-size", default=224, type=int, help="crop size (224 as the original)")
    p.add_argument("--max-steps-per-epoch", default=None, type=int, help="cap steps per epoch (quick runs)")
    return p


def lincls_parser():
    p = argparse.ArgumentParser(description="PyTorch ImageNet Training (linear classification)")
    p.add_argument("data", metavar="DIR", help="path to dataset (with train/ and val/), or 'synthetic'")
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", choices=ARCHS)
    p.add_argument("-j", "--workers", default=32, type=int, metavar="N")
    p.add_argument("--epochs", default=90, type=int, metavar="N")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N")
    p.add_argument("-b", "--batch-size", default=4096, type=int, metavar="N",
                   help="total batch size of all GPUs on the current node")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", dest="lr")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M")
    p.add_argument("--wd", "--weight-decay", default=0.0, type=float, metavar="W", dest="weight_decay")
    p.add_argument("-p", "--print-freq", default=10, type=int, metavar="N")
    p.add_argument("--resume", default="", type=str, metavar="PATH")
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true",
                   help="evaluate model on validation set")
    dist.add_launch_args(p)
    p.add_argument("--seed", default=None, type=int)
    p.add_argument("--pretrained", default="", type=str, help="path to simsiam pretrained checkpoint")
    p.add_argument("--lars", action="store_true", help="Use LARS")
    p.add_argument("--output-dir", default=".", help="(ours) where checkpoint.pth.tar / model_best go")
    p.add_argument("--image-size", default=224, type=int, help="(ours) crop size, 224 as the original")
    p.add_argument("--max-steps-per-epoch", default=None, type=int, help="(ours) quick runs")
    return p
