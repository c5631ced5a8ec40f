"""An untrained bundle of a preset, for `make bench` (issue 14): speed does not depend on the weights.

    python3 -m vlmdiff_train.bench_bundle --preset small --out DIR [--features-onnx F.onnx --layers a,b,c]
        [--static-batches 1,2,4] [--static-time inputs|conv_bias|none] [--no-fuse] [--no-fuse-vae]

writes DIR/bundle (the bundle) and DIR/model.pt (the model file the PyTorch reference scorer rebuilds the same
networks from), so `vlmdiff bench --reference DIR/model.pt` compares the Go pipeline with PyTorch on the same
bundle and weights. The networks are the preset's with its seeded initialisation; the zero-initialised layers
(zero convolutions, SFF, block outputs) get small random weights so every path computes what a trained model's
would. The context is a seeded random one of the preset's shape: the bench scores with the empty prompt, whose
value does not change the cost. Features: the ONNX backbone given (the preset's MobileNetV2 from
../shared/backbones when present), else a seeded random conv net exported to ONNX (strides 4 and 8).
--static-batches "" exports no static-shape denoisers: the bundle as before the overhead lever, for A/B runs.
--static-time picks how the static graphs take the timestep (export.export_static_denoisers): "none" keeps t as
their input (the bundle as before the time graph), "inputs" (the default) and "conv_bias" take the outputs of
the time graph, for A/B runs of that lever. --no-fuse leaves out onnx_fuse's operator fusions (the static graphs
as before them), --no-fuse-vae its GroupNorm rewrite in the autoencoder's graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["build_bench_bundle"]


def _random_features_onnx(path: str, size: int) -> List[Tuple[str, float]]:
    """A seeded TinyFeatures net exported to ONNX (outputs layer1, layer2)."""
    from .export import FeaturesGraph, export_graph
    from .model_file import TinyFeatures

    torch.manual_seed(5)
    feats = TinyFeatures((16, 24, 32)).eval()
    export_graph(FeaturesGraph(feats, ["layer1", "layer2"]), (torch.randn(1, 3, size, size),), ["image"],
                 ["layer1", "layer2"], path)
    return [("layer1", 1.0), ("layer2", 1.0)]


def build_bench_bundle(out: str, preset: str = "small", features_onnx: Optional[str] = None,
                       layers: Optional[Sequence[Tuple[str, float]]] = None,
                       static_batches: Sequence[int] = (1, 2, 4), static_time: str = "inputs",
                       fuse: bool = True, fuse_vae: bool = True, res_blocks: Optional[int] = None,
                       ae_full_res_blocks: Optional[int] = None) -> dict:
    """Writes out/bundle and out/model.pt; returns their paths. res_blocks overrides the preset's ResBlocks
    per level (presets.build), as build.extra.res_blocks does in training; ae_full_res_blocks the autoencoder's
    ResnetBlocks at full resolution, as finetune_ae.extra.full_res_blocks does (None: what a new training of the
    preset builds, presets.fresh_ae_full_res; -1: LDM's layout)."""
    from . import presets
    from .export import export_bundle
    from .model_file import Nets, HintOf, perturb_zero_params, latent_scale, save_reference_weights

    p = presets.get_preset(preset)
    overrides: dict = {} if res_blocks is None else {"res_blocks": int(res_blocks)}
    full_res = presets.fresh_ae_full_res(p, ae_full_res_blocks)  # what a new training of the preset builds
    if full_res is not None:
        overrides["ae_full_res_blocks"] = full_res
    nets = presets.build(preset, with_text=False, with_dino=False, seed=0, **overrides)
    perturb_zero_params(nets.model, torch.Generator().manual_seed(1), 0.05)
    os.makedirs(out, exist_ok=True)
    if features_onnx is None and p.features.kind == "onnx":
        shared = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "backbones",
                              p.features.onnx_file)
        if os.path.isfile(shared):
            features_onnx = os.path.abspath(shared)
            layers = layers or list(zip(p.features.layers, p.features.weights))
    if features_onnx is None:
        features_onnx = os.path.join(out, "random_features.onnx")
        layers = _random_features_onnx(features_onnx, p.input_size)
    if not layers:
        raise RuntimeError("bench bundle: give the feature layers of --features-onnx")
    ctx = np.random.default_rng(2).standard_normal((p.context_tokens, p.context_dim)).astype(np.float32)
    builder: dict = {"kind": "preset", "name": p.name}
    if overrides:
        builder["overrides"] = overrides
    bundle = os.path.join(out, "bundle")
    export_bundle(bundle, vae=nets.vae, denoiser=nets.denoiser, features=None, layers=list(layers),
                  conditioning=[("", "", ctx)], latent_channels=p.latent_channels, downsample=p.downsample,
                  hint_owner=nets.sgn, feature_onnx=features_onnx, height=p.input_size, width=p.input_size,
                  name=f"bench-{p.name}", version="untrained", latent={"scale_factor": latent_scale(builder)},
                  description=f"untrained {p.name} preset"
                              + (f" ({res_blocks} ResBlock(s) per level)" if res_blocks is not None else "")
                              + (f" ({full_res} autoencoder block(s) at full resolution)"
                                 if full_res is not None else "")
                              + " for vlmdiff bench (scores mean nothing)",
                  provenance={"preset": p.name, "dataset": "none (untrained)"},
                  denoiser_static_batches=static_batches, static_time=static_time,
                  fuse_static=fuse, fuse_vae=fuse_vae, overwrite=True)
    model = os.path.join(out, "model.pt")
    save_reference_weights(model, builder, Nets(vae=nets.vae, denoiser=nets.denoiser, features=None,
                                                hint=HintOf(nets.denoiser)), features_kind="onnx")
    return {"bundle": bundle, "model": model}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--features-onnx")
    ap.add_argument("--layers", help="comma-separated output names of --features-onnx (weight 1 each)")
    ap.add_argument("--static-batches", default="1,2,4", help='comma-separated; "" for none')
    ap.add_argument("--static-time", default="inputs", choices=("inputs", "conv_bias", "none"))
    ap.add_argument("--no-fuse", action="store_true", help="no onnx_fuse fusions in the static graphs")
    ap.add_argument("--no-fuse-vae", action="store_true", help="no onnx_fuse.groupnorm_per_channel in the VAE graphs")
    ap.add_argument("--res-blocks", type=int, help="ResBlocks per level of the UNet and SG branch (build.extra.res_blocks)")
    ap.add_argument("--ae-full-res-blocks", type=int,
                    help="the autoencoder's ResnetBlocks at full resolution (finetune_ae.extra.full_res_blocks; "
                         "-1: LDM's layout; default: what a new training of the preset builds, small 0)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    layers = [(n, 1.0) for n in a.layers.split(",")] if a.layers else None
    static = [int(v) for v in a.static_batches.split(",") if v.strip()]
    try:
        res = build_bench_bundle(a.out, a.preset, a.features_onnx, layers, static, a.static_time, not a.no_fuse,
                                 not a.no_fuse_vae, a.res_blocks, a.ae_full_res_blocks)
    except (RuntimeError, ValueError) as e:
        print(f"bench_bundle: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
