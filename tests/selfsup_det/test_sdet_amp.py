"""#13.8: under bf16 autocast torchvision builds anchors in the feature dtype and decodes boxes in the regression
dtype; tools/det keeps anchors and box coding in float32 (CPU autocast emulates the CUDA branch)."""
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from tools.det.model import build_mask_rcnn

SIZES, RATIOS = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5


def _inputs(dtype, h=800, w=1216):
    images = ImageList(torch.empty(()).expand(1, 3, h, w), [(h, w)])
    feats = [torch.empty((), dtype=dtype).expand(1, 8, h // s, w // s) for s in (4, 8, 16, 32, 64)]
    return images, feats


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_mask_rcnn(dict(backbone="resnet_tiny", fpn_channels=16, box_fc_dim=32, mask_conv_dim=8,
                                min_size=64, max_size=96), 3)


def test_anchors_at_800x1216_are_float32_under_bf16(model):
    images, bf16 = _inputs(torch.bfloat16)
    exact = AnchorGenerator(SIZES, RATIOS)(*_inputs(torch.float32))[0]
    plain = AnchorGenerator(SIZES, RATIOS)(images, bf16)[0]
    assert (plain.float() - exact).abs().max() >= 4  # torchvision's own: off by several pixels
    ours = model.rpn.anchor_generator(images, bf16)[0]
    assert ours.dtype == torch.float32 and torch.equal(ours, exact)


@pytest.mark.parametrize("owner,weights", [("rpn", (1.0, 1.0, 1.0, 1.0)), ("roi_heads", (10.0, 10.0, 5.0, 5.0))])
def test_box_coding_is_float32_under_bf16(model, owner, weights):
    coder = getattr(model, owner).box_coder
    assert tuple(coder.weights) == weights
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(500, 2, generator=g) * torch.tensor([1100.0, 700.0])
    anchors = torch.cat([anchors, anchors + 20 + 300 * torch.rand(500, 2, generator=g)], 1)
    codes = (0.3 * torch.randn(500, 4, generator=g)).bfloat16()
    exact = BoxCoder(weights).decode(codes.float(), [anchors])
    plain = BoxCoder(weights).decode(codes, [anchors])
    assert (plain.float() - exact).abs().max() > 1  # torchvision's own: bf16 boxes
    ours = coder.decode(codes, [anchors])
    assert ours.dtype == torch.float32 and torch.equal(ours, exact)
    gt = anchors + 5.0
    enc = coder.encode([gt.bfloat16()], [anchors.bfloat16()])[0]
    assert enc.dtype == torch.float32
    assert torch.equal(enc, BoxCoder(weights).encode([gt.bfloat16().float()], [anchors.bfloat16().float()])[0])


def test_detector_under_cpu_bf16_autocast(model):
    """Inference and a training step run under autocast; the RPN's anchors and the output boxes are float32."""
    seen = []
    h = model.rpn.anchor_generator.register_forward_hook(lambda mod, i, out: seen.append(out[0].dtype))
    try:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model([torch.rand(3, 64, 80)])
        assert out[0]["boxes"].dtype == torch.float32 and seen == [torch.float32]
        model.train()
        masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
        masks[0, 5:30, 5:30] = 1
        t = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]), "masks": masks}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, logs = model({"images": [torch.rand(3, 64, 80)], "targets": [t]})
        assert torch.isfinite(loss) and set(logs) >= {"loss_box_reg", "loss_rpn_box_reg"}
    finally:
        h.remove()
