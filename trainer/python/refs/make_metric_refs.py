#!/usr/bin/python3
"""Reference values for trainer/metrics, computed independently of the Go code.

Generates seeded random evaluation data (a few 32x32 images per class with blob masks and noisy anomaly maps)
and computes the seven metrics the way the VLMDiff/DiAD evaluation does (utils/eval_helper.py; docs/algorithm.md
§3), with sklearn, skimage and numpy:

  image AUROC  sklearn roc_curve + auc, 1-AUC when below 0.5
  image AP     sklearn average_precision_score
  image F1max  max finite 2PR/(P+R) over sklearn precision_recall_curve
  pixel *      the same over all pixels of the class (mask > 0 positive)
  AU-PRO       200 thresholds np.arange(min, max, (max-min)/200), 8-connected GT regions (skimage label),
               PRO = mean over regions of TP/area, FPR over normal pixels, keep FPR < 0.3, divide by the max kept
               FPR, trapezoid (sklearn auc), no (0,0) point. Written here in numpy, not copied from the seed.

Writes trainer/metrics/testdata/refs.json: the inputs (maps as float32 values, masks, scores, labels) and the
expected values. Undefined metrics are null; the mean is np.nanmean over classes.

Run: /usr/bin/python3 trainer/python/refs/make_metric_refs.py   (a second run writes the same file)
"""
import json
import os
import sys

import numpy as np
from skimage import measure
from sklearn import metrics as skm

SIZE = 32
SEED = 20240611


def blob_mask(rng, n_blobs):
    """A binary mask with n_blobs random ellipses; some touch only diagonally, to exercise 8-connectivity."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    m = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(n_blobs):
        cy, cx = rng.uniform(4, SIZE - 4, size=2)
        ry, rx = rng.uniform(1.0, 5.0, size=2)
        m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return m


def make_class(rng, n_images, n_anomalous, quantize=None, invert_scores=False):
    maps, masks, scores = [], [], []
    for i in range(n_images):
        if i < n_anomalous:
            m = blob_mask(rng, rng.integers(1, 4))
            if i == 0:  # two single pixels touching at a corner: one 8-connected region, two 4-connected ones
                m[0, 0] = 1
                m[1, 1] = 1
        else:
            m = np.zeros((SIZE, SIZE), np.uint8)
        a = rng.normal(0.0, 1.0, size=(SIZE, SIZE)) + 1.5 * m * rng.uniform(0.3, 1.5)
        if quantize:
            a = np.round(a * quantize) / quantize  # ties between pixels
        a = a.astype(np.float32)
        s = float(a.max()) + rng.normal(0, 0.8)
        if quantize:
            s = round(s * 2) / 2  # ties between images
        if invert_scores:
            s = -s
        maps.append(a)
        masks.append(m)
        scores.append(s)
    return maps, masks, scores


def f1max(y, s):
    p, r, _ = skm.precision_recall_curve(y, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * p * r / (p + r)
    return float(np.max(f[np.isfinite(f)]))


def auroc(y, s):
    fpr, tpr, _ = skm.roc_curve(y, s, pos_label=1)
    a = skm.auc(fpr, tpr)
    return float(1 - a if a < 0.5 else a)


def pro_thresholds(amaps):
    lo, hi = amaps.min(), amaps.max()
    return np.arange(lo, hi, (hi - lo) / 200)


def au_pro(masks, amaps):
    """masks, amaps: N x H x W (masks binary, amaps float64)."""
    regions = []
    for i, m in enumerate(masks):
        lab = measure.label(m, connectivity=2)
        for k in range(1, lab.max() + 1):
            regions.append((i, lab == k))
    normal = masks == 0
    n_normal = normal.sum()
    fprs, pros = [], []
    for th in pro_thresholds(amaps):
        b = amaps > th
        pros.append(np.mean([b[i][r].sum() / r.sum() for i, r in regions]))
        fprs.append(np.logical_and(normal, b).sum() / n_normal)
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < 0.3
    fprs, pros = fprs[keep], pros[keep]
    fprs = fprs / fprs.max()
    return float(skm.auc(fprs, pros))


def class_metrics(maps, masks, scores):
    masks = np.stack(masks)
    amaps = np.stack(maps).astype(np.float64)  # the seed's maps are float64
    y = (masks.reshape(len(masks), -1).sum(axis=1) != 0).astype(int)
    s = np.array(scores, np.float64)
    out = dict(i_auroc=None, i_ap=None, i_f1max=None, p_auroc=None, p_ap=None, p_f1max=None, au_pro=None)
    if 0 < y.sum() < len(y):
        out.update(i_auroc=auroc(y, s), i_ap=float(skm.average_precision_score(y, s)), i_f1max=f1max(y, s))
    py, ps = masks.reshape(-1), amaps.reshape(-1)
    if 0 < py.sum() < len(py):
        out.update(p_auroc=auroc(py, ps), p_ap=float(skm.average_precision_score(py, ps)), p_f1max=f1max(py, ps),
                   au_pro=au_pro(masks, amaps))
    return out


def main():
    rng = np.random.default_rng(SEED)
    specs = [
        ("alpha", dict(n_images=7, n_anomalous=4)),
        ("beta", dict(n_images=7, n_anomalous=3, quantize=4)),
        ("gamma", dict(n_images=6, n_anomalous=3, invert_scores=True)),
        ("normal_only", dict(n_images=3, n_anomalous=0)),
    ]
    classes = []
    for name, kw in specs:
        maps, masks, scores = make_class(rng, **kw)
        expected = class_metrics(maps, masks, scores)
        ths = pro_thresholds(np.stack(maps).astype(np.float64))
        classes.append(dict(
            name=name, width=SIZE, height=SIZE, scores=scores,
            labels=[int(m.any()) for m in masks],
            maps=[[float(v) for v in a.reshape(-1)] for a in maps],
            masks=[[int(v) for v in m.reshape(-1)] for m in masks],
            pro_thresholds=[float(t) for t in ths],
            expected=expected))
    mean = {}
    for k in classes[0]["expected"]:
        vals = [c["expected"][k] for c in classes if c["expected"][k] is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    doc = dict(generator="trainer/python/refs/make_metric_refs.py", seed=SEED,
               versions=dict(numpy=np.__version__, sklearn=__import__("sklearn").__version__,
                             skimage=__import__("skimage").__version__),
               classes=classes, mean=mean)
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.normpath(os.path.join(here, "..", "..", "metrics", "testdata", "refs.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    for c in classes:
        print(c["name"], {k: (round(v, 6) if v is not None else None) for k, v in c["expected"].items()})
    print("mean", {k: (round(v, 6) if v is not None else None) for k, v in mean.items()})
    print("wrote", out, file=sys.stderr)


if __name__ == "__main__":
    main()
