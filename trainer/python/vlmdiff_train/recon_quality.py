"""Reconstruction quality of a trained bundle on held-out images, in the scorer's own recipe.

    python3 -m vlmdiff_train.recon_quality --bundle DIR --weights MODEL.pt --index index.jsonl [--split val]
        [--limit N] [--label 0]

For each image it reports PSNR and mean absolute error (in [0,1] RGB) of
  - the VAE alone (posterior mean, decode): the ceiling the autoencoder sets, and
  - the full VLMDiff reconstruction (forward noise to the manifest's start step, DDIM, decode), which is what
    the anomaly map compares the frame with.
On normal images a good model reconstructs closely; the gap between the two lines is what the diffusion adds.
Prints one JSON object with the means and per-class means.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Dict, List

import numpy as np
import torch

from . import data as D
from .model_file import load_nets
from .reference import Scorer, load_image, read_conditioning, read_manifest


def _to01(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)


def _psnr_mae(a: torch.Tensor, b: torch.Tensor) -> tuple:
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12)), float((a - b).abs().mean())


def measure(bundle: str, weights: str, index: str, split: str, label: int, limit: int, seed: int = 0) -> dict:
    torch.set_num_threads(2)
    m = read_manifest(bundle)
    nets = load_nets(weights, bundle, m)
    scorer = Scorer(m, nets, read_conditioning(bundle, m))
    inp, lat = m["input"], m["latent"]
    H, W, C, ds = int(inp["height"]), int(inp["width"]), int(lat["channels"]), int(lat["downsample"])
    recs = [r for r in D.read_index(index) if r["split"] == split and int(r["label"]) == label]
    if limit:
        recs = recs[:limit]
    if not recs:
        raise RuntimeError(f"no images with split {split!r} and label {label} in {index}")
    g = torch.Generator().manual_seed(seed)
    rows: Dict[str, List[tuple]] = defaultdict(list)
    with torch.no_grad():
        for r in recs:
            x = load_image(r["path"], H, W, inp["mean"], inp["std"], inp.get("resize", "pil_bilinear"))[None]
            mean, _ = torch.chunk(nets.vae.encode_moments(x), 2, dim=1)
            vae_rec = nets.vae.decode(mean)
            n = torch.randn((1, C, H // ds, W // ds), generator=g)
            full = scorer.reconstruct(x, n, torch.randn((1, C, H // ds, W // ds), generator=g))
            x01 = _to01(x, inp["mean"], inp["std"])
            rows[r["class"]].append(_psnr_mae(x01, _to01(vae_rec, inp["mean"], inp["std"]))
                                    + _psnr_mae(x01, _to01(full, inp["mean"], inp["std"])))
    def agg(v: List[tuple]) -> dict:
        a = np.array(v)
        return {"n": len(v), "vae_psnr": round(float(a[:, 0].mean()), 2), "vae_mae": round(float(a[:, 1].mean()), 4),
                "vlmdiff_psnr": round(float(a[:, 2].mean()), 2), "vlmdiff_mae": round(float(a[:, 3].mean()), 4)}
    allrows = [t for v in rows.values() for t in v]
    return {"bundle": bundle, "split": split, "label": label, "mean": agg(allrows),
            "per_class": {k: agg(v) for k, v in sorted(rows.items())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vlmdiff_train.recon_quality")
    p.add_argument("--bundle", required=True)
    p.add_argument("--weights", required=True, help="the model file the bundle was exported from")
    p.add_argument("--index", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--label", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    a = p.parse_args(argv)
    try:
        print(json.dumps(measure(a.bundle, a.weights, a.index, a.split, a.label, a.limit), indent=1))
    except RuntimeError as e:
        print(f"recon_quality: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
