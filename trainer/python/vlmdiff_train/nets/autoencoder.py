"""The KL autoencoder of latent diffusion (LDM diffusionmodules/model.py Encoder/Decoder + models/autoencoder.py
AutoencoderKL), rewritten with LDM's parameter names so kl-f8 and SD1.5's first_stage_model load strictly.

VLMDiff finetunes this VAE on ImageNet-normalised images (docs/algorithm.md §2.3), so decode() lands in that space too.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ldm_normalize

__all__ = ["DDConfig", "AutoencoderKL", "Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Downsample", "Upsample"]


@dataclass
class DDConfig:
    """LDM's ddconfig. Defaults are kl-f8 (SD1.5's first stage, models/autoencoder_kl_32x32x4.yaml)."""

    double_z: bool = True
    z_channels: int = 4
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = ()
    dropout: float = 0.0
    # mid_attn keeps the middle AttnBlock (always present in LDM); small presets may drop it for speed.
    mid_attn: bool = True
    # GroupNorm groups (LDM: 32); a small-preset knob that changes no key.
    norm_groups: int = 32
    # ResnetBlocks at the full-resolution level of the encoder and of the decoder, each; None keeps LDM's
    # num_res_blocks in the encoder and one more in the decoder. Why: at the input's full resolution a narrow
    # autoencoder's convolutions have too few channels to run fast (ONNX Runtime's blocked kernels work on 8 or 16
    # channels at a time, so an 8-channel 3x3 convolution at 256 x 256 costs about what a 16-channel one does) and
    # its norms and activations touch the largest tensors: the small preset's decoder spent about 60% of its
    # time there (docs/training.md, "Fewer blocks at full resolution"). 0 leaves the level its convolutions in
    # and out (encoder: conv_in and the downsampling; decoder: the upsampling and conv_out).
    full_res_blocks: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def blocks_at(self, level: int, decoder: bool) -> int:
        """ResnetBlocks at a level (0 = full resolution) of the encoder or the decoder."""
        if level == 0 and self.full_res_blocks is not None:
            return self.full_res_blocks
        return self.num_res_blocks + (1 if decoder else 0)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm1-swish-conv1-norm2-swish-dropout-conv2 plus a 1x1 nin_shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = ldm_normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = ldm_normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv q/k/v/proj_out (LDM 'vanilla' attention)."""

    def __init__(self, in_channels: int, groups: int = 32):
        super().__init__()
        self.norm = ldm_normalize(in_channels, groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)  # b hw c
        k = k.reshape(b, c, h * w)  # b c hw
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = F.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric zero padding (0,1,0,1), as LDM does (no torch 'same' padding)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """conv_in, down levels (cfg.blocks_at ResnetBlocks [+AttnBlocks] + Downsample), mid (block_1, attn_1,
    block_2), out."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        g = cfg.norm_groups
        self.num_resolutions = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        curr_res = cfg.resolution
        in_ch_mult = (1,) + tuple(cfg.ch_mult)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = cfg.ch * in_ch_mult[i_level]
            block_out = cfg.ch * cfg.ch_mult[i_level]
            n_blocks = cfg.blocks_at(i_level, decoder=False)
            if n_blocks == 0 and block_in != block_out:
                raise ValueError(f"full_res_blocks 0 needs ch_mult[0] 1: the first level's blocks change its "
                                 f"channels ({block_in} -> {block_out})")
            for _ in range(n_blocks):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in, g))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        if cfg.mid_attn:
            self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.norm_out = ldm_normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels,
                                  kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_1(h)
        if hasattr(self.mid, "attn_1"):
            h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in, mid, up levels (num_res_blocks+1 ResnetBlocks [+AttnBlocks] + Upsample; cfg.blocks_at), out; up[0]
    is the full-resolution level, as in LDM (built in reverse and inserted at the front)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        g = cfg.norm_groups
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        if cfg.mid_attn:
            self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.blocks_at(i_level, decoder=True)):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in, g))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = ldm_normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_1(h)
        if hasattr(self.mid, "attn_1"):
            h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder; state-dict keys equal LDM first_stage_model.* without the prefix.

    encode_moments(x) returns quant_conv's output [B, 2*embed_dim, h, w] (mean then logvar along channels), which
    is what the exported vae_encoder graph emits; the posterior sampling and the 0.18215 scale live outside the
    graph so the agent can choose mean or a seeded sample.
    """

    def __init__(self, ddconfig: DDConfig | dict | None = None, embed_dim: int = 4):
        super().__init__()
        if ddconfig is None:
            ddconfig = DDConfig()
        elif isinstance(ddconfig, dict):
            ddconfig = DDConfig(**ddconfig)
        if not ddconfig.double_z:
            raise ValueError("AutoencoderKL needs ddconfig.double_z=True (the encoder emits mean and logvar)")
        self.ddconfig = ddconfig
        self.embed_dim = embed_dim
        self.encoder = Encoder(ddconfig)
        self.decoder = Decoder(ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig.z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig.z_channels, 1)

    @property
    def downsample(self) -> int:
        return self.ddconfig.downsample

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    @staticmethod
    def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) with logvar clamped to [-30, 20] like LDM's DiagonalGaussianDistribution."""
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Unscaled latent: the posterior mean, or mean + std*N(0,1) when sample (noise may be given)."""
        mean, logvar = self.split_moments(self.encode_moments(x))
        if not sample:
            return mean
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image from an unscaled latent (divide a diffusion latent by scale_factor first)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and moments, for autoencoder finetuning."""
        moments = self.encode_moments(x)
        mean, logvar = self.split_moments(moments)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return self.decode(z), moments
