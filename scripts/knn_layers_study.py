#!/usr/bin/env python3
"""Study (not the product): the nearest-normal term alone with other backbone layers and neighbourhoods.

The product's term (docs/algorithm.md §1.9) takes MobileNetV2 block2 + block5, each 3 x 3 average-pooled, block5
resized to block2's grid. This script computes the term alone, per class, for other layer sets (`--layers
block2+block5,block2,block2+block5+block12`) and other neighbourhoods of the finest layer (`--pools 3,1`: the
average's window on the first layer; the later ones keep 3 x 3), with the product's other choices: a 4096-vector
coreset bank per class from the run's training normals, each position's mean distance to its k nearest bank
vectors (`--ks`), upsampled to the 256-px evaluation grid and smoothed at 5 px, the image score pooled as the
bundles pool. It prints I-AUROC / P-AUROC / AU-PRO / P-AP and the mean of the first three per class, layer set,
pool and k, on the run's painted set (select/valdata, what a choice is made on) and its test split (reported
only), then the means over the classes:

    /usr/bin/python3 scripts/knn_layers_study.py --run RUN --backbone mobilenetv2_fp32_features.onnx \\
        --layers block2+block5,block2 --pools 3,1 --ks 1,4

docs/algorithm.md §1.9, "Four more places looked, session 54", has what it printed on PIPED. About 30 s a class,
layer set and pool on 2 cores with 56 values a vector (several minutes with block12's 96 more). Needs Debian's
python3-torch, scipy and PIL (the trainer's interpreter).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "trainer", "python"))
sys.path.insert(0, HERE)
import knn_size_study as K  # noqa: E402
from knn_study import aupro, auroc, average_precision, image_score, load_mask  # noqa: E402
from vlmdiff_train.onnx_torch import OnnxModule  # noqa: E402


@torch.no_grad()
def features(net: OnnxModule, paths: Sequence[str], layers: Sequence[str], pool: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """[images, positions, channels] of the layers at the first one's grid, and that grid."""
    out, hw = [], (0, 0)
    for i in range(0, len(paths), 4):
        o = net(torch.from_numpy(np.stack([K.load(p, 256) for p in paths[i:i + 4]])))
        base = o[layers[0]].shape[-2:]
        fs = [F.avg_pool2d(o[layers[0]], pool, 1, pool // 2)]
        fs += [F.interpolate(F.avg_pool2d(o[n], 3, 1, 1), size=base, mode="bilinear", align_corners=False)
               for n in layers[1:]]
        f = torch.cat(fs, 1)
        n, c, h, w = f.shape
        hw = (h, w)
        out.append(f.permute(0, 2, 3, 1).reshape(n, h * w, c))
    return torch.cat(out), hw


def metrics(rows: Sequence[dict], maps: Sequence[np.ndarray]) -> np.ndarray:
    labels = [r["label"] for r in rows]
    masks = [load_mask(r["mask"]) if r["mask"] else np.zeros((K.E, K.E), bool) for r in rows]
    pix = np.concatenate([m.ravel() for m in maps])
    gt = np.concatenate([m.ravel() for m in masks])
    return np.array([auroc([image_score(m) for m in maps], labels), auroc(pix, gt), aupro(maps, masks),
                     average_precision(pix, gt)]) * 100


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training run directory (index.jsonl, select/valdata)")
    ap.add_argument("--backbone", required=True, help="mobilenetv2_fp32_features.onnx")
    ap.add_argument("--layers", default="block2+block5", help="layer sets, finest first, e.g. block2+block5,block2")
    ap.add_argument("--pools", default="3", help="windows of the first layer's neighbourhood average, e.g. 3,1")
    ap.add_argument("--ks", default="1", help="mean distance to the k nearest bank vectors, for each k")
    ap.add_argument("--classes", default="", help="comma-separated classes (default: every class of the index)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    sets = [s.split("+") for s in a.layers.split(",")]
    pools = [int(p) for p in a.pools.split(",")]
    ks = [int(k) for k in a.ks.split(",")]
    names = sorted({n for s in sets for n in s})
    net = OnnxModule.load(a.backbone, names).eval()
    index = [json.loads(line) for line in open(os.path.join(a.run, "index.jsonl"))]
    painted = K.painted_set(os.path.join(a.run, "select", "valdata"))
    classes = a.classes.split(",") if a.classes else sorted({r["class"] for r in index})
    res: Dict[Tuple[str, int, str], List[np.ndarray]] = {}
    for c in classes:
        train = [r["path"] for r in index if r["class"] == c and r["split"] == "train"]
        sets_of = {"painted": [r for r in painted if r["class"] == c],
                   "test": [{"path": r["path"], "mask": r.get("mask") or "", "label": int(r.get("label", 0))}
                            for r in index if r["class"] == c and r["split"] == "test"]}
        for layers in sets:
            for pool in pools:
                tf, hw = features(net, train, layers, pool)
                bank = K.coreset(tf.reshape(-1, tf.shape[-1]), K.BANK, torch.Generator().manual_seed(0))
                tag = "+".join(layers) + f"/{pool}"
                for name, rows in sets_of.items():
                    if not rows:
                        continue
                    q, _ = features(net, [r["path"] for r in rows], layers, pool)
                    for k, maps in K.distance_maps(bank, q, hw, ks=ks).items():
                        m = metrics(rows, maps)
                        res.setdefault((tag, k, name), []).append(m)
                        print(f"{c} {tag:24s} k {k} {name:7s} " + " / ".join(f"{v:.2f}" for v in m)
                              + f"  mean of three {m[:3].mean():.2f}", flush=True)
    print("means over the classes (I-AUROC / P-AUROC / AU-PRO / P-AP, mean of the first three):")
    for (tag, k, name), rows in sorted(res.items()):
        m = np.nanmean(rows, 0)
        print(f"  {tag:24s} k {k} {name:7s} " + " / ".join(f"{v:.2f}" for v in m) + f"  {m[:3].mean():.2f}"
              f"  ({len(rows)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
