#!/usr/bin/env python3
"""Score a bundle's scoring settings on a synthetic-defect validation set, one variant per row.

Each variant is a JSON object merged into a copy of the bundle's bundle.json (the ONNX graphs are linked, not
copied), then `vlmdiff eval --data VAL --split test` scores it through the Go pipeline. Use it to choose
start step, sampler, feature layers, smoothing and pooling on validation data (`vlmdiff synth defects` on the
held-out normals), never on a test split.

  python3 scripts/sweep_val.py --bundle runs/x/bundle --val runs/x-synthval --out runs/x/sweep \\
      --variant base='{}' --variant s501='{"diffusion": {"start_step": 501, "sampler_from_start_step": true}}'
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

METRICS = ["i_auroc", "p_auroc", "au_pro", "p_ap", "i_ap", "i_f1max", "p_f1max"]


def merge(dst: Dict[str, Any], patch: Dict[str, Any]) -> Dict[str, Any]:
    """Merge patch into dst recursively; a list or scalar in patch replaces dst's value."""
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def variant_bundle(src: Path, dst: Path, patch: Dict[str, Any]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "bundle.json" and not (dst / f.name).exists():
            os.symlink(f.resolve(), dst / f.name)
    manifest = json.loads((src / "bundle.json").read_text())
    (dst / "bundle.json").write_text(json.dumps(merge(manifest, patch), indent=2))


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--val", required=True, type=Path, help="synthetic-defect validation set (MVTec layout)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--bin", default="bin/vlmdiff")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON patch of bundle.json")
    ap.add_argument("--extra", default="", help="extra vlmdiff eval flags, space-separated")
    a = ap.parse_args(argv)
    rows = []
    for spec in a.variant or ["base={}"]:
        name, _, patch = spec.partition("=")
        vdir = a.out / name
        variant_bundle(a.bundle, vdir / "bundle", json.loads(patch or "{}"))
        cmd = [a.bin, "eval", "--bundle", str(vdir / "bundle"), "--data", str(a.val), "--val-fraction", "0",
               "--out", str(vdir / "eval")] + a.extra.split()
        with open(vdir / "eval.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            print(f"{name}: vlmdiff eval failed (exit {rc}), see {vdir / 'eval.log'}", file=sys.stderr)
            continue
        mean = json.loads((vdir / "eval" / "metrics.json").read_text())["mean"]
        rows.append((name, mean))
        print(f"{name:14s} " + " ".join(f"{k}={100 * mean[k]:.1f}" for k in METRICS), flush=True)
    (a.out / "sweep.json").write_text(json.dumps({n: m for n, m in rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
