"""Test helpers: registers the ``au_lib`` package by path (importing this module is enough, also in spawned
processes), small encoders with a ResNet-like ``fc``, and script loading under unique module names."""
import importlib.util
import os
import sys

import torch.nn as nn

PAPER = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "align_uniform"))
if "au_lib" not in sys.modules:
    _pkg = os.path.join(PAPER, "au_lib")
    _spec = importlib.util.spec_from_file_location("au_lib", os.path.join(_pkg, "__init__.py"),
                                                   submodule_search_locations=[_pkg])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["au_lib"] = _mod
    _spec.loader.exec_module(_mod)


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
    modname = f"au_script_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, os.path.join(PAPER, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
