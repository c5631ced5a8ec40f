"""Building blocks shared by the VLMDiff networks (LDM's diffusionmodules/util.py and attention.py, rewritten).

Everything here keeps the parameter names of the public LDM / ControlNet / DiAD code, because the networks must
load the published SD1.5, kl-f8 and DiAD/VLMDiff checkpoints with strict=True: a renamed submodule would turn a
pretrained weight into a silently random one.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "zero_module",
    "GroupNorm32",
    "normalization",
    "ldm_normalize",
    "timestep_embedding",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "CrossAttention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "meta_device",
    "count_params",
]


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of module and return it (ControlNet's zero convolutions start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (openaimodel's normalization)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """nn.LayerNorm computed in float32 whatever the input dtype (same parameters): CPU bf16 autocast, unlike
    CUDA's, leaves layer_norm alone and would fail on a bf16 input with float32 weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _groups(channels: int, groups: int) -> int:
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups")
    return groups


def normalization(channels: int, groups: int = 32) -> nn.Module:
    """The UNet's norm layer: 32 groups, eps 1e-5 (openaimodel.normalization).

    groups is a knob for the small presets only (narrow layers); it changes no parameter name or shape.
    """
    return GroupNorm32(_groups(channels, groups), channels)


def ldm_normalize(channels: int, groups: int = 32) -> nn.Module:
    """The VAE's and SpatialTransformer's norm layer: 32 groups, eps 1e-6, affine (LDM model.Normalize).

    Computed in float32 like the UNet's (same parameters): CUDA autocast upcasts group_norm by itself, CPU bf16
    autocast does not and would fail on a bf16 input with float32 weights."""
    return GroupNorm32(num_groups=_groups(channels, groups), num_channels=channels, eps=1e-6, affine=True)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding [B, dim]: cos half first, then sin (LDM util.timestep_embedding).

    timesteps is a 1-D tensor (int64 in the exported graph); it is cast to float32 here so ONNX sees one Cast.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as its second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that routes emb to TimestepBlocks and context to SpatialTransformers (openaimodel)."""

    def forward(self, x, emb=None, context=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention written with matmul, since torch 1.13 has no scaled_dot_product_attention.

    Names match LDM's attention.CrossAttention: to_q, to_k, to_v (no bias) and to_out.0 (with bias).
    The batch dimension is kept symbolic (reshape with -1 free dims avoided) so ONNX export with a dynamic batch works.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, d = self.heads, self.dim_head
        context = x if context is None else context
        b, n, _ = x.shape
        m = context.shape[1]
        q = self.to_q(x).reshape(b, n, h, d).permute(0, 2, 1, 3)  # b h n d
        k = self.to_k(context).reshape(b, m, h, d).permute(0, 2, 3, 1)  # b h d m
        v = self.to_v(context).reshape(b, m, h, d).permute(0, 2, 1, 3)  # b h m d
        sim = torch.matmul(q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.matmul(attn, v).permute(0, 2, 1, 3).reshape(b, n, h * d)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (attention.GEGLU): proj to 2*dim_out, value * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP with GEGLU (attention.FeedForward, glu=True): keys net.0.proj, net.2."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text context, GEGLU MLP; pre-LayerNorm residuals."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None,
                 disable_self_attn: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = LayerNorm32(dim)
        self.norm2 = LayerNorm32(dim)
        self.norm3 = LayerNorm32(dim)
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, context)
        return self._forward(x, context)


class SpatialTransformer(nn.Module):
    """Image-to-token transformer with text cross-attention (attention.SpatialTransformer).

    SD1.5 uses 1x1 convolutions for proj_in/proj_out (use_linear=False); SD2 uses Linear. proj_out starts at zero,
    so a fresh transformer block is the identity.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: int | None = None, disable_self_attn: bool = False, use_linear: bool = False,
                 use_checkpoint: bool = False, groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = ldm_normalize(in_channels, groups)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim,
                                  disable_self_attn=disable_self_attn, use_checkpoint=use_checkpoint)
            for _ in range(depth)
        ])
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))
        self.use_linear = use_linear

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        inner = x.shape[1]
        x = x.reshape(b, inner, h * w).permute(0, 2, 1)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.permute(0, 2, 1).reshape(b, x.shape[-1], h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


_FACTORIES = frozenset({
    "empty", "zeros", "ones", "full", "rand", "randn", "randint", "arange", "linspace", "logspace", "eye",
    "empty_strided", "tensor", "as_tensor", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like",
})


class _MetaMode(TorchFunctionMode):
    """Routes tensor factories without an explicit device to 'meta' (torch 1.13 lacks `with torch.device(...)`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", "") in _FACTORIES and kwargs.get("device") is None \
                and not func.__name__.endswith("_like"):
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device():
    """Build modules on the meta device: shapes and names only, no memory and no init time.

    Used to count the SD1.5-sized networks' parameters and check their state-dict layout in tests without
    allocating 5 GB. Modules built here hold meta tensors; `module.to_empty(device="cpu")` makes them real
    (uninitialised) before loading a checkpoint into them.
    """
    with _MetaMode():
        yield


def count_params(module: nn.Module) -> int:
    """Number of parameters (not buffers) of module."""
    return sum(p.numel() for p in module.parameters())
