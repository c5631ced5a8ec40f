#!/usr/bin/env python3
"""Study (not the product): a bundle's image AUROC under other score poolings, from `vlmdiff eval --maps`.

Each map is pooled with k x k box averages (stride 1, no padding) repeated r times, then its maximum taken, as
the scorer does (docs/algorithm.md §1.10); each class's image AUROC (ties averaged) and their mean are printed per
(k, r). It first checks that the bundle's own pooling (--kernel, 8 passes) reproduces the raw scores in maps.csv.
The select stage makes the real choice on the painted set (select.pool_repeats, one scoring pass): this script
shows the same on any set of maps, the test split included, which is for reporting, not for choosing.

    vlmdiff eval --bundle B --data D --val-data PAINTED --maps MAPS --out E
    python3 scripts/pool_study.py --kernel 8 MAPS/validation MAPS/test

docs/training.md, "The image score's pooling", has the figures this printed (session 42). Needs numpy.
"""
import argparse
import csv
import os

import numpy as np


def box(a: np.ndarray, k: int) -> np.ndarray:
    c = np.cumsum(np.cumsum(np.pad(a, ((1, 0), (1, 0))), 0), 1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def pooled(a: np.ndarray, k: int, r: int) -> float:
    for _ in range(r):
        if min(a.shape) < k:
            break
        a = box(a, k)
    return float(a.max())


def auroc(scores: list[float], labels: list[int]) -> float:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    npos, nneg = int((y == 1).sum()), int((y == 0).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sv = s[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return (ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg)


def load(d: str) -> list[tuple[str, int, np.ndarray, float]]:
    out = []
    with open(os.path.join(d, "maps.csv")) as f:
        for r in csv.DictReader(f):
            w, h = int(r["width"]), int(r["height"])
            m = np.fromfile(os.path.join(d, r["file"]), dtype="<f4").reshape(h, w).astype(np.float64)
            out.append((r["class"], int(r["label"]), m, float(r["raw_score"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", type=int, default=8, help="the bundle's score.pool_kernel")
    ap.add_argument("dirs", nargs="+", help="maps directories (maps.csv and its .f32 files)")
    a = ap.parse_args()
    grid = [(1, 0)] + [(k, r) for k in (a.kernel // 2, a.kernel, a.kernel * 2) for r in (1, 2, 4, 8)]
    for d in a.dirs:
        data = load(d)
        worst = max(abs(pooled(m, a.kernel, 8) - s) / max(abs(s), 1e-9) for _, _, m, s in data)
        classes = sorted({c for c, *_ in data})
        print(f"{d}: {len(data)} maps, {len(classes)} classes ({', '.join(classes)}); the bundle's pooling "
              f"({a.kernel} x 8) reproduces raw_score within {worst:.1e} relative")
        for k, r in grid:
            per = [auroc([pooled(m, k, r) for cc, _, m, _ in data if cc == c], [y for cc, y, _, _ in data if cc == c])
                   for c in classes]
            print(f"  k {k:2d} x {r} passes: I-AUROC {100 * np.nanmean(per):6.2f}   per class "
                  + " ".join(f"{100 * v:5.1f}" for v in per))


if __name__ == "__main__":
    main()
