"""Small encoders for the builder tests (a ResNet-like ``fc`` at the end)."""
import torch.nn as nn


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
    import importlib.util
    import os
    import sys

    modname = f"au_script_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    path = os.path.join(os.path.dirname(__file__), "..", "..", "papers", "align_uniform", f"{name}.py")
    spec = importlib.util.spec_from_file_location(modname, os.path.abspath(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
