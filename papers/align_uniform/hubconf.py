"""PyTorch Hub entry point of SsnL/moco_align_uniform (``hubconf.py``), without network access.

    torch.hub.load('papers/align_uniform', 'imagenet_resnet50_encoder', source='local', checkpoint=PATH)
    torch.hub.load('papers/align_uniform', 'imagenet_resnet50_encoder', source='local', with_linear_clf=True,
                   checkpoint=PATH)

The original downloads the release files ``imagenet_align_uniform.pth.tar`` (a main_moco checkpoint) and
``imagenet_align_uniform_with_linear_clf.pth.tar`` (a main_lincls checkpoint). Here the weights come from a local
file: the ``checkpoint`` argument, else the environment variable ``AU_ENCODER_CKPT`` (encoder) or
``AU_LINEAR_CLF_CKPT`` (encoder with linear classifier).
"""
import os

import torch
import torch.nn as nn
import torchvision

dependencies = ["torch", "torchvision"]

ENV_ENCODER = "AU_ENCODER_CKPT"
ENV_LINEAR_CLF = "AU_LINEAR_CLF_CKPT"
RELEASE = "https://github.com/SsnL/moco_align_uniform/releases/download/v1.0-checkpoints/"


class _Normalize(nn.Module):
    """L2-normalise along the last dimension (the MoCo builder's ``F.normalize`` of the query)."""

    def forward(self, x):
        return nn.functional.normalize(x, dim=-1)


def _error(msg):
    try:
        from core.errors import UserError
    except ImportError:  # hub used outside this repository
        return RuntimeError(msg)
    return UserError(msg)


def _state_dict(checkpoint, env, release_name):
    path = checkpoint or os.environ.get(env, "")
    if not path:
        raise _error(f"no checkpoint given: pass checkpoint=PATH or set {env} to a local copy of "
                     f"{RELEASE}{release_name} (this repository does not download weights)")
    if not os.path.isfile(path):
        raise _error(f"checkpoint '{path}' does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise _error(f"'{path}' is not a MoCo checkpoint (no 'state_dict' key)")
    return ckpt["state_dict"]


def _load_strict(model, state, path_hint):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise _error(f"{path_hint}: keys do not match a ResNet-50 ({' '.join(first[:2])[:300]})") from None


def imagenet_resnet50_encoder(*, with_linear_clf=False, checkpoint=None):
    """ResNet-50 trained on full ImageNet with 3 L_align(alpha=2) + L_uniform(t=3) (strong aug + MLP + cos,
    batch 256, lr 0.03): 67.694% top-1 linear accuracy in the original release.

    ``with_linear_clf=False``: the encoder with its MLP head and final L2 normalisation (output: 128-d unit
    vectors), weights = the ``module.encoder_q.*`` entries of a main_moco checkpoint.
    ``with_linear_clf=True``: ResNet-50 with the 1000-way linear classifier of a main_lincls checkpoint.
    The model is returned as built (no ``.eval()`` call), like the original.
    """
    if with_linear_clf:
        state = _state_dict(checkpoint, ENV_LINEAR_CLF, "imagenet_align_uniform_with_linear_clf.pth.tar")
        model = torchvision.models.resnet50(weights=None, num_classes=1000)
        if not all(k.startswith("module.") for k in state):
            raise _error("linear-classifier checkpoint: every key must start with 'module.' (a main_lincls "
                         "checkpoint)")
        _load_strict(model, {k[len("module."):]: v for k, v in state.items()}, "linear-classifier checkpoint")
        return model
    state = _state_dict(checkpoint, ENV_ENCODER, "imagenet_align_uniform.pth.tar")
    model = torchvision.models.resnet50(weights=None, num_classes=128)
    model.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), model.fc, _Normalize())
    prefix = "module.encoder_q."
    enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not enc:
        raise _error(f"encoder checkpoint has no '{prefix}*' keys (expected a main_moco checkpoint)")
    _load_strict(model, enc, "encoder checkpoint")
    return model
