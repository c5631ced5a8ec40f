"""CLIP text transformer with the Hugging Face CLIPTextModel key layout (text_model.*).

SD1.5 stores openai/clip-vit-large-patch14's text tower under cond_stage_model.transformer.* in exactly this
layout; FrozenCLIPEmbedder's output is last_hidden_state (after final_layer_norm), [B, 77, 768]. The same class
with fewer layers/width is the small presets' text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
import torch.nn as nn

__all__ = ["CLIPTextConfig", "CLIPTextModel"]


@dataclass
class CLIPTextConfig:
    """Defaults are CLIP ViT-L/14's text tower."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        d = cfg.hidden_size
        if d % cfg.num_attention_heads:
            raise ValueError(f"clip: hidden_size {d} not divisible by heads {cfg.num_attention_heads}")
        self.heads = cfg.num_attention_heads
        self.head_dim = d // self.heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.heads, self.head_dim
        q = (self.q_proj(x) * self.scale).reshape(b, n, h, hd).permute(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, h, hd).permute(0, 2, 3, 1)
        v = self.v_proj(x).reshape(b, n, h, hd).permute(0, 2, 1, 3)
        attn = (torch.matmul(q, k) + mask).softmax(dim=-1)
        out = torch.matmul(attn, v).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        # HF keeps position_ids as a buffer; SD1.5 files carry it (sometimes as float, sometimes corrupted), so it
        # is not persistent here and checkpoints.py drops it: positions are always 0..n-1.
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).unsqueeze(0),
                             persistent=False)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.embeddings.token_embedding(input_ids) + self.embeddings.position_embedding(
            self.embeddings.position_ids[:, :n])
        mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


class CLIPTextModel(nn.Module):
    """forward(input_ids [B,L] int64) -> last_hidden_state [B,L,hidden] (causal, quick_gelu)."""

    def __init__(self, cfg: CLIPTextConfig | dict | None = None):
        super().__init__()
        if cfg is None:
            cfg = CLIPTextConfig()
        elif isinstance(cfg, dict):
            cfg = CLIPTextConfig(**cfg)
        self.cfg = cfg
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"clip: {input_ids.shape[1]} tokens > max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}")
        return self.text_model(input_ids)
