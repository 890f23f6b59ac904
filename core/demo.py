"""The main job (``make demo``): SimCLR on the built-in synthetic shapes with a tiny ResNet on CPU, then kNN
and linear-probe top-1 of the pretrained backbone against the same backbone at random init.

Writes TensorBoard logs, ``log.txt``, ``curves.png`` and ``results.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn as nn

from core.augment import IMAGENET_MEAN, IMAGENET_STD, MultiView, eval_transform, solo_pipeline
from core.backbones import build_backbone
from core.data import Digits, SyntheticShapes, build_loader, seed_everything
from core.dist import DistContext
from core.engine import EngineConfig, train
from core.errors import cli_main
from core.eval import collapse_metrics, extract_features, knn_accuracy, linear_probe_features
from core.losses import nt_xent
from core.optim import warmup_cosine


class SimCLR(nn.Module):
    """Backbone + 2-layer projector; ``forward((views, labels)) -> (NT-Xent loss, logs)``."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 64, tau: float = 0.2):
        super().__init__()
        self.backbone, self.tau = backbone, tau
        d = backbone.feat_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                       nn.Linear(d, proj_dim))

    def forward(self, batch):
        (x1, x2), _ = batch
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        return nt_xent(z1, z2, self.tau), {}


def evaluate(backbone, train_loader, test_loader, device, num_classes):
    tf, ty = extract_features(backbone, train_loader, device)
    qf, qy = extract_features(backbone, test_loader, device)
    knn = {k: knn_accuracy(tf, ty, qf, qy, num_classes, k=k, t=0.07)["top1"] for k in (20, 200)}
    lin = linear_probe_features(tf, ty, qf, qy, num_classes)
    return {"knn20": knn[20], "knn200": knn[200], "linear": lin}


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "digits"],
                   help="built-in set: synthetic shapes, or scikit-learn's digits (its fixed train/val split)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.004, help="base lr per 256 images (warmup-cosine per step)")
    p.add_argument("--optim", default="adam", choices=["sgd", "adam"])
    p.add_argument("--min-scale", type=float, default=0.4, help="RandomResizedCrop minimum area")
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--hue", type=float, default=0.5, help="colour-jitter hue: 0.5 makes colour uninformative")
    p.add_argument("--jitter-p", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.image_size
    views = MultiView([solo_pipeline(size, brightness=0.4, contrast=0.4, saturation=0.4, hue=args.hue, color_jitter_prob=args.jitter_p,
                                     min_scale=args.min_scale, mean=IMAGENET_MEAN, std=IMAGENET_STD)] * 2)
    if args.data == "digits":  # --num-train / --num-test cap the fixed split
        train_set = Digits("train", size, views, args.num_train)
        mem_set = Digits("train", size, eval_transform(size), args.num_train)
        test_set = Digits("val", size, eval_transform(size), args.num_test)
    else:
        train_set = SyntheticShapes(args.num_train, size, args.seed, "train", views, cache=True)
        mem_set = SyntheticShapes(args.num_train, size, args.seed, "train", eval_transform(size), cache=True)
        test_set = SyntheticShapes(args.num_test, size, args.seed, "val", eval_transform(size), cache=True)
    loader = build_loader(train_set, args.batch_size, num_workers=args.workers, seed=args.seed)
    mem_loader = build_loader(mem_set, 512, shuffle=False, drop_last=False, num_workers=0)
    test_loader = build_loader(test_set, 512, shuffle=False, drop_last=False, num_workers=0)

    model = SimCLR(build_backbone("resnet_tiny", cifar_stem=True), tau=args.tau).to(device)
    random_backbone = copy.deepcopy(model.backbone)
    print("evaluating the random-init backbone ...")
    before = evaluate(random_backbone, mem_loader, test_loader, device, 10)

    lr = args.lr * args.batch_size / 256
    if args.optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = len(loader)

    def schedule(step, total):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, total, steps // 2, lr)

    probe = [train_set[i][0] for i in range(min(256, len(train_set)))]  # two views of fixed training images
    probe = [torch.stack([v[0] for v in probe]).to(device), torch.stack([v[1] for v in probe]).to(device)]

    def end_epoch(epoch):
        with torch.no_grad():
            model.eval()
            z1, z2 = (model.projector(model.backbone(x)) for x in probe)
            model.train()
        return collapse_metrics(z1, z2)

    cfg = EngineConfig(epochs=args.epochs, output_dir=args.out, print_freq=5, desc="SimCLR demo")
    train(model, opt, loader, cfg, DistContext(device=device), before_step=schedule, end_epoch=end_epoch)
    after = evaluate(model.backbone, mem_loader, test_loader, device, 10)
    rows = [("random init", before), (f"SimCLR {args.epochs} ep", after)]
    table = ["| backbone | kNN top-1 (k=20) | kNN top-1 (k=200) | linear probe top-1 |", "|---|---|---|---|"]
    table += [f"| {n} | {r['knn20']:.1f} | {r['knn200']:.1f} | {r['linear']:.1f} |" for n, r in rows]
    text = "\n".join(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"random_init": before, "pretrained": after, "seconds": time.time() - t0}, f, indent=1)
    print("\n" + text)
    print(f"\nkNN gain: {after['knn20'] - before['knn20']:+.1f} points; total time {time.time() - t0:.0f} s; "
          f"TensorBoard logs in {args.out}/tb, curves in {args.out}/curves.png")


if __name__ == "__main__":
    main()
