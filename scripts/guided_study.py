#!/usr/bin/env python3
"""Study (not the product): smoothing the anomaly map along the frame's own edges (a guided filter) instead of
with a Gaussian alone.

PIPED's test masks are mostly small fragments (docs/training.md, "AU-PRO by region size"), and its test split keeps
preferring a sharper map than the painted set does (docs/algorithm.md §1.9, "Four more places looked"): a Gaussian
wide enough to merge a defect's scattered responses also spreads a 3-px hair over 40 px. A guided filter (He, Sun
and Tang 2010) with the frame as guide is linear in the map, averages it in flat parts of the frame like a box
filter, and follows the frame's edges where the frame has them: a hair's response keeps the hair's shape. This
script asks whether that helps on both the painted set (where a choice would be made) and the test split.

The map studied is the training-free part of the product's map: the nearest-normal term (MobileNetV2 block2 +
block5, 3 x 3 pooled, a 4096-vector coreset per class, the mean of the k nearest), alone and plus the mean-frame
term (the distance of the preprocessed frame to its class's mean training frame, smoothed at 1 px, weighed to
`--pixel-factor` times the knn term's spread on the held-out normals). No reference map is subtracted. Every
smoothing is applied to the same raw maps:

    /usr/bin/python3 scripts/guided_study.py --run RUN --backbone mobilenetv2_fp32_features.onnx [--cache DIR]

RUN needs index.jsonl and select/valdata (`vlmdiff train --until caption` and `vlmdiff synth defects --per-image 2
--seed 1`, the select stage's own set, make both without training). The first run caches the raw maps under
RUN/guided_cache (about 10 minutes for PIPED's 12 classes on 2 cores); each smoothing then takes 30-60 s a set.
docs/algorithm.md §1.9, "Smoothing along the frame's edges", has the figures it printed (session 56). Needs
Debian's python3-torch, scipy and PIL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "trainer", "python"))
sys.path.insert(0, HERE)
from knn_size_study import BANK, coreset, features, painted_set  # noqa: E402
from knn_study import aupro, auroc, average_precision, image_score, load, load_mask  # noqa: E402
from vlmdiff_train.onnx_torch import OnnxModule  # noqa: E402

E = 256


def gray(path: str) -> np.ndarray:
    """The frame as the model sees it (E x E), luminance in [0, 1]."""
    im = Image.open(path).convert("RGB").resize((E, E), Image.BILINEAR)
    return np.asarray(im.convert("L"), np.float32) / 255


def box(x: np.ndarray, r: int) -> np.ndarray:
    return ndimage.uniform_filter(x, 2 * r + 1, mode="reflect")


def guided(p: np.ndarray, g: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of p with the grey guide g, window (2r+1)^2, regularisation eps (guide units^2)."""
    mi, mp = box(g, r), box(p, r)
    a = (box(g * p, r) - mi * mp) / (box(g * g, r) - mi * mi + eps)
    b = mp - a * mi
    return box(a, r) * g + box(b, r)


@torch.no_grad()
def knn_raw(bank: torch.Tensor, q: torch.Tensor, hw: Tuple[int, int], kmax: int) -> np.ndarray:
    """[images, kmax, h, w]: each position's kmax nearest bank distances, nearest first."""
    b2 = (bank ** 2).sum(1)
    d = torch.stack([((x ** 2).sum(1)[:, None] - 2 * x @ bank.T + b2[None]).topk(kmax, 1, largest=False)
                     .values.clamp_min(0).sqrt() for x in q])
    return d.permute(0, 2, 1).reshape(len(q), kmax, *hw).numpy()


def build_cache(run: str, backbone: str, cache: str) -> None:
    items = [json.loads(line) for line in open(os.path.join(run, "index.jsonl"))]
    sets = {
        "painted": painted_set(os.path.join(run, "select", "valdata")),
        "test": [{k: i[k] for k in ("path", "mask", "class", "label")} for i in items if i["split"] == "test"],
        "val": [{"path": i["path"], "mask": "", "class": i["class"], "label": 0} for i in items if i["split"] == "val"],
    }
    classes = sorted({r["class"] for r in sets["test"]})
    net = OnnxModule.load(backbone, ["block2", "block5"]).eval()
    gen = torch.Generator().manual_seed(0)
    out: Dict[str, dict] = {k: {"knn": [], "pix": [], "rows": []} for k in sets}
    for c in classes:
        tp = [i["path"] for i in items if i["class"] == c and i["split"] == "train"]
        train, _ = features(net, tp, E)
        bank = coreset(train.reshape(-1, train.shape[-1]), BANK, gen)
        mean = np.mean([load(p) for p in tp], 0)
        for k, rows in sets.items():
            mine = [r for r in rows if r["class"] == c]
            if not mine:
                continue
            q, hw = features(net, [r["path"] for r in mine], E)
            out[k]["knn"].append(knn_raw(bank, q, hw, 8))
            out[k]["pix"].append(np.stack([np.sqrt(((load(r["path"]) - mean) ** 2).sum(0)) for r in mine]))
            out[k]["rows"] += mine
        print(f"cached {c}", flush=True)
    os.makedirs(cache, exist_ok=True)
    for k, v in out.items():
        np.save(os.path.join(cache, f"{k}_knn.npy"), np.concatenate(v["knn"]).astype(np.float32))
        np.save(os.path.join(cache, f"{k}_pix.npy"), np.concatenate(v["pix"]).astype(np.float32))
        with open(os.path.join(cache, f"{k}_rows.json"), "w") as f:
            json.dump(v["rows"], f)


def upsample(x: np.ndarray) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[:, None], size=(E, E), mode="bilinear", align_corners=False)[:, 0].numpy()


def gauss(s: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda m, g: ndimage.gaussian_filter(m, s, mode="reflect", truncate=4.0)


def gf(r: int, eps: float, pre: float = 0.0, post: float = 0.0) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def f(m: np.ndarray, g: np.ndarray) -> np.ndarray:
        if pre:
            m = ndimage.gaussian_filter(m, pre, mode="reflect", truncate=4.0)
        m = guided(m, g, r, eps)
        if post:
            m = ndimage.gaussian_filter(m, post, mode="reflect", truncate=4.0)
        return m
    return f


def class_metrics(maps: Sequence[np.ndarray], rows: Sequence[dict], masks: Sequence[np.ndarray]) -> np.ndarray:
    pix = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([k.ravel() for k in masks])
    labels = [r["label"] for r in rows]
    i = auroc([image_score(m) for m in maps], labels) if 0 < sum(labels) < len(labels) else float("nan")
    return np.array([i, auroc(pix, y), aupro(maps, masks), average_precision(pix, y)]) * 100


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--cache", default="")
    ap.add_argument("--k", type=int, default=1, help="mean of the k nearest (1: the product's default)")
    ap.add_argument("--pixel-factor", type=float, default=0.0)
    ap.add_argument("--variants", default="", help="comma-separated names to run (default all)")
    ap.add_argument("--sets", default="painted,test")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cache = a.cache or os.path.join(a.run, "guided_cache")
    if not os.path.exists(os.path.join(cache, "test_rows.json")):
        build_cache(a.run, a.backbone, cache)
    data = {}
    for k in ("painted", "test", "val"):
        knn = np.load(os.path.join(cache, f"{k}_knn.npy"))[:, : a.k].mean(1)
        data[k] = (upsample(knn), np.load(os.path.join(cache, f"{k}_pix.npy")),
                   json.load(open(os.path.join(cache, f"{k}_rows.json"))))
    w = 0.0
    if a.pixel_factor:
        kv, pv, _ = data["val"]
        pv = np.stack([ndimage.gaussian_filter(x, 1, mode="reflect", truncate=4.0) for x in pv])
        w = a.pixel_factor * kv.std() / pv.std()
        print(f"mean-frame term weight {w:.4g} (factor {a.pixel_factor})")
    variants: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "gauss5": gauss(5), "gauss3.5": gauss(3.5), "gauss2.5": gauss(2.5),
    }
    for r in (4, 8, 16):
        for eps in (1e-2, 1e-3, 1e-4):
            variants[f"gf r{r} e{eps:g}"] = gf(r, eps)
    for eps in (1e-2, 1e-3):
        variants[f"gauss2+gf r8 e{eps:g}"] = gf(8, eps, pre=2)
        variants[f"gf r8 e{eps:g}+gauss2"] = gf(8, eps, post=2)
        variants[f"gf r4 e{eps:g}+gauss3"] = gf(4, eps, post=3)
    for s0 in (5, 3):
        for r, eps in ((8, 1e-3), (8, 1e-4), (16, 1e-4)):
            variants[f"gauss{s0}+gf r{r} e{eps:g}"] = gf(r, eps, pre=s0)
    if a.variants:
        keep = a.variants.split(",")
        variants = {n: f for n, f in variants.items() if n in keep}
    for s in a.sets.split(","):
        knn, pix, rows = data[s]
        masks = [load_mask(r["mask"]) for r in rows]
        guides = [gray(r["path"]) for r in rows]
        classes = sorted({r["class"] for r in rows})
        for name, f in variants.items():
            per = []
            for c in classes:
                idx = [i for i, r in enumerate(rows) if r["class"] == c]
                maps = []
                for i in idx:
                    m = knn[i]
                    if w:
                        m = m + w * ndimage.gaussian_filter(pix[i], 1, mode="reflect", truncate=4.0)
                    maps.append(f(m, guides[i]))
                per.append(class_metrics(maps, [rows[i] for i in idx], [masks[i] for i in idx]))
            m = np.nanmean(per, 0)
            print(f"{s:8s} {name:24s} I / P / PRO / AP {m[0]:6.2f} {m[1]:6.2f} {m[2]:6.2f} {m[3]:6.2f}  mean3 "
                  f"{m[:3].mean():6.2f}  | " + " ".join(f"{c[3:8]}:{v[2]:.1f}" for c, v in zip(classes, per)),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
