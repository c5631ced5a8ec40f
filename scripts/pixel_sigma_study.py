#!/usr/bin/env python3
"""Study (not the product): the mean-frame term alone on one class of an MVTec-layout dataset, its distance map
smoothed at several sigmas, with the pixel AUROC and AU-PRO of each.

docs/algorithm.md §1.9, "The term's own smoothing", has the figures this script printed (session 38). The term is
each test frame's RGB distance to the mean of the class's training frames, at 256 px (bilinear resize, values in
[0, 1]); masks are resized with nearest neighbours. It reads the test split, so it is a diagnostic of why the
smoothing matters, not a way to choose one: the select stage chooses on the painted validation set
(select.pixel_sigmas). AU-PRO here is this script's own (per-region overlap integrated up to a false-positive
rate of 0.3 over 200 thresholds, normalised), close to but not the product's metrics package.

    /usr/bin/python3 scripts/pixel_sigma_study.py DATA/PA_BRG03_TL [--sigmas 0,0.5,1,2,3,5]

Needs numpy, scipy and PIL (Debian's python3-scipy, python3-pil).
"""
import argparse
import glob
import os

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata

SIZE = 256


def load(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0


def mask_for(root: str, path: str) -> np.ndarray:
    defect = os.path.basename(os.path.dirname(path))
    if defect == "good":
        return np.zeros((SIZE, SIZE), bool)
    stem = os.path.splitext(os.path.basename(path))[0]
    found = glob.glob(os.path.join(root, "ground_truth", defect, stem + "*"))
    if not found:
        raise SystemExit(f"no mask for {path}")
    return np.asarray(Image.open(found[0]).convert("L").resize((SIZE, SIZE), Image.NEAREST)) > 0


def au_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3, steps: int = 200) -> float:
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = maps[~masks]
    fprs, pros = [], []
    for t in np.quantile(neg, np.linspace(1, 1 - limit, steps)):
        fprs.append((neg > t).mean())
        pros.append(np.mean([(maps[i][r] > t).mean() for i, r in regions]))
    return float(np.trapz(pros, fprs) / limit)


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    s, y = maps.ravel(), masks.ravel()
    r = rankdata(s)
    npos = y.sum()
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * (y.size - npos)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("class_dir", help="one class of an MVTec-layout dataset (train/good, test/*, ground_truth/*)")
    ap.add_argument("--sigmas", default="0,0.5,1,2,3,5")
    a = ap.parse_args()
    train = np.stack([load(f) for f in sorted(glob.glob(os.path.join(a.class_dir, "train", "good", "*")))])
    mean = train.mean(0)
    tests = sorted(glob.glob(os.path.join(a.class_dir, "test", "*", "*")))
    masks = np.stack([mask_for(a.class_dir, f) for f in tests])
    raw = np.stack([np.sqrt(((load(f) - mean) ** 2).sum(-1)) for f in tests])
    for sigma in (float(v) for v in a.sigmas.split(",")):
        m = np.stack([ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4) for x in raw]) if sigma > 0 else raw
        print(f"sigma {sigma:g}: P-AUROC {100 * pixel_auroc(m, masks):.2f} AU-PRO {100 * au_pro(m, masks):.2f}", flush=True)


if __name__ == "__main__":
    main()
