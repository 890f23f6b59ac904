"""Unsupervised-classification evaluation (``engine.eval_one_epoch`` + ``evaluate_cluster.py``, spec 8).

The model runs in eval mode (the logit BN uses its running statistics), p = softmax(logits / tau), the
predicted cluster is argmax p. Predictions are gathered over ranks and put back in dataset order; NMI, AMI,
ARI, FMI (sklearn defaults) and, when the number of clusters equals the number of classes (``--dim 1000`` on
ImageNet), the Hungarian-matched ACC and top-5 ACC with :func:`core.eval.clustering.cluster_metrics`.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from core import dist
from core.augment.recipes import eval_transform
from core.data import build_dataset, build_loader
from core.errors import UserError
from core.eval.clustering import cluster_metrics


class Indexed(torch.utils.data.Dataset):
    """(image, label, index) so predictions can be re-ordered after the distributed gather."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


def val_loader(args, ctx):
    """Val split with Resize(size * 256/224) + CenterCrop(size), no shuffling, batch ``--batch-size``."""
    ds = build_dataset(args.data_path, "val", eval_transform(args.img_size), image_size=args.img_size,
                       num_samples=args.num_samples or None, seed=args.seed)
    return build_loader(Indexed(ds), args.batch_size, shuffle=False, drop_last=False,
                        num_workers=args.num_workers, seed=args.seed)


@torch.no_grad()
def predict(model, loader, device, tau: float = 1.0, topk: int = 5):
    """Ordered (pred, labels, top-k clusters) over the whole loader, gathered from every rank."""
    was = model.training
    model.eval()
    preds, labels, tops, idxs = [], [], [], []
    for x, y, idx in loader:
        p = F.softmax(model(x.to(device, non_blocking=True)).float() / tau, dim=-1)
        k = min(topk, p.shape[1])
        preds.append(dist.concat_all_gather(p.argmax(dim=1)))
        tops.append(dist.concat_all_gather(p.topk(k, dim=1).indices))
        labels.append(dist.concat_all_gather(y.to(device).long()))
        idxs.append(dist.concat_all_gather(idx.to(device).long()))
    model.train(was)
    idx = torch.cat(idxs).cpu().numpy()
    n = int(idx.max()) + 1
    out_pred, out_lab = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    out_top = np.zeros((n, tops[0].shape[1]), dtype=np.int64)
    out_pred[idx] = torch.cat(preds).cpu().numpy()  # sampler padding duplicates overwrite the same slot
    out_lab[idx] = torch.cat(labels).cpu().numpy()
    out_top[idx] = torch.cat(tops).cpu().numpy()
    return out_pred, out_lab, out_top


def evaluate_clustering(model, loader, device, tau: float, dim: int, output_dir: str,
                        save: bool = True) -> Dict[str, object]:
    """Metrics as ``eval_one_epoch``; ACC/top-5 ACC only when ``dim`` equals the number of classes (-1
    otherwise, as the original's ``calc_acc``). Saves ``match.npy``, ``mapped_preds.npy``,
    ``ordered_real_labels.npy``, ``ordered_pred_labels.npy`` and ``confusion.pdf`` in ``output_dir``."""
    pred, labels, top = predict(model, loader, device, tau)
    num_classes = int(labels.max()) + 1
    calc_acc = dim == num_classes
    m = cluster_metrics(pred, labels, top if calc_acc else None, num_clusters=dim)
    stats: Dict[str, object] = {"nmi": m["nmi"], "ami": m["ami"], "ari": m["ari"], "fscore": m["fmi"],
                                "adjacc": m["acc"] if calc_acc else -1.0,
                                "acc5": m.get("acc_top5", -1.0) if calc_acc else -1.0}
    match = m["match"]
    mapped = match[pred]
    stats["match"] = np.stack([np.arange(len(match)), match], axis=1)  # (cluster, class) pairs
    stats["mapped_preds"] = mapped
    if save:
        os.makedirs(output_dir, exist_ok=True)
        np.save(os.path.join(output_dir, "match.npy"), stats["match"])
        np.save(os.path.join(output_dir, "mapped_preds.npy"), mapped)
        np.save(os.path.join(output_dir, "ordered_real_labels.npy"), labels)
        np.save(os.path.join(output_dir, "ordered_pred_labels.npy"), pred)
        if calc_acc:
            confusion_plot(mapped, labels, num_classes, os.path.join(output_dir, "confusion.pdf"))
    print("NMI: {nmi}, AMI: {ami}, ARI: {ari}, F: {fscore}, ACC: {adjacc}, ACC-Top5: {acc5}".format(**stats))
    return stats


def confusion_plot(mapped: np.ndarray, labels: np.ndarray, num_classes: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cm, (labels, np.clip(mapped, 0, num_classes - 1)), 1)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xlabel("predicted class (matched cluster)")
    ax.set_ylabel("true class")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def inference(model, args, device) -> Dict[str, object]:
    """``--inference_only``: the top-10 clusters of one image, named through the cluster -> class matching
    of ``--match_path`` and the class names of the val split (the original needed a missing module)."""

    if not args.match_path or not os.path.isfile(args.match_path):
        raise UserError(f"--match_path '{args.match_path}' does not exist (write it with --eval_only 1)")
    match = np.load(args.match_path)
    table = {int(c): int(k) for c, k in match}
    ds = build_dataset(args.data_path, "val", None, image_size=args.img_size, seed=args.seed)
    classes = list(getattr(ds, "classes", []))
    tf = eval_transform(args.img_size)
    target = None
    if os.path.exists(args.img_path):
        from core.data import pil_loader

        img = pil_loader(args.img_path)
    else:
        try:
            img, target = ds[int(args.img_path)]
        except (ValueError, IndexError):
            raise UserError(f"--img_path '{args.img_path}' is neither a file nor a val index") from None
    model.eval()
    probs = F.softmax(model(tf(img).unsqueeze(0).to(device)).float() / args.tau, dim=-1)[0]
    p, ind = probs.topk(min(10, probs.numel()))
    rows = []
    for i, (pi, ci) in enumerate(zip(p.tolist(), ind.tolist())):
        k = table.get(ci, -1)
        name = classes[k] if 0 <= k < len(classes) else str(k)
        rows.append((pi, ci, name))
        print(f"Top {i + 1}: {pi:.3f}  {name}")
    if target is not None:
        print(f"Target: {classes[target] if target < len(classes) else target}")
    return {"top": rows, "target": target}
