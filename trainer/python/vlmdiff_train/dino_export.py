"""Export a DINO ViT backbone (.pth) to the feature graph the sd15 preset scores with.

    python3 -m vlmdiff_train.dino_export --weights dino_deitsmall8_pretrain.pth --out dino_vits8_256.onnx \
        [--size 256] [--config '{"embed_dim": 384, ...}'] [--opset 17]

The graph takes "image" [B,3,S,S] (normalised as the bundle's features.mean/std say, ImageNet for DINO) and gives
"tokens" [B,1+(S/p)^2,D]: the last block's tokens after the final norm, CLS first, which is what the export stage
expects for `feature_layers: [[tokens, 1.0]]`. The position-embedding interpolation to S is computed once and baked
in (nets.dino.DinoFeatures), so the graph has no bicubic Resize. After export the graph is run through onnx_torch
and compared with the torch module: the export stage's PyTorch side must compute what the module does.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

import torch

from .nets.dino import DinoConfig, DinoFeatures, VisionTransformer

log = logging.getLogger(__name__)

__all__ = ["export_dino_onnx"]


def export_dino_onnx(out: str, weights: Optional[str] = None, size: int = 256, config: Optional[dict] = None,
                     opset: int = 17, trusted: bool = False, seed: int = 0) -> dict:
    """Writes the DINO feature graph to out. weights is a DINO .pth (None: seeded random weights, for tests);
    config overrides DinoConfig (default ViT-S/8). Returns {"path", "tokens", "dim", "max_abs_diff"}."""
    from .checkpoints import load_dino
    from .export import export_graph

    cfg = DinoConfig(**(config or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = VisionTransformer(cfg)
    if weights:
        log.info("%s", load_dino(vit, weights, trusted=trusted).summary())
    feats = DinoFeatures(vit.eval(), size).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    export_graph(feats, (x[:1],), ["image"], ["tokens"], out, opset=opset)
    from .onnx_torch import OnnxModule
    with torch.no_grad():
        want = feats(x)
        got = OnnxModule.load(out).eval()(x)["tokens"]
    diff = float((got - want).abs().max())
    if not diff <= 1e-4 * max(1.0, float(want.abs().max())):
        raise RuntimeError(f"dino export: the ONNX graph run by onnx_torch differs from the module by {diff:.3g}")
    return {"path": out, "tokens": int(want.shape[1]), "dim": int(want.shape[2]), "max_abs_diff": diff}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python3 -m vlmdiff_train.dino_export")
    p.add_argument("--weights", help="DINO backbone .pth (dino_deitsmall8_pretrain.pth); absent: random weights")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--config", help="DinoConfig overrides as JSON")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--trusted", action="store_true", help="allow a pickled full training checkpoint")
    a = p.parse_args(argv)
    try:
        r = export_dino_onnx(a.out, a.weights, a.size, json.loads(a.config) if a.config else None, a.opset,
                             a.trusted)
    except Exception as e:  # one clear line
        print(f"dino_export: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
