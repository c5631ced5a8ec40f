"""Multiply-accumulate counts and torch-eager timings of a preset's networks at batch 1.

    /usr/bin/python3 -m vlmdiff_train.nets.profile --preset small [--threads 2] [--repeat 5]

MACs count convolutions, linear layers and attention matmuls (matmul/bmm), the terms that dominate; norms and
activations are left out. The per-frame line is the scoring pass without the feature backbone:
vae_encoder + hint + ddim_steps x denoiser + vae_decoder (CLIP is a precomputed constant at run time).
Timings are torch eager on this machine; ONNX Runtime is typically 1.3-2.5x faster on these conv nets.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_macs", "time_call", "profile_preset"]


class _MatmulCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.baddbmm):
            a = args[0] if func is not torch.baddbmm else args[1]
            if isinstance(a, torch.Tensor) and isinstance(out, torch.Tensor):
                self.macs += out.numel() * a.shape[-1]
        return out


def count_macs(fn: Callable[[], object], module: nn.Module) -> int:
    """MACs of one call of fn (which runs module): conv + linear via hooks, matmuls via a function mode."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out.numel() * k

    def lin_hook(m: nn.Linear, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    counter = _MatmulCounter()
    try:
        with torch.no_grad(), counter:
            fn()
    finally:
        for h in hooks:
            h.remove()
    return total[0] + counter.macs


def time_call(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn in milliseconds."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def profile_preset(name: str, repeat: int = 5, ddim_steps: int = 10, out=sys.stdout) -> dict:
    from ..presets import build, fresh_ae_full_res, get_preset
    from .layers import count_params

    nets = build(name, ae_full_res_blocks=fresh_ae_full_res(get_preset(name)))  # what a new training builds
    p = nets.preset
    m = nets.model.eval()
    img = torch.randn(1, 3, p.input_size, p.input_size)
    z = torch.randn(1, p.embed_dim, p.latent_size, p.latent_size)
    ctx = torch.randn(1, p.context_tokens, p.context_dim)
    t = torch.tensor([901])
    hint = torch.randn(1, p.hint_channels, p.latent_size, p.latent_size)
    ids = torch.zeros(1, p.context_tokens, dtype=torch.int64)
    rows = [
        ("vae_encoder", m.vae, lambda: m.vae.encode_moments(img), count_params(m.vae.encoder)),
        ("hint", m.sgn.input_hint_block, lambda: m.hint_features(img), count_params(m.sgn.input_hint_block)),
        ("denoiser (1 step)", m.denoiser, lambda: m.denoiser(z, t, ctx, hint),
         count_params(m.denoiser) - count_params(m.sgn.input_hint_block)),
        ("  sg network", m.sgn, lambda: m.sgn(z, t, ctx, hint), count_params(m.sgn)),
        ("vae_decoder", m.vae, lambda: m.decode_latent(z), count_params(m.vae.decoder)),
    ]
    if m.text_encoder is not None:
        rows.append(("text encoder", m.text_encoder, lambda: m.text_encoder(ids), count_params(m.text_encoder)))
    if nets.dino is not None:
        rows.append(("dino", nets.dino, lambda: nets.dino.get_intermediate_layers(img), count_params(nets.dino)))
    res = {}
    print(f"preset {p.name}: input {p.input_size}, latent {p.embed_dim}x{p.latent_size}x{p.latent_size}, "
          f"context {p.context_tokens}x{p.context_dim}, torch {torch.__version__}, threads {torch.get_num_threads()}",
          file=out)
    print(f"{'module':<20}{'params (M)':>12}{'GMACs':>10}{'torch ms':>10}", file=out)
    for label, mod, fn, params in rows:
        macs = count_macs(fn, mod)
        ms = time_call(fn, repeat)
        res[label.strip()] = dict(params=params, macs=macs, ms=ms)
        print(f"{label:<20}{params / 1e6:>12.3f}{macs / 1e9:>10.3f}{ms:>10.1f}", file=out)
    frame_macs = sum(res[k]["macs"] * (ddim_steps if k.startswith("denoiser") else 1)
                     for k in ("vae_encoder", "hint", "denoiser (1 step)", "vae_decoder"))
    frame_ms = sum(res[k]["ms"] * (ddim_steps if k.startswith("denoiser") else 1)
                   for k in ("vae_encoder", "hint", "denoiser (1 step)", "vae_decoder"))
    print(f"{'frame (' + str(ddim_steps) + ' steps)':<20}{'':>12}{frame_macs / 1e9:>10.3f}{frame_ms:>10.1f}"
          f"   (without the feature backbone)", file=out)
    res["frame"] = dict(macs=frame_macs, ms=frame_ms)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    profile_preset(a.preset, a.repeat, a.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
