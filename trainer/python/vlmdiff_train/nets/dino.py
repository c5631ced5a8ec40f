"""DINO ViT (facebookresearch/dino vision_transformer.py) with its parameter names, ViT-S/8 by default.

VLMDiff's --use_dino feature extractor: get_intermediate_layers(x)[0] = the last block's tokens after the final
LayerNorm. At 256x256 the 28x28 position grid (trained at 224) is interpolated to 32x32 bicubically, with
DINO's +0.1 trick; DinoFeatures bakes that interpolation in for a fixed export size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DinoConfig", "VisionTransformer", "DinoFeatures"]


@dataclass
class DinoConfig:
    """Defaults are dino_vits8."""

    img_size: int = 224
    patch_size: int = 8
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (torch.matmul(q, k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """Keys: cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*,
    norm.* (no head: DINO's backbone checkpoints have num_classes=0)."""

    def __init__(self, cfg: DinoConfig | dict | None = None):
        super().__init__()
        if cfg is None:
            cfg = DinoConfig()
        elif isinstance(cfg, dict):
            cfg = DinoConfig(**cfg)
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim))
        self.blocks = nn.ModuleList([Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias)
                                     for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        if self.pos_embed.device.type != "meta":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def interpolate_pos_encoding(self, npatch: int, w: int, h: int) -> torch.Tensor:
        """DINO's position-embedding interpolation (bicubic, scale_factor with the +0.1 offset)."""
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos = self.pos_embed[:, 0]
        patch_pos = self.pos_embed[:, 1:]
        dim = self.pos_embed.shape[-1]
        w0 = w // self.patch_embed.patch_size + 0.1
        h0 = h // self.patch_embed.patch_size + 0.1
        side = int(math.sqrt(n))
        patch_pos = F.interpolate(patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                                  scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
        if int(w0) != patch_pos.shape[-2] or int(h0) != patch_pos.shape[-1]:
            raise RuntimeError(f"dino: interpolated grid {tuple(patch_pos.shape[-2:])} != ({int(w0)}, {int(h0)})")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        if pos is None:
            pos = self.interpolate_pos_encoding(x.shape[1] - 1, w, h)
        return x + pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token after the final norm (DINO's forward)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """The last n blocks' tokens [B,1+N,D], each after the final norm."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out


class DinoFeatures(nn.Module):
    """Export wrapper: image [B,3,S,S] -> tokens [B,1+(S/p)^2,D] after the final norm, for a fixed size S.

    The interpolated position embedding is computed once here (a buffer), so the exported graph has no bicubic
    Resize whose scale semantics could differ between PyTorch and ONNX Runtime. Build it after loading weights.
    """

    def __init__(self, vit: VisionTransformer, size: int = 256):
        super().__init__()
        if size % vit.cfg.patch_size:
            raise ValueError(f"dino: size {size} is not a multiple of the patch size {vit.cfg.patch_size}")
        self.vit = vit
        self.size = size
        npatch = (size // vit.cfg.patch_size) ** 2
        with torch.no_grad():
            pos = vit.interpolate_pos_encoding(npatch, size, size).detach().clone()
        self.register_buffer("pos_fixed", pos, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] != self.size or image.shape[-2] != self.size:
            raise ValueError(f"dino: input {tuple(image.shape[-2:])} != fixed size {self.size}")
        x = self.vit.prepare_tokens(image, self.pos_fixed)
        for blk in self.vit.blocks:
            x = blk(x)
        return self.vit.norm(x)
