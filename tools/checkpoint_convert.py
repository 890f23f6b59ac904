"""Universal self-supervised ResNet checkpoint converter.

Recognises the checkpoint layouts of the released SSL repositories and of this repo (spec §5.8), extracts the
ResNet backbone under torchvision's parameter names (``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``,
``layerN.M.downsample.{0,1}``; no ``fc``) and writes it as

* a torchvision state dict (``torch.save`` of a flat dict),
* an MMDetection-loadable file (``{'state_dict': OrderedDict}``, spec §1),
* a detectron2 ``.pkl`` (MoCo's ``convert-pretrain-to-detectron2.py`` key mapping, spec §3.1).

Command line::

    python -m tools.checkpoint_convert SRC DST --to {torchvision,mmdet,detectron2} [--selfsup METHOD]

Layouts (name: signature -> extraction):

==============  ==================================================  =========================================
``moco``        ``state_dict`` with ``module.encoder_q.``             strip ``module.encoder_q.``, drop ``fc*``
``simsiam``     ``state_dict`` with ``module.encoder.conv1.*``        strip ``module.encoder.``, drop ``fc*``
``swav``        ``module.conv1.*`` (+ ``projection_head``/prototypes)  strip ``module.``, drop heads
``barlow``      ``model`` with ``module.backbone.``                    strip ``module.backbone.``
``dino``        top-level ``teacher`` and ``student``                  teacher, strip ``module.``/``backbone.``
``twist``       top-level ``backbone`` dict                           use as is
``unigrad``     ``model`` with Sequential ``module.encoder.<i>.``      index 0/1/4-7 -> conv1/bn1/layer1-4
``mmselfsup``   ``state_dict`` with ``backbone.`` (+ neck/head)        strip ``backbone.``
``openselfsup`` ``encoder_q.0.``                                     strip ``encoder_q.0.``
``detectron2``  ``stem.conv1.weight`` / ``res2.*`` (a converted pkl)   inverse of the detectron2 mapping
``repo``        this repo's engine checkpoints: ``model`` holding a    strip the backbone's prefix (online /
                method state dict, backbone under any prefix           query branch preferred over EMA copies)
``plain``       flat torchvision keys (Barlow ``resnet50.pth``, DINO   drop ``fc*``
                backbone-only, BYOL via byol-convert, torchvision)
==============  ==================================================  =========================================
"""
from __future__ import annotations

import argparse
import errno
import os
import pickle
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from core.errors import UserError, cli_main

LAYOUTS = ("moco", "simsiam", "swav", "barlow", "dino", "twist", "unigrad", "mmselfsup", "openselfsup",
           "detectron2", "repo", "plain")

# this repo's own pretraining checkpoints: papers/unigrad (every method) writes ``model`` with
# ``module.encoder.<torchvision names>`` (detected as "simsiam"), papers/rdm main_pretrain writes ``state_dict``
# with ``backbone.*`` (detected as "mmselfsup"); other prefixes are "repo"
_OWN = ("simsiam", "mmselfsup", "repo")
# which detected layouts each ``--selfsup`` method accepts ("plain" = a backbone-only release of that method)
METHOD_LAYOUTS = {
    "moco": ("moco", "openselfsup", "plain") + _OWN,
    "swav": ("swav", "plain"),
    "simsiam": ("simsiam", "plain", "mmselfsup", "repo"),
    "byol": ("plain", "mmselfsup", "simsiam", "repo"),
    "barlow": ("barlow", "plain") + _OWN,
    "barlowtwins": ("barlow", "plain") + _OWN,
    "dino": ("dino", "plain"),
    "twist": ("twist", "plain", "repo"),
    "unigrad": ("unigrad", "plain") + _OWN,
    "mmselfsup": ("mmselfsup",),
    "openselfsup": ("openselfsup",),
    "detectron2": ("detectron2",),
    "repo": ("repo",),
    "auto": LAYOUTS,
}

# UniGrad's encoder = Sequential(conv1, bn1, relu, maxpool, layer1..4, avgpool, Flatten) (unigrad spec §3.1)
UNIGRAD_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# name fragments of momentum / EMA / key copies, never preferred when a checkpoint holds several backbones
_SECONDARY = ("encoder_k", "momentum", "target", "teacher", "ema", "key_encoder", "_k.")


# ----------------------------------------------------------------------------------------------- loading
def _to_tensor(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v, copy=True))  # keeps 0-d arrays 0-d
    return v


def load_file(path: str) -> Any:
    """Load a checkpoint: ``torch.load`` (CPU, full unpickling), falling back to plain ``pickle`` for
    detectron2 ``.pkl`` files. Raises a one-line UserError for a missing or unreadable file."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e_torch:
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except Exception:
            raise UserError(f"checkpoint '{path}' could not be read ({e_torch.__class__.__name__}: "
                            f"{str(e_torch).splitlines()[0] if str(e_torch) else ''})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and (torch.is_tensor(v) or isinstance(v, np.ndarray)) for k, v in obj.items())


def _top_keys(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"<{type(obj).__name__}>"
    keys = [str(k) for k in obj]
    shown = keys[:12]
    return ", ".join(shown) + (f", ... ({len(keys)} keys)" if len(keys) > 12 else "")


# ---------------------------------------------------------------------------------------- key helpers
def _take(sd: Dict[str, Any], prefix: str, drop: Tuple[str, ...] = ("fc.",)) -> "OrderedDict[str, Any]":
    """Keys under ``prefix`` with the prefix removed, minus keys starting with any of ``drop``."""
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith(prefix):
            name = k[len(prefix):]
            if not any(name.startswith(d) for d in drop):
                out[name] = _to_tensor(v)
    return out


def _resnet_prefixes(sd: Dict[str, Any]) -> List[str]:
    """Every prefix P under which ``sd`` holds a torchvision-named ResNet (P+conv1.weight, P+layer1.0.*)."""
    found = []
    for k in sd:
        if k.endswith("layer1.0.conv1.weight"):
            p = k[: -len("layer1.0.conv1.weight")]
            if p + "conv1.weight" in sd and p + "layer4.0.conv1.weight" in sd:
                found.append(p)
    return found


def _rank_prefix(p: str) -> Tuple[int, int, str]:
    low = p.lower()
    secondary = any(s in low for s in _SECONDARY)
    return (1 if secondary else 0, len(p), p)


def unigrad_to_torchvision(sd: Dict[str, Any], prefix: str = "module.encoder.") -> "OrderedDict[str, Any]":
    """UniGrad's Sequential encoder keys ``<prefix><i>.*`` -> torchvision names (index 0/1/4-7 = conv1/bn1/
    layer1-4; 2/3/8/9 hold no parameters)."""
    out = OrderedDict()
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        idx, _, rest = k[len(prefix):].partition(".")
        if idx in UNIGRAD_INDEX:
            out[f"{UNIGRAD_INDEX[idx]}.{rest}"] = _to_tensor(v)
    return out


def detectron2_to_torchvision(sd: Dict[str, Any]) -> "OrderedDict[str, Any]":
    """Inverse of :func:`torchvision_to_detectron2` (stem/resN/convK.norm/shortcut -> torchvision names);
    ``stem.fc.*`` head keys are dropped."""
    out = OrderedDict()
    for k, v in sd.items():
        name = k
        if name.startswith("stem."):
            name = name[len("stem."):]
            if name.startswith("fc."):
                continue
        name = re.sub(r"^res([2-5])\.", lambda m: f"layer{int(m.group(1)) - 1}.", name)
        name = name.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
        name = re.sub(r"conv([1-3])\.norm", r"bn\1", name)
        out[name] = _to_tensor(v)
    return out


# ------------------------------------------------------------------------------------------ recognition
def detect_layout(obj: Any) -> Tuple[str, Dict[str, Any], str]:
    """Recognise ``obj`` (a loaded checkpoint). Returns ``(layout, state_dict, prefix)``: the flat dict that
    holds the backbone and the prefix to strip (``""`` for layouts with a dedicated extraction).
    Raises a UserError listing the top-level keys when no known layout matches."""
    if not isinstance(obj, dict):
        raise UserError(f"unknown checkpoint layout: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("teacher"), dict) and isinstance(obj.get("student"), dict):
        sd = {k.replace("module.", "", 1): v for k, v in obj["teacher"].items()}
        return "dino", sd, "backbone."
    if _is_state_dict(obj.get("backbone")) and not _is_state_dict(obj):
        return "twist", obj["backbone"], ""
    if isinstance(obj.get("model"), dict) and "__author__" in obj:  # detectron2 pkl
        sd = obj["model"]
    elif _is_state_dict(obj.get("state_dict")):
        sd = obj["state_dict"]
    elif _is_state_dict(obj.get("model")):
        sd = obj["model"]
    elif _is_state_dict(obj):
        sd = obj
    else:
        raise UserError(f"unknown checkpoint layout: no state dict found (top-level keys: {_top_keys(obj)})")
    wrapped = sd is not obj

    if "stem.conv1.weight" in sd and any(k.startswith("res2.") for k in sd):
        return "detectron2", sd, ""
    if "module.encoder_q.conv1.weight" in sd:
        return "moco", sd, "module.encoder_q."
    if "module.encoder.0.weight" in sd and "module.encoder.4.0.conv1.weight" in sd:
        return "unigrad", sd, "module.encoder."
    if "module.encoder.conv1.weight" in sd:
        return "simsiam", sd, "module.encoder."
    if "module.conv1.weight" in sd:
        return "swav", sd, "module."
    if "module.backbone.conv1.weight" in sd:
        return "barlow", sd, "module.backbone."
    if "encoder_q.0.conv1.weight" in sd:
        return "openselfsup", sd, "encoder_q.0."
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        return "plain", sd, ""
    if wrapped and "backbone.conv1.weight" in sd and obj.get("state_dict") is sd and "model" not in obj:
        return "mmselfsup", sd, "backbone."
    prefixes = _resnet_prefixes(sd)
    if prefixes:
        return "repo", sd, sorted(prefixes, key=_rank_prefix)[0]
    raise UserError(f"unknown checkpoint layout (top-level keys: {_top_keys(obj)}"
                    + (f"; first state-dict keys: {', '.join(list(sd)[:6])}" if wrapped else "") + ")")


def check_resnet(sd: Dict[str, Any], what: str = "backbone") -> None:
    """The extracted dict must look like a torchvision ResNet trunk: stem and four stages."""
    need = ["conv1.weight", "bn1.weight"] + [f"layer{i}.0.conv1.weight" for i in (1, 2, 3, 4)]
    missing = [k for k in need if k not in sd]
    if missing:
        raise UserError(f"{what} is not a ResNet with torchvision names: missing {missing} "
                        f"(first keys: {', '.join(list(sd)[:6])})")


def extract_backbone(obj: Any, method: Optional[str] = None, prefix: Optional[str] = None
                     ) -> Tuple[str, "OrderedDict[str, torch.Tensor]"]:
    """Recognise the layout of ``obj`` and return ``(layout, backbone)``: torchvision-named tensors of the
    ResNet trunk, no ``fc``. ``method`` (a ``--selfsup`` value) restricts the accepted layouts; ``prefix``
    forces a prefix to strip from the located state dict (for layouts this function does not know)."""
    if isinstance(obj, str):
        obj = load_file(obj)
    if method is not None and method not in METHOD_LAYOUTS:
        raise UserError(f"unknown method '{method}' (choose one of {', '.join(METHOD_LAYOUTS)})")
    layout, sd, pfx = detect_layout(obj)
    if prefix is not None:
        pfx = prefix
    elif method is not None and layout not in METHOD_LAYOUTS[method]:
        raise UserError(f"--selfsup {method}: the checkpoint looks like a '{layout}' file, not {method} "
                        f"(accepted layouts: {', '.join(METHOD_LAYOUTS[method])})")
    if layout == "detectron2" and prefix is None:
        bb = detectron2_to_torchvision(sd)
    elif layout == "unigrad" and prefix is None:
        bb = unigrad_to_torchvision(sd, pfx)
    elif layout == "swav" and prefix is None:
        bb = _take(sd, pfx, drop=("fc.", "projection_head", "prototypes"))
    elif layout == "dino" and prefix is None:
        bb = _take(sd, pfx, drop=("fc.", "head."))
    else:
        bb = _take(sd, pfx)
    if not bb:
        raise UserError(f"no backbone keys under prefix '{pfx}' in the '{layout}' checkpoint")
    check_resnet(bb, f"the backbone extracted from the '{layout}' checkpoint")
    return layout, bb


# ------------------------------------------------------------------------------------------------ writers
def torchvision_to_detectron2(state_dict: Dict[str, Any]) -> "OrderedDict[str, np.ndarray]":
    """MoCo/TWIST ``convert-pretrain-to-detectron2.py`` renaming (spec §3.1), applied to every key, in order:
    a key without ``layer`` gets ``stem.``; ``layer1..4`` -> ``res2..5``; ``bn1/2/3`` -> ``conv1/2/3.norm``;
    ``downsample.0`` -> ``shortcut``; ``downsample.1`` -> ``shortcut.norm``. Values become numpy arrays
    (as in the original). ``fc.*`` keys (if any) become ``stem.fc.*``, which detectron2 ignores."""
    out = OrderedDict()
    for k, v in state_dict.items():
        name = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[name] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
    return out


def write_detectron2_pkl(state: Dict[str, Any], path: str, matching_heuristics: bool = True,
                         author: str = "MOCO") -> str:
    """Pickle ``{"model": state, "__author__": author, "matching_heuristics": ...}`` (detectron2's model-zoo
    format: ``DetectionCheckpointer`` loads it with name-matching heuristics). Tensors become numpy."""
    model = OrderedDict((k, v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in state.items())
    res = {"model": model, "__author__": author, "matching_heuristics": matching_heuristics}
    return _atomic_write(path, lambda f: pickle.dump(res, f))


def to_mmdet(backbone: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """MMDetection checkpoint: ``{'state_dict': OrderedDict(torchvision-named backbone keys)}`` — what
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads into mmdet's ResNet (spec §1)."""
    return {"state_dict": OrderedDict((k, v) for k, v in backbone.items())}


def to_detector_keys(backbone: Dict[str, torch.Tensor], prefix: str = "backbone.body.") -> Dict[str, Any]:
    """torchvision Mask R-CNN names: key ``k`` -> ``backbone.body.k`` (spec §4.2)."""
    return OrderedDict((prefix + k, v) for k, v in backbone.items() if not k.startswith("fc."))


def _atomic_write(path: str, write) -> str:
    """Create the folder, write a temp file next to ``path`` (opened by Python, so an unwritable or missing
    place is an ``OSError`` naming the path: one ``error:`` line through ``cli_main``) and ``os.replace`` it
    onto ``path``: a kill mid-write leaves no truncated output. The file follows the umask."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    tmp = os.path.join(folder, f".tmp_{os.path.basename(path)}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_torch(state: Dict[str, Any], path: str) -> str:
    return _atomic_write(path, lambda f: torch.save(state, f))


FORMATS = ("torchvision", "mmdet", "detectron2")


def convert(src: Any, dst: str, fmt: str = "torchvision", method: Optional[str] = None,
            prefix: Optional[str] = None, verbose: bool = False) -> Tuple[str, Dict[str, Any]]:
    """Convert ``src`` (path or loaded object) to ``fmt`` at ``dst``. Returns ``(layout, backbone)``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown output format '{fmt}' (choose one of {', '.join(FORMATS)})")
    layout, bb = extract_backbone(src, method=method, prefix=prefix)
    if fmt == "torchvision":
        save_torch(bb, dst)
    elif fmt == "mmdet":
        save_torch(to_mmdet(bb), dst)
    else:
        if not dst.endswith(".pkl"):
            raise UserError(f"a detectron2 file must end with .pkl, got '{dst}'")
        write_detectron2_pkl(torchvision_to_detectron2(bb), dst, author=layout.upper())
    if verbose:
        print(f"{layout} checkpoint -> {fmt} ({len(bb)} backbone tensors) -> {dst}")
    return layout, bb


# every flag is read (tests/selfsup_det/test_sdet_flags.py)
NO_EFFECT: Dict[str, str] = {}
UNSUPPORTED: Dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert a self-supervised ResNet checkpoint (any known layout) "
                                            "to torchvision / MMDetection / detectron2")
    p.add_argument("src", help="input checkpoint")
    p.add_argument("dst", help="output file (.pkl for detectron2)")
    p.add_argument("--to", default="torchvision", choices=FORMATS, help="output format")
    p.add_argument("--selfsup", default="auto", choices=sorted(METHOD_LAYOUTS),
                   help="method the checkpoint comes from (auto = recognise the layout)")
    p.add_argument("--prefix", default=None, help="force this prefix to strip (unknown layouts)")
    return p


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    convert(args.src, args.dst, args.to, method=args.selfsup, prefix=args.prefix, verbose=True)


if __name__ == "__main__":
    main()
