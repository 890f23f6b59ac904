"""Convert a self-supervised ResNet-50 checkpoint into an MMDetection-style backbone checkpoint.

Same command surface as mmdetection's ``tools/model_converters/selfsup2mmdet.py`` (spec §1)::

    python -u tools/model_converters/selfsup2mmdet.py ${PRETRAIN_PATH} ${STORE_PATH} --selfsup ${method}

The output is ``{'state_dict': OrderedDict}`` with torchvision/mmdet ResNet names (``conv1``, ``bn1``,
``layerN.M.*``), which ``init_cfg=dict(type='Pretrained', checkpoint=...)`` and this repo's
``tools/train_det.py --pretrained`` both load. Differences from the original (README, Deviations): every
method writes the backbone only (the original keeps MoCo's ``fc.*`` head and writes nothing for SwAV), more
methods than ``moco``/``swav`` are accepted, and a missing ``--selfsup`` is an error instead of a silent no-op.
"""
import argparse

from core.errors import UserError, cli_main
from tools.checkpoint_convert import METHOD_LAYOUTS, detect_layout, extract_backbone, load_file, save_torch, to_mmdet

# the original's two choices first; the rest are this repo's additions
CHOICES = ["moco", "swav"] + [m for m in METHOD_LAYOUTS if m not in ("moco", "swav")]


def selfsup_convert(src: str, dst: str, method: str) -> None:
    """Extract the backbone of ``src`` (a ``method`` checkpoint), print ``old -> new`` per key, save to dst."""
    obj = load_file(src)
    layout, backbone = extract_backbone(obj, method=method)
    _, _, prefix = detect_layout(obj)
    renamed = layout in ("unigrad", "detectron2")  # index / detectron2 names -> torchvision names
    for k in backbone:
        print(f"({layout}) -> {k}" if renamed else f"{prefix}{k} -> {k}")
    save_torch(to_mmdet(backbone), dst)
    print(f"saved {len(backbone)} backbone tensors ({layout} layout) to {dst}")


@cli_main
def main():
    parser = argparse.ArgumentParser(description="Convert keys in self-supervised models to mmdet style")
    parser.add_argument("src", help="src self-supervised model path")
    parser.add_argument("dst", help="save path")
    parser.add_argument("--selfsup", type=str, choices=CHOICES, help="self-supervised method of src")
    args = parser.parse_args()
    if args.selfsup is None:
        raise UserError(f"--selfsup is required (choose one of {', '.join(CHOICES)})")
    selfsup_convert(args.src, args.dst, args.selfsup)


if __name__ == "__main__":
    main()
