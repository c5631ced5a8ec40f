#!/usr/bin/env python3
"""Study (not the product): a nearest-normal (PatchCore-style) term added to a bundle's anomaly maps.

docs/algorithm.md §1.9, "Studied, not built yet: a nearest-normal term", has the figures this script printed.
The term uses the frame's own features only: the named stages of a feature backbone (ONNX, run with the trainer's
onnx_torch), each 3x3 average-pooled, upsampled to the first stage's resolution, concatenated and averaged over
channel groups down to --dims values; per class, a memory bank of those vectors at the positions of the class's
train normals (all, or a seeded random --bank-fraction of them); a position's value is its distance to the
nearest bank vector; the map is upsampled to 256 px and smoothed (sigma 4). It is added to the product's maps as
map + a * (sd(map) / sd(term)) * term, the spreads over the painted set's normals, for each a of --factors; a is
chosen on the painted set (mean of I-AUROC, P-AUROC, AU-PRO), the test split is only reported.

Inputs: a training run directory (its index.jsonl and select/valdata painted set) and the maps of its bundle:

    vlmdiff eval --bundle RUN/bundle --data DATA --val-data RUN/select/valdata --maps MAPS --out MAPS/eval
    /usr/bin/python3 scripts/knn_study.py --run RUN --maps MAPS --backbone resnet50v2_stage1to3.onnx \\
        --layers stage1,stage2 --bank-fraction 0.1

The term's maps are cached in MAPS (knn_cache_*.npz) so another factor list costs seconds. Needs Debian's
python3-torch, scipy and PIL (the trainer's interpreter).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer", "python"))
from vlmdiff_train.onnx_torch import OnnxModule  # noqa: E402

S = 256
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def load(path: str) -> np.ndarray:
    im = Image.open(path).convert("RGB").resize((S, S), Image.BILINEAR)
    return (np.asarray(im, np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD


def load_mask(path: str) -> np.ndarray:
    if not path:
        return np.zeros((S, S), np.uint8)
    return (np.asarray(Image.open(path).convert("L").resize((S, S), Image.BILINEAR)) > 0).astype(np.uint8)


@torch.no_grad()
def features(net: OnnxModule, layers: Sequence[str], dims: int, paths: Sequence[str]) -> torch.Tensor:
    """[images, positions, dims]: the pooled, aligned, concatenated and channel-averaged stage features."""
    out = []
    for i in range(0, len(paths), 8):
        o = net(torch.from_numpy(np.stack([load(p) for p in paths[i:i + 8]])))
        first = F.avg_pool2d(o[layers[0]], 3, 1, 1)
        rest = [F.interpolate(F.avg_pool2d(o[n], 3, 1, 1), size=first.shape[-2:], mode="bilinear",
                              align_corners=False) for n in layers[1:]]
        f = torch.cat([first] + rest, 1)
        n, c, h, w = f.shape
        out.append(F.adaptive_avg_pool1d(f.permute(0, 2, 3, 1).reshape(n, h * w, c), dims))
    return torch.cat(out)


def nearest_maps(bank: torch.Tensor, queries: torch.Tensor) -> np.ndarray:
    """Distance of each query position to its nearest bank vector, as 256 px smoothed maps."""
    b2 = (bank ** 2).sum(1)
    rows = [((q ** 2).sum(1)[:, None] - 2 * q @ bank.T + b2[None]).min(1).values.clamp_min(0).sqrt() for q in queries]
    m = torch.stack(rows)
    side = int(round(m.shape[1] ** 0.5))
    m = F.interpolate(m.reshape(-1, 1, side, side), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    return np.stack([ndimage.gaussian_filter(x, 4, mode="reflect", truncate=4.0) for x in m.numpy()])


def image_score(m: np.ndarray) -> float:
    """The bundle's score: avg_pool2d(8, stride 1, no padding) eight times, then the max."""
    t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
    for _ in range(8):
        t = F.avg_pool2d(t, 8, stride=1)
    return float(t.max())


def auroc(s: Sequence[float], y: Sequence[int]) -> float:
    s, y = np.asarray(s, np.float64), np.asarray(y, bool)
    r = rankdata(s)
    npos, nneg = y.sum(), (~y).sum()
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def average_precision(s: np.ndarray, y: np.ndarray) -> float:
    o = np.argsort(-s, kind="mergesort")
    y = y[o].astype(np.float64)
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float((prec * y).sum() / max(y.sum(), 1))


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], limit: float = 0.3) -> float:
    normal = np.sort(np.concatenate([m[k == 0] for m, k in zip(maps, masks)]))
    fprs = np.linspace(0, limit, 61)
    ths = normal[np.clip((normal.size * (1 - fprs)).astype(int), 0, normal.size - 1)]
    pros = []
    for m, k in zip(maps, masks):
        lab, n = ndimage.label(k, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            v = np.sort(m[lab == r])
            pros.append(1 - np.searchsorted(v, ths, side="right") / v.size)
    return float(np.trapz(np.mean(pros, 0), fprs) / limit) if pros else float("nan")


def metrics(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
    """I-AUROC, P-AUROC, AU-PRO, P-AP in percent."""
    pix = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([k.ravel() for k in masks])
    return np.array([auroc([image_score(m) for m in maps], labels), auroc(pix, y), aupro(maps, masks),
                     average_precision(pix, y)]) * 100


def read_maps(maps_dir: str) -> Dict[str, List[dict]]:
    data = {}
    for split in ("validation", "test"):
        with open(os.path.join(maps_dir, split, "maps.csv")) as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["map"] = np.fromfile(os.path.join(maps_dir, split, r["file"]), np.float32).reshape(S, S)
            r["mask_px"] = load_mask(r["mask"])
        data[split] = rows
    return data


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training run directory (index.jsonl)")
    ap.add_argument("--maps", required=True, help="vlmdiff eval --maps output of the run's bundle")
    ap.add_argument("--backbone", required=True, help="feature backbone ONNX (e.g. resnet50v2_stage1to3.onnx)")
    ap.add_argument("--layers", default="stage1,stage2")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--bank-fraction", type=float, default=1.0)
    ap.add_argument("--factors", default="0,0.25,0.5,1,2,4")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    layers = a.layers.split(",")
    factors = [float(v) for v in a.factors.split(",")]
    items = [json.loads(line) for line in open(os.path.join(a.run, "index.jsonl"))]
    data = read_maps(a.maps)
    rows = data["validation"] + data["test"]
    classes = sorted({r["class"] for r in data["test"]})
    cache = os.path.join(a.maps, f"knn_cache_{a.bank_fraction}_{'-'.join(layers)}_{a.dims}.npz")
    if os.path.exists(cache):
        saved = np.load(cache)
        for i, r in enumerate(rows):
            r["term"] = saved[f"m{i}"]
    else:
        net = OnnxModule.load(a.backbone, layers).eval()
        gen = torch.Generator().manual_seed(0)
        for c in classes:
            bank = features(net, layers, a.dims, [it["path"] for it in items
                                                   if it["class"] == c and it["split"] == "train"]).reshape(-1, a.dims)
            if a.bank_fraction < 1:
                bank = bank[torch.randperm(bank.shape[0], generator=gen)[: max(1, int(a.bank_fraction * bank.shape[0]))]]
            mine = [r for r in rows if r["class"] == c]
            for r, m in zip(mine, nearest_maps(bank, features(net, layers, a.dims, [r["path"] for r in mine]))):
                r["term"] = m
            print(f"{c}: bank of {bank.shape[0]} vectors", flush=True)
        np.savez(cache, **{f"m{i}": r["term"] for i, r in enumerate(rows)})
    normals = [r for r in data["validation"] if r["label"] == "0"]
    sd_map = np.std(np.concatenate([r["map"].ravel() for r in normals]))
    sd_term = np.std(np.concatenate([r["term"].ravel() for r in normals]))
    print(f"spread on the painted set's normals: map {sd_map:.4g}, term {sd_term:.4g}")
    results = {}
    for f in factors + [None]:
        line = []
        for split in ("validation", "test"):
            per = []
            for c in classes:
                mine = [r for r in data[split] if r["class"] == c]
                maps = [r["term"] if f is None else r["map"] + f * sd_map / sd_term * r["term"] for r in mine]
                per.append(metrics(maps, [r["mask_px"] for r in mine], [int(r["label"]) for r in mine]))
            results[(f, split)] = (np.nanmean(per, 0), per)
            m = results[(f, split)][0]
            line.append(f"{split} I/P/PRO/AP {np.round(m, 2)} mean3 {m[:3].mean():.2f}")
        print(f"{'term alone' if f is None else f'factor {f}'}: " + "   ".join(line), flush=True)
    best = max(factors, key=lambda f: results[(f, "validation")][0][:3].mean())
    print(f"chosen on the painted set: factor {best}")
    for c, v, t in zip(classes, results[(best, "validation")][1], results[(best, "test")][1]):
        print(f"  {c:22s} painted {np.round(v, 2)}  test {np.round(t, 2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
