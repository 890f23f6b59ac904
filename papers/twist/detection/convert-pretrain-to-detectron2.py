"""Convert a TWIST ResNet checkpoint to a detectron2 ``.pkl`` (bytedance/TWIST
``detection/convert-pretrain-to-detectron2.py``, spec 9.2).

    python3 detection/convert-pretrain-to-detectron2.py MODELPATH OUTPUT.pkl

The state dict is the checkpoint's ``backbone`` entry if present, else its ``state_dict``, else the file
itself; keys are renamed with the shared mapping of :func:`tools.checkpoint_convert.torchvision_to_detectron2`
(no ``layer`` -> ``stem.`` prefix, ``layerN`` -> ``res(N+1)``, ``bnK`` -> ``convK.norm``,
``downsample.0/1`` -> ``shortcut(.norm)``) and pickled as ``{"model", "__author__": "TWIST",
"matching_heuristics": True}``.
"""
from __future__ import annotations

import argparse

import torch

from core.engine import load_checkpoint
from core.errors import UserError, cli_main
from tools.checkpoint_convert import torchvision_to_detectron2, write_detectron2_pkl


def select_state(obj):
    """``backbone`` > ``state_dict`` > the object itself (the original's order)."""
    if isinstance(obj, dict) and isinstance(obj.get("backbone"), dict):
        return obj["backbone"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f"no ResNet state dict in the checkpoint (top-level keys: {keys}); expected a train.py "
                    f"checkpoint, a 'state_dict' entry or a backbone state dict")


def convert(src: str, dst: str) -> str:
    if not dst.endswith(".pkl"):
        raise UserError(f"the output path must end in .pkl (got '{dst}')")
    state = select_state(load_checkpoint(src))
    if not any("layer1" in k for k in state):
        raise UserError(f"'{src}' does not hold a ResNet backbone (no layer1.* keys; e.g. {list(state)[:3]})")
    return write_detectron2_pkl(torchvision_to_detectron2(state), dst, matching_heuristics=True, author="TWIST")


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="TWIST ResNet checkpoint -> detectron2 .pkl")
    p.add_argument("input", help="train.py checkpoint.pth, a backbone-only file or {'state_dict': ...}")
    p.add_argument("output", help="output .pkl path")
    args = p.parse_args(argv)
    out = convert(args.input, args.output)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
