"""The committed test fixture bundle: the real network structure at tiny widths with random weights.

The Go pipeline's tests need a bundle that exercises every part of the scoring recipe (posterior sampling, hint
graph, SG branch with SFF and zero convolutions, cross-attention on a context, CFG with two conditioning entries,
two feature layers at different strides) and is small enough to commit and fast enough to score on a 2-core CPU.
So: the same classes as the trained models (nets.autoencoder, nets.sgn, nets.unet) at widths of 32, seeded
weights, and the zero-initialised layers perturbed so the SG branch really changes eps (with the paper's zero
init the control would be a no-op and a broken hint path would go unnoticed).

    python3 -m vlmdiff_train fixture --out models/testdata/fixture --weights models/testdata/fixture-src/fixture.pt

Rebuilding gives identical weights (fixed seeds, deterministic init order). The networks themselves are built by
model_file.build_nets (a model file's "fixture" builder), so the reference scorer can rebuild them from the
weights file without this module.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch

from .model_file import build_nets

FIXTURE_SPEC = {
    "seed": 20240601,
    "height": 256,
    "width": 256,
    "vae": {"ch": 16, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4,
            "attn_resolutions": [], "mid_attn": True, "norm_groups": 8},
    "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 16, "channel_mult": [1, 1],
             "num_res_blocks": 1, "attention_resolutions": [1, 2], "num_heads": 2, "context_dim": 16,
             "transformer_depth": 1, "norm_groups": 8},
    "hint_hidden": [8, 8, 8, 8, 16, 16, 16],
    "features": {"widths": [16, 24, 32]},
    "tokens": 77,
    "perturb_std": 0.05,
    "perturb_gain": 3.0,
}
FIXTURE_CREATED = "2025-01-01T00:00:00Z"
# A static-shape denoiser (export.StaticDenoiserGraph) for batch 1, so the Go tests run that path too: the parity
# test scores single frames through it; batches of other sizes run the dynamic graph.
FIXTURE_STATIC_BATCHES = (1,)
FIXTURE_CONDITIONING = [("", ""), ("widget", "a photo of a widget")]


def fixture_conditioning(spec: dict):
    """Seeded unit-variance contexts for the fixture's entries ("" and one class prompt), [tokens, dim] each.

    A random context (rather than a text encoder's output) keeps the fixture independent of any tokenizer; what
    the Go side must get right is reading the file and choosing and mixing the entries, not the text."""
    g = np.random.default_rng(int(spec["seed"]) + 2)
    dim = int(spec["unet"]["context_dim"])
    return [(k, p, g.standard_normal((int(spec["tokens"]), dim)).astype(np.float32))
            for k, p in FIXTURE_CONDITIONING]


def make_test_image(path: str, width: int, height: int, seed: int) -> str:
    """A deterministic synthetic RGB PNG (smooth gradients, a disc and a bar) of an odd size, so scoring it
    exercises the resize; smooth content keeps the PNG small."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(xx / width * 3.1 + rng.uniform(0, 3))
    g = 128 + 100 * np.cos(yy / height * 2.3 + rng.uniform(0, 3))
    b = 90 + 60 * np.sin((xx + yy) / (width + height) * 5.0)
    img = np.stack([r, g, b], axis=-1)
    cx, cy, rad = width * 0.6, height * 0.4, min(width, height) * 0.15
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2] = [230, 40, 40]
    img[int(height * 0.7):int(height * 0.75), int(width * 0.1):int(width * 0.5)] = [20, 20, 20]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, optimize=True)
    return path


def write_expected(bundle: str, weights: str, out_dir: str, spec: Optional[dict] = None) -> dict:
    """Reference outputs the Go tests can compare against without Python: one synthetic 320x240 image, its seeded
    noise [1,2,C,h,w], and the reference scorer's results for the default context (CFG off: scores.json,
    maps.f32) and for the class entry "widget" (CFG on: scores.json, maps.f32)."""
    from .reference import run_reference

    spec = spec or FIXTURE_SPEC
    os.makedirs(out_dir, exist_ok=True)
    img = make_test_image(os.path.join(out_dir, "image.png"), 320, 240, int(spec["seed"]) + 3)
    C = int(spec["vae"]["embed_dim"])
    ds = 2 ** (len(spec["vae"]["ch_mult"]) - 1)
    h, w = int(spec["height"]) // ds, int(spec["width"]) // ds
    noise = np.random.default_rng(int(spec["seed"]) + 4).standard_normal((1, 2, C, h, w)).astype("<f4")
    noise_path = os.path.join(out_dir, "noise.f32")
    noise.tofile(noise_path)
    outs = {"image": img, "noise": noise_path}
    for key, sub in (("", "default"), ("widget", "widget")):
        outs[sub] = run_reference(bundle, weights, noise_path, os.path.join(out_dir, sub), [img], key)
    # scores.json records the image path; store it relative to the expected dir so the files are relocatable
    for sub in ("default", "widget"):
        p = os.path.join(out_dir, sub, "scores.json")
        with open(p, encoding="utf-8") as f:
            sc = json.load(f)
        for s in sc:
            s["image"] = os.path.basename(s["image"])
        with open(p, "w", encoding="utf-8") as f:
            json.dump(sc, f, indent=1)
    return outs


def build_fixture(out_dir: str, weights: str, probe_dir: Optional[str] = None, spec: Optional[dict] = None,
                  expected_dir: Optional[str] = None) -> dict:
    """Builds the fixture networks, exports the bundle into out_dir and writes the reference weights (and, when
    expected_dir is given, the reference outputs of write_expected)."""
    from .export import export_bundle
    from .model_file import save_reference_weights

    spec = spec or FIXTURE_SPEC
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    nets = build_nets(spec)
    m = export_bundle(
        out_dir, vae=nets.vae, denoiser=nets.denoiser, features=nets.features,
        layers=[("layer1", 1.0), ("layer2", 0.5)], conditioning=fixture_conditioning(spec),
        latent_channels=int(spec["vae"]["embed_dim"]), downsample=2 ** (len(spec["vae"]["ch_mult"]) - 1),
        hint_owner=nets.denoiser.sgn, height=int(spec["height"]), width=int(spec["width"]),
        name="fixture", version="1.0.0", created=FIXTURE_CREATED,
        description="Test fixture: VLMDiff structure at tiny widths with random weights. Scores are meaningless; "
                    "it exists to test the scoring chain against the PyTorch reference.",
        provenance={"dataset": "none (random weights)", "preset": "fixture",
                    "notes": "rebuild: python3 -m vlmdiff_train fixture --out models/testdata/fixture "
                             "--weights models/testdata/fixture-src/fixture.pt"},
        latent={"posterior": "sample"}, diffusion={"seed": 7}, probe_dir=probe_dir,
        denoiser_static_batches=FIXTURE_STATIC_BATCHES, overwrite=True)
    save_reference_weights(weights, {"kind": "fixture", "spec": spec}, nets)
    res = {"bundle": out_dir, "weights": weights, "manifest": os.path.join(out_dir, "bundle.json"),
           "probes": probe_dir or "", "graphs": sorted(m["graphs"])}
    if expected_dir:
        res["expected"] = write_expected(out_dir, weights, expected_dir, spec)
    return res
