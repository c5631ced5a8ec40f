#!/usr/bin/env python3
"""Study (not the product): the nearest-normal term computed on the frame at a larger input than the model's.

The small preset sees every frame squashed to 256 x 256; on an 800 x 600 frame a cut a few hundred pixels large
is a handful of MobileNetV2 block2 cells there. This script asks whether the nearest-normal term alone (the
map's main signal on materials the reconstruction cannot redraw, docs/algorithm.md §1.9) finds more when its
backbone sees the frame at S x S instead: MobileNetV2 block2 + block5 (56 values), each 3 x 3 average-pooled,
block5 upsampled to block2's grid; per class a bank of 4096 vectors (k-center greedy over 32 x 4096 random
candidates, as the product's coreset) from the run's training normals at the same S; each position's distance to
its nearest bank vector, upsampled bilinearly to the 256-px evaluation grid and smoothed (sigma 5, the map's);
image score as the bundle pools (8 x 8 box eight times, then the max). For every S it prints I-AUROC, P-AUROC,
AU-PRO and P-AP per class and their means on the run's painted set (select/valdata) and on its test split; the
painted set is the one a choice would be made on, the test split is for reporting.

    /usr/bin/python3 scripts/knn_size_study.py --run RUN --backbone mobilenetv2_fp32_features.onnx --sizes 256,384,512

With --ks 1,2,4 each position's value is also the mean of its distances to the k nearest bank vectors (k = 1 is
the product's nearest distance), every k from the same search; then what one k per class would give, each class
taking the k that leads the first by the select stage's min_gain (1.0) on the painted set.

docs/algorithm.md §1.9, "The term at a larger input" and "Mean of the k nearest", has the figures this printed
(sessions 50 and 52). Needs Debian's
python3-torch, scipy and PIL (the trainer's interpreter); 13-14 minutes a size for five classes on 2 cores
shared with a training (not timed alone).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "trainer", "python"))
sys.path.insert(0, HERE)
from knn_study import aupro, auroc, average_precision, image_score, load_mask  # noqa: E402
from vlmdiff_train.onnx_torch import OnnxModule  # noqa: E402

E = 256  # the evaluation grid (the product's maps; knn_study.load_mask reads masks at the same size)
BANK = 4096
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def load(path: str, size: int) -> np.ndarray:
    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return (np.asarray(im, np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD


@torch.no_grad()
def features(net: OnnxModule, paths: Sequence[str], size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """[images, positions, 56] and the block2 grid (h, w)."""
    out, hw = [], (0, 0)
    for i in range(0, len(paths), 4):
        o = net(torch.from_numpy(np.stack([load(p, size) for p in paths[i:i + 4]])))
        a = F.avg_pool2d(o["block2"], 3, 1, 1)
        b = F.interpolate(F.avg_pool2d(o["block5"], 3, 1, 1), size=a.shape[-2:], mode="bilinear", align_corners=False)
        f = torch.cat([a, b], 1)
        n, c, h, w = f.shape
        hw = (h, w)
        out.append(f.permute(0, 2, 3, 1).reshape(n, h * w, c))
    return torch.cat(out), hw


def coreset(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    cand = x[torch.randperm(x.shape[0], generator=gen)[: min(x.shape[0], 32 * k)]]
    if cand.shape[0] <= k:
        return cand
    sel = [0]
    d = ((cand - cand[0]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(d.argmax())
        sel.append(i)
        d = torch.minimum(d, ((cand - cand[i]) ** 2).sum(1))
    return cand[sel]


@torch.no_grad()
def distance_maps(bank: torch.Tensor, queries: torch.Tensor, hw: Tuple[int, int],
                  ks: Sequence[int] = (1,)) -> Dict[int, List[np.ndarray]]:
    """For each k of ks, each query image's map of the mean distance to its k nearest bank vectors (k = 1: the
    product's nearest distance), upsampled to the evaluation grid and smoothed."""
    b2 = (bank ** 2).sum(1)
    d = torch.stack([((q ** 2).sum(1)[:, None] - 2 * q @ bank.T + b2[None]).topk(max(ks), 1, largest=False)
                     .values.clamp_min(0).sqrt() for q in queries])                       # [images, positions, K]
    out = {}
    for k in ks:
        m = F.interpolate(d[..., :k].mean(-1).reshape(-1, 1, *hw), size=(E, E), mode="bilinear",
                          align_corners=False)[:, 0]
        out[k] = [ndimage.gaussian_filter(x, 5, mode="reflect", truncate=4.0) for x in m.numpy()]
    return out


def painted_set(root: str) -> List[dict]:
    rows = []
    for cls in sorted(os.listdir(root)):
        for p in sorted(glob.glob(os.path.join(root, cls, "test", "*", "*.png"))):
            kind = p.split(os.sep)[-2]
            mask = "" if kind == "good" else p.replace("/test/", "/ground_truth/")[:-4] + "_mask.png"
            rows.append({"path": p, "mask": mask, "class": cls, "label": int(kind != "good")})
    return rows


def per_class_k(classes: Sequence[str], ks: Sequence[int], res: Dict[Tuple[str, int], list],
                min_gain: float = 1.0) -> None:
    """Prints what one k per class, chosen on the painted set, would give: each class takes the k whose mean of
    I-AUROC, P-AUROC and AU-PRO leads k = ks[0]'s by min_gain (the select stage's rule), else ks[0]; a class
    without painted images keeps ks[0]."""
    pick = []
    for i, c in enumerate(classes):
        rows = {n: res[("painted", n)][i] for n in ks}
        if rows[ks[0]] is None:
            pick.append(ks[0])
            continue
        best = max(ks, key=lambda n: (rows[n][:3].mean(), -n))
        pick.append(best if rows[best][:3].mean() - rows[ks[0]][:3].mean() >= min_gain else ks[0])
    print("      per class k, chosen on the painted set:", ", ".join(f"{c} {n}" for c, n in zip(classes, pick)))
    for k in ("painted", "test"):
        vals = [res[(k, n)][i] for i, n in enumerate(pick) if res[(k, n)][i] is not None]
        m = np.mean(vals, 0)
        print(f"      per class k  {k:8s} mean I-AUROC / P-AUROC / AU-PRO / P-AP {np.round(m, 2)} mean of three "
              f"{m[:3].mean():.2f}", flush=True)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training run directory (index.jsonl, select/valdata)")
    ap.add_argument("--backbone", required=True, help="mobilenetv2_fp32_features.onnx")
    ap.add_argument("--sizes", default="256,384,512")
    ap.add_argument("--ks", default="1", help="mean distance to the k nearest bank vectors, for each k (1: the product's)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    items = [json.loads(line) for line in open(os.path.join(a.run, "index.jsonl"))]
    sets: Dict[str, List[dict]] = {
        "painted": painted_set(os.path.join(a.run, "select", "valdata")),
        "test": [{k: i[k] for k in ("path", "mask", "class", "label")} for i in items if i["split"] == "test"],
    }
    for rows in sets.values():
        for r in rows:
            r["mask_px"] = load_mask(r["mask"])
    classes = sorted({r["class"] for r in sets["test"]})
    net = OnnxModule.load(a.backbone, ["block2", "block5"]).eval()
    ks = [int(k) for k in a.ks.split(",")]
    for size in [int(s) for s in a.sizes.split(",")]:
        gen = torch.Generator().manual_seed(0)
        res: Dict[Tuple[str, int], list] = {(k, n): [] for k in sets for n in ks}
        for c in classes:
            train, _ = features(net, [i["path"] for i in items if i["class"] == c and i["split"] == "train"], size)
            bank = coreset(train.reshape(-1, train.shape[-1]), BANK, gen)
            for k, rows in sets.items():
                mine = [r for r in rows if r["class"] == c]
                if not mine:  # a class without held-out normals has no painted images
                    for n in ks:
                        res[(k, n)].append(None)
                    continue
                q, hw = features(net, [r["path"] for r in mine], size)
                pix_y = np.concatenate([r["mask_px"].ravel() for r in mine])
                for n, maps in distance_maps(bank, q, hw, ks).items():
                    pix = np.concatenate([m.ravel() for m in maps])
                    res[(k, n)].append(np.array([auroc([image_score(m) for m in maps], [r["label"] for r in mine]),
                                                 auroc(pix, pix_y), aupro(maps, [r["mask_px"] for r in mine]),
                                                 average_precision(pix, pix_y)]) * 100)
        for k in sets:
            for n in ks:
                m = np.mean([v for v in res[(k, n)] if v is not None], 0)
                tag = f"S={size}" + (f" k={n}" if ks != [1] else "")
                print(f"{tag} {k:8s} mean I-AUROC / P-AUROC / AU-PRO / P-AP {np.round(m, 2)} mean of three {m[:3].mean():.2f}",
                      flush=True)
                for c, v in zip(classes, res[(k, n)]):
                    if v is not None:
                        print(f"      {c:28s} {np.round(v, 2)}", flush=True)
        if len(ks) > 1:
            per_class_k(classes, ks, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
