"""Test helpers: registers the ``au_lib`` package by path (importing this module is enough, also in spawned
processes), small encoders with a ResNet-like ``fc``, and script loading under unique module names."""
import torch.nn as nn

from paper_import import load_script as _load, paper_dir, register_package

PAPER = paper_dir("align_uniform")
register_package("align_uniform", "au_lib")


class TinyNet(nn.Module):
    def __init__(self, num_classes=8, in_dim=12, bn=False):
        super().__init__()
        layers = [nn.Linear(in_dim, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def tiny(bn=False):
    def ctor(num_classes):
        return TinyNet(num_classes, bn=bn)
    return ctor


def load_script(name):
    """Import papers/align_uniform/<name>.py under a unique module name (other papers have a main_lincls.py)."""
    return _load("align_uniform", f"{name}.py", f"au_script_{name}", cached=True)
