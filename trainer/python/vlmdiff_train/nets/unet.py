"""The LDM openaimodel UNetModel (SD1.5's model.diffusion_model), rewritten with the same parameter names.

Only the configuration SD1.x/2.x and ControlNet/DiAD use is supported: 2-D, spatial transformers with cross
attention, conv resampling, no scale-shift norm, no class labels. Keeping the names is what lets the SD1.5
checkpoint load strictly and lets the SG network be initialised key by key from the UNet encoder (docs/algorithm.md §2.4).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (
    SpatialTransformer,
    TimestepBlock,
    TimestepEmbedSequential,
    normalization,
    timestep_embedding,
    zero_module,
)

__all__ = ["UNetConfig", "UNetModel", "ResBlock", "Downsample", "Upsample", "heads_for"]


@dataclass
class UNetConfig:
    """openaimodel.UNetModel arguments. Defaults are SD1.5 (v1-inference.yaml unet_config)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 2, 1)
    num_heads: int = 8
    num_head_channels: int = -1
    context_dim: int = 768
    transformer_depth: int = 1
    use_linear_in_transformer: bool = False
    dropout: float = 0.0
    use_checkpoint: bool = False
    # GroupNorm groups (LDM: 32); a small-preset knob that changes no key.
    norm_groups: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def heads_for(cfg: UNetConfig, ch: int) -> tuple[int, int]:
    """(heads, dim_head) of a transformer at width ch: fixed heads (SD1) or fixed head width (SD2)."""
    if cfg.num_head_channels == -1:
        if cfg.num_heads <= 0 or ch % cfg.num_heads:
            raise ValueError(f"unet: width {ch} is not divisible by num_heads={cfg.num_heads}")
        return cfg.num_heads, ch // cfg.num_heads
    if ch % cfg.num_head_channels:
        raise ValueError(f"unet: width {ch} is not divisible by num_head_channels={cfg.num_head_channels}")
    return ch // cfg.num_head_channels, cfg.num_head_channels


class ResBlock(TimestepBlock):
    """GroupNorm-SiLU-conv, + Linear(SiLU(emb)), GroupNorm-SiLU-dropout-zero conv; skip 1x1 when widths differ.

    Keys: in_layers.{0,2}, emb_layers.1, out_layers.{0,3}, skip_connection.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: int | None = None,
                 use_checkpoint: bool = False, groups: int = 32):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.channels = channels
        self.out_channels = out_channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels, groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels, groups), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = h + emb_out[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, emb)
        return self._forward(x, emb)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with padding 1 (key 'op')."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, channels if out_channels is None else out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (key 'conv')."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels if out_channels is None else out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def build_encoder(cfg: UNetConfig) -> tuple[nn.Sequential, nn.ModuleList, TimestepEmbedSequential, list[int]]:
    """time_embed, input_blocks, middle_block and the per-input-block channel list.

    Shared by the UNet and the SG network: the SG network is a copy of exactly these modules, which is why the
    build step can copy the UNet's weights into it by name.
    """
    mc = cfg.model_channels
    ted = mc * 4
    time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
    chans = [mc]
    ch = mc
    ds = 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, ted, cfg.dropout, out_channels=mult * mc,
                                                use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups)]
            ch = mult * mc
            if ds in cfg.attention_resolutions:
                heads, dim_head = heads_for(cfg, ch)
                layers.append(SpatialTransformer(ch, heads, dim_head, depth=cfg.transformer_depth,
                                                 context_dim=cfg.context_dim,
                                                 use_linear=cfg.use_linear_in_transformer,
                                                 use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups))
            input_blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            input_blocks.append(TimestepEmbedSequential(Downsample(ch, ch)))
            chans.append(ch)
            ds *= 2
    heads, dim_head = heads_for(cfg, ch)
    middle_block = TimestepEmbedSequential(
        ResBlock(ch, ted, cfg.dropout, use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups),
        SpatialTransformer(ch, heads, dim_head, depth=cfg.transformer_depth, context_dim=cfg.context_dim,
                           use_linear=cfg.use_linear_in_transformer, use_checkpoint=cfg.use_checkpoint,
                           groups=cfg.norm_groups),
        ResBlock(ch, ted, cfg.dropout, use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups),
    )
    return time_embed, input_blocks, middle_block, chans


class UNetModel(nn.Module):
    """SD1.5's noise predictor eps(x_t, t, context). Keys equal SD1.5 model.diffusion_model.* without the prefix."""

    def __init__(self, cfg: UNetConfig | dict | None = None):
        super().__init__()
        if cfg is None:
            cfg = UNetConfig()
        elif isinstance(cfg, dict):
            cfg = UNetConfig(**cfg)
        self.cfg = cfg
        self.model_channels = cfg.model_channels
        mc = cfg.model_channels
        ted = mc * 4
        self.time_embed, self.input_blocks, self.middle_block, chans = build_encoder(cfg)
        self.input_block_chans = list(chans)
        ch = mc * cfg.channel_mult[-1]
        ds = 2 ** (len(cfg.channel_mult) - 1)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = chans.pop()
                layers: list[nn.Module] = [ResBlock(ch + ich, ted, cfg.dropout, out_channels=mc * mult,
                                                    use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    heads, dim_head = heads_for(cfg, ch)
                    layers.append(SpatialTransformer(ch, heads, dim_head, depth=cfg.transformer_depth,
                                                     context_dim=cfg.context_dim,
                                                     use_linear=cfg.use_linear_in_transformer,
                                                     use_checkpoint=cfg.use_checkpoint, groups=cfg.norm_groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch, cfg.norm_groups), nn.SiLU(),
                                 zero_module(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)))

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.embed_time(timesteps)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
