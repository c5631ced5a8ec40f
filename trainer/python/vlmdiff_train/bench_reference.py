"""The PyTorch side of `vlmdiff bench --reference` (issue 14): the reference scorer timed on the same bundle,
weights and images as the Go pipeline, in rounds the Go side interleaves with its own.

    python3 -m vlmdiff_train.bench_reference --bundle DIR --weights FILE.pt [--threads N] IMG...

It loads the networks and the images (PIL resize and normalisation, untimed), prints one JSON line
{"ready": true, "torch": VERSION, "threads": N}, then for every line "round" on stdin scores each image once at
batch 1 (reference.Scorer.score: the whole recipe, reconstruction to pooled score) and prints
{"ms": [milliseconds per image]}. It exits at end of input. Noise is seeded per image; timing does not depend on
its values.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

import numpy as np
import torch

__all__ = ["main"]


def _serve(bundle: str, weights: str, images: List[str], out=sys.stdout, inp=sys.stdin, ensemble: int = 0) -> None:
    from .model_file import load_nets
    from .reference import Scorer, load_image, read_conditioning, read_knn, read_manifest, read_pixel, read_reference

    m = read_manifest(bundle)
    if ensemble > 0:  # the Go side's --ensemble override: both sides score the same number of noises
        m["diffusion"]["ensemble"] = ensemble
    scorer = Scorer(m, load_nets(weights, bundle, m), read_conditioning(bundle, m), read_reference(bundle, m),
                    read_pixel(bundle, m), read_knn(bundle, m))
    i, lat = m["input"], m["latent"]
    H, W, C, ds = int(i["height"]), int(i["width"]), int(lat["channels"]), int(lat["downsample"])
    xs = [load_image(p, H, W, i["mean"], i["std"], i.get("resize", "pil_bilinear"))[None] for p in images]
    rng = np.random.default_rng(0)
    noise = [torch.from_numpy(rng.standard_normal((2, scorer.ensemble(), C, H // ds, W // ds)).astype(np.float32))
             for _ in xs]
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), file=out,
          flush=True)
    for line in inp:
        if line.strip() != "round":
            raise RuntimeError(f"unknown command {line.strip()!r} (want 'round')")
        ms = []
        for x, n in zip(xs, noise):
            t0 = time.perf_counter()
            scorer.score(x, n[0], n[1])
            ms.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"ms": ms}), file=out, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--ensemble", type=int, default=0, help="start noises per frame (0: the bundle's)")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    try:
        _serve(a.bundle, a.weights, a.images, ensemble=a.ensemble)
    except (RuntimeError, OSError) as e:
        print(f"bench_reference: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
