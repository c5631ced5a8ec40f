#!/usr/bin/env python3
"""Study (not the product): the denoiser's two encoders run as one network of twice the width (issue 14).

Measured in session 63 and not built: fewer operators per DDIM step, no faster frame (docs/operations.md,
"Measured, not built: the two encoders as one"). Kept to measure it again on a CPU whose per-operator cost is
higher (session 55's Intel Xeon paid about 6 us an operator, the AMD EPYC of session 63 about 3.5 us with its
arithmetic):

    /usr/bin/python3 scripts/paired_encoders_study.py --model out/bench-small/model.pt \
        --bundle out/bench-small/bundle --out out/bench-small-paired
    ./bin/vlmdiff bench --bundle out/bench-small/bundle --threads 2 --batches 1,4 --frames 20 --rounds 5 \
        --mem-pattern=false --shared-arena --ab "--bundle out/bench-small-paired"

--out is a copy of --bundle whose static denoisers and time graph are exported from PairedDenoiser below (same
context, same export passes); the script checks the paired module against the original in PyTorch first.

VLMDiffDenoiser runs, at every DDIM step, the UNet's frozen encoder (input blocks + middle block) and the SG
network's copy of it on the same latent x: two networks of the same shape with different weights, whose outputs
meet only in the UNet's decoder. On a CPU the small preset's step is about a thousand small operators, and their
count, not their arithmetic, sets its time (docs/operations.md). PairedDenoiser computes the same eps with the
two encoders side by side in the channel axis, [UNet | SG], so each of their convolutions, GroupNorms, SiLUs and
additions is one operator for both:

  * a convolution becomes one with two groups (weights stacked on the output axis), the first one, whose input x
    both encoders share, one of one group;
  * a GroupNorm of G groups over C channels becomes one of 2G groups over 2C (a group never straddles the two
    halves, because C / G channels of each half make one group), its affine the two affines stacked;
  * each ResBlock's time embedding is its two projections concatenated (a time-only tensor, which the static
    export moves into the time graph);
  * a SpatialTransformer's norm, proj_in, proj_out and residual are paired the same way; its transformer blocks
    (LayerNorms, attentions and feed-forwards over tokens) run once per half, as before, so the attention fusion
    of onnx_fuse sees the operators it knows.

The hint is added to the SG half after the first convolution, as SemanticGuidedNetwork.forward adds it. Each
paired block's output is split once into the UNet's skip and the SG network's output, which the SG network's
zero convolutions, SFF and middle_block_out then take as before. Every value is the original's up to float32
rounding (the same products summed in the same order per group); main() compares the two.

Exact only for what ControlledUnetModel and SemanticGuidedNetwork are: the same UNetConfig on both sides (checked
here), no dropout at inference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer", "python"))

from vlmdiff_train.export import export_static_denoisers, sha256_file  # noqa: E402
from vlmdiff_train.model_file import load_model_file, rebuild  # noqa: E402
from vlmdiff_train.nets.layers import (GroupNorm32, SpatialTransformer, TimestepEmbedSequential,  # noqa: E402
                                       timestep_embedding)
from vlmdiff_train.nets.sgn import VLMDiffDenoiser  # noqa: E402
from vlmdiff_train.nets.unet import Downsample, ResBlock  # noqa: E402

def _paired_conv(a: nn.Conv2d, b: nn.Conv2d, shared_input: bool = False) -> nn.Conv2d:
    """One convolution computing a(x_a) and b(x_b) on [x_a | x_b] (two groups), or a(x) and b(x) on a shared x."""
    if a.weight.shape != b.weight.shape or a.stride != b.stride or a.padding != b.padding or a.groups != 1 \
            or b.groups != 1 or (a.bias is None) != (b.bias is None):
        raise ValueError(f"paired conv: {a} and {b} differ")
    cin = a.in_channels if shared_input else 2 * a.in_channels
    conv = nn.Conv2d(cin, 2 * a.out_channels, a.kernel_size, stride=a.stride, padding=a.padding,
                     groups=1 if shared_input else 2, bias=a.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([a.weight, b.weight], 0))
        if a.bias is not None:
            conv.bias.copy_(torch.cat([a.bias, b.bias], 0))
    return conv


def _paired_norm(a: nn.GroupNorm, b: nn.GroupNorm) -> nn.GroupNorm:
    if a.num_groups != b.num_groups or a.num_channels != b.num_channels or a.eps != b.eps or not a.affine \
            or not b.affine:
        raise ValueError(f"paired GroupNorm: {a} and {b} differ")
    n = GroupNorm32(2 * a.num_groups, 2 * a.num_channels, eps=a.eps, affine=True)
    with torch.no_grad():
        n.weight.copy_(torch.cat([a.weight, b.weight]))
        n.bias.copy_(torch.cat([a.bias, b.bias]))
    return n


def _seq(layers: nn.Sequential, kinds: tuple) -> list:
    mods = list(layers)
    if len(mods) != len(kinds) or not all(isinstance(m, k) for m, k in zip(mods, kinds)):
        raise ValueError(f"paired block: unexpected layers {[type(m).__name__ for m in mods]}")
    return mods


class _PairedResBlock(nn.Module):
    def __init__(self, a: ResBlock, b: ResBlock):
        super().__init__()
        na, _, ca = _seq(a.in_layers, (nn.GroupNorm, nn.SiLU, nn.Conv2d))
        nb, _, cb = _seq(b.in_layers, (nn.GroupNorm, nn.SiLU, nn.Conv2d))
        self.norm_in, self.conv_in = _paired_norm(na, nb), _paired_conv(ca, cb)
        oa, _, _, pa = _seq(a.out_layers, (nn.GroupNorm, nn.SiLU, nn.Dropout, nn.Conv2d))
        ob, _, _, pb = _seq(b.out_layers, (nn.GroupNorm, nn.SiLU, nn.Dropout, nn.Conv2d))
        self.norm_out, self.conv_out = _paired_norm(oa, ob), _paired_conv(pa, pb)
        self.emb_a, self.emb_b = a.emb_layers, b.emb_layers
        if isinstance(a.skip_connection, nn.Identity) != isinstance(b.skip_connection, nn.Identity):
            raise ValueError("paired ResBlock: one skip is a convolution, the other not")
        self.skip = (nn.Identity() if isinstance(a.skip_connection, nn.Identity)
                     else _paired_conv(a.skip_connection, b.skip_connection))

    def forward(self, x: torch.Tensor, emb: tuple) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        e = torch.cat([self.emb_a(emb[0]), self.emb_b(emb[1])], dim=1)
        h = h + e[:, :, None, None]
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.skip(x) + h


class _PairedTransformer(nn.Module):
    def __init__(self, a: SpatialTransformer, b: SpatialTransformer):
        super().__init__()
        if a.use_linear or b.use_linear:
            raise ValueError("paired SpatialTransformer: only 1x1-convolution projections (SD1) are paired")
        self.norm = _paired_norm(a.norm, b.norm)
        self.proj_in, self.proj_out = _paired_conv(a.proj_in, b.proj_in), _paired_conv(a.proj_out, b.proj_out)
        self.blocks_a, self.blocks_b = a.transformer_blocks, b.transformer_blocks

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        bsz, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        ya, yb = y.chunk(2, dim=1)
        inner = ya.shape[1]
        ya = ya.reshape(bsz, inner, h * w).permute(0, 2, 1)
        yb = yb.reshape(bsz, inner, h * w).permute(0, 2, 1)
        for blk in self.blocks_a:
            ya = blk(ya, context)
        for blk in self.blocks_b:
            yb = blk(yb, context)
        y = torch.cat([ya, yb], dim=2).permute(0, 2, 1).reshape(bsz, 2 * inner, h, w)
        return self.proj_out(y) + x


def _pair_block(a: TimestepEmbedSequential, b: TimestepEmbedSequential) -> nn.ModuleList:
    if len(a) != len(b):
        raise ValueError("paired block: the two encoders' blocks differ in length")
    out = []
    for la, lb in zip(a, b):
        if type(la) is not type(lb):
            raise ValueError(f"paired block: {type(la).__name__} against {type(lb).__name__}")
        if isinstance(la, ResBlock):
            out.append(_PairedResBlock(la, lb))
        elif isinstance(la, SpatialTransformer):
            out.append(_PairedTransformer(la, lb))
        elif isinstance(la, Downsample):
            out.append(_paired_conv(la.op, lb.op))
        else:
            raise ValueError(f"paired block: no pairing for {type(la).__name__}")
    return nn.ModuleList(out)


class PairedDenoiser(nn.Module):
    """eps(x, t, context, hint_feat) of den, the two encoders paired (module docstring). Shares den's decoder,
    zero convolutions and SFF modules; copies the encoders' weights, so build it after the weights are final."""

    def __init__(self, den: VLMDiffDenoiser):
        super().__init__()
        sgn, unet = den.sgn, den.unet
        if sgn.cfg != unet.cfg:
            raise ValueError("paired denoiser: the SG network's configuration differs from the UNet's")
        if len(sgn.input_blocks) != len(unet.input_blocks):
            raise ValueError("paired denoiser: the encoders differ in length")
        self.sgn, self.unet = sgn, unet
        first_a, first_b = unet.input_blocks[0], sgn.input_blocks[0]
        if len(first_a) != 1 or len(first_b) != 1 or not isinstance(first_a[0], nn.Conv2d):
            raise ValueError("paired denoiser: input block 0 is not one convolution")
        self.first = _paired_conv(first_a[0], first_b[0], shared_input=True)
        self.blocks = nn.ModuleList(_pair_block(a, b) for a, b in zip(unet.input_blocks[1:], sgn.input_blocks[1:]))
        self.middle = _pair_block(unet.middle_block, sgn.middle_block)

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: tuple, context: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, _PairedResBlock):
                h = layer(h, emb)
            elif isinstance(layer, _PairedTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                hint_feat: torch.Tensor) -> torch.Tensor:
        sgn, unet = self.sgn, self.unet
        emb = (unet.embed_time(t), sgn.time_embed(timestep_embedding(t, sgn.model_channels)))
        h = self.first(x)
        h = h + F.pad(hint_feat, (0, 0, 0, 0, hint_feat.shape[1], 0))  # hint on the SG half only
        hs_a, hs_b = [], []
        for i in range(len(self.blocks) + 1):
            if i:
                h = self._run(self.blocks[i - 1], h, emb, context)
            a, b = h.chunk(2, dim=1)
            hs_a.append(a)
            hs_b.append(b)
        h = self._run(self.middle, h, emb, context)
        mid_a, mid_b = h.chunk(2, dim=1)

        # the SG network's control list, as SemanticGuidedNetwork.forward builds it from its blocks' outputs
        outs = [zc(o, emb[1], context) for zc, o in zip(sgn.zero_convs, hs_b)]
        if sgn.sff:
            fused = []
            for d, di in enumerate(sgn.sff_dst):
                acc = outs[di]
                for s, si in enumerate(sgn.sff_src):
                    acc = acc + getattr(sgn, f"down{s + 1}{d + 1}")(outs[si])
                fused.append(sgn.silu(acc))
            for d, di in enumerate(sgn.sff_dst):
                outs[di] = fused[d]
        outs.append(sgn.middle_block_out(mid_b, emb[1], context))

        # the UNet's decoder, as ControlledUnetModel.forward runs it with a control list
        h = mid_a + outs.pop()
        n_fused = unet.cfg.num_res_blocks + 1
        emb_u = emb[0]
        for i, module in enumerate(unet.output_blocks):
            skip = hs_a.pop()
            if i < n_fused * unet.control_levels:
                skip = skip + outs.pop()
            h = module(torch.cat([h, skip], dim=1), emb_u, context)
        return unet.out(h)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the model file the bundle was exported from (model.pt)")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    nets, _ = rebuild(load_model_file(a.model))
    den = nets.denoiser.eval()
    paired = PairedDenoiser(den).eval()
    m = json.load(open(os.path.join(a.bundle, "bundle.json")))
    d = m["graphs"]["denoiser"]
    shape = d["inputs"][0]["shape"][1:]
    hint_shape = d["inputs"][3]["shape"][1:]
    c = m["conditioning"]
    cond = np.fromfile(os.path.join(a.bundle, c["file"]), "<f4").reshape(-1, c["tokens"], c["dim"])
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, *shape, generator=g)
    t = torch.tensor([999, 301])
    ctx = torch.from_numpy(cond[[0, 0]].copy())
    hint = torch.randn(2, *hint_shape, generator=g)
    with torch.no_grad():
        ref, got = den(x, t, ctx, hint), paired(x, t, ctx, hint)
    err = float((ref - got).abs().max())
    print(f"PyTorch: paired against original, max |diff| {err:.3g} (largest |eps| {float(ref.abs().max()):.3g})")
    if not err <= 1e-4 * max(1.0, float(ref.abs().max())):
        print("paired module differs from the original", file=sys.stderr)
        return 1
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    shutil.copytree(a.bundle, a.out)
    statics = d.get("static") or []
    if not statics:
        print("the bundle has no static denoisers", file=sys.stderr)
        return 1
    for s in statics:
        os.remove(os.path.join(a.out, s["file"]))
        m["files"].pop(s["file"], None)
    key = statics[0]["context"]
    keys = [e["key"] for e in c["entries"]]
    specs, time_spec = export_static_denoisers(
        a.out, paired, torch.from_numpy(cond[keys.index(key)].copy()), key, [s["batch"] for s in statics],
        tuple(shape), hint[:1], torch.Generator().manual_seed(1235))
    d["static"] = specs
    if time_spec is not None:
        d["time"] = time_spec
    for s in specs + ([time_spec] if time_spec else []):
        p = os.path.join(a.out, s["file"])
        m["files"][s["file"]] = {"sha256": sha256_file(p), "size": os.path.getsize(p)}
    m["version"] = m["version"] + "+paired"
    with open(os.path.join(a.out, "bundle.json"), "w") as f:
        json.dump(m, f, indent=2)
    print(f"wrote {a.out}: {len(specs)} paired static denoisers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
