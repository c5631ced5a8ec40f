"""The VLMDiff/DiAD denoiser: Semantic-Guidance (SG) network + frozen-encoder SD UNet (docs/algorithm.md §1.7).

Parameter names follow DiAD/VLMDiff's sgn/sgn.py, so a published diad.ckpt/vlmdiff.ckpt (control_model.*,
model.diffusion_model.*) loads strictly. Two departures from that code, both exact rewrites, made for export:
  * the hint branch (input_hint_block) is split out as SemanticGuidedNetwork.hint_features(), because it does not
    depend on the timestep and the agent computes it once per frame instead of once per DDIM step;
  * the SG network and the UNet are fused in VLMDiffDenoiser, so the 13 control tensors stay inside one graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn

from ..constants import LATENT_SCALE
from .autoencoder import AutoencoderKL
from .layers import TimestepEmbedSequential, timestep_embedding, zero_module
from .unet import UNetConfig, UNetModel, build_encoder

__all__ = [
    "DEFAULT_HINT_CHANNELS",
    "SemanticGuidedNetwork",
    "ControlledUnetModel",
    "VLMDiffDenoiser",
    "VLMDiffModel",
    "SCALE_FACTOR",
]

# Hidden widths of ControlNet's input_hint_block before its last conv (which outputs model_channels).
DEFAULT_HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
# SD's latent scale (LatentDiffusion.scale_factor), defined in constants.py.
SCALE_FACTOR = LATENT_SCALE

# Prefixes of SG-network keys that have no counterpart in the UNet: they keep their (zero) init at build time.
SGN_NEW_PREFIXES = ("input_hint_block.", "zero_convs.", "middle_block_out.", "down")


class SemanticGuidedNetwork(nn.Module):
    """ControlNet copy of the UNet encoder + middle block, plus DiAD's SFF block.

    Keys: time_embed.*, input_blocks.*, zero_convs.N.0.*, input_hint_block.{0,2,...,14}.*, middle_block.*,
    middle_block_out.0.*, down{s}{d}.0.weight (SFF). The SFF convs map the outputs of the second-to-last level
    (its downsample + res blocks; outputs 6,7,8 in SD1.5) onto those of the last level (9,10,11):
        out[dst_d] = SiLU(out[dst_d] + sum_s down{s}{d}(out[src_s]))
    with stride-2 3x3 convs without bias, zero-init, each followed by InstanceNorm2d (no affine) and SiLU.
    """

    def __init__(self, cfg: UNetConfig | dict | None = None, hint_channels: int = 3,
                 hint_hidden: tuple = DEFAULT_HINT_CHANNELS, sff: bool = True):
        super().__init__()
        if cfg is None:
            cfg = UNetConfig()
        elif isinstance(cfg, dict):
            cfg = UNetConfig(**cfg)
        if len(hint_hidden) != 7:
            raise ValueError(f"sgn: hint_hidden needs 7 widths (8 convs), got {len(hint_hidden)}")
        self.cfg = cfg
        self.model_channels = cfg.model_channels
        mc = cfg.model_channels
        self.time_embed, self.input_blocks, self.middle_block, chans = build_encoder(cfg)
        self.zero_convs = nn.ModuleList([self._zero_conv(c) for c in chans])
        c = [hint_channels] + list(hint_hidden)
        strides = (1, 1, 2, 1, 2, 1, 2)
        layers: list[nn.Module] = []
        for i in range(7):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, padding=1, stride=strides[i]), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(c[7], mc, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*layers)
        ch = mc * cfg.channel_mult[-1]
        self.middle_block_out = self._zero_conv(ch)

        # SFF: groups of (num_res_blocks + 1) outputs per level; fuse group L-2 into group L-1.
        n = cfg.num_res_blocks + 1
        levels = len(cfg.channel_mult)
        self.sff = sff and levels >= 2
        if self.sff:
            last = len(chans) - n
            self.sff_src = list(range(last - n, last))
            self.sff_dst = list(range(last, last + n))
            if len(self.sff_src) > 9 or len(self.sff_dst) > 9:
                raise ValueError("sgn: SFF key names down{s}{d} support at most 8 res blocks per level")
            for s, si in enumerate(self.sff_src):
                for d, di in enumerate(self.sff_dst):
                    conv = zero_module(nn.Conv2d(chans[si], chans[di], 3, stride=2, padding=1, bias=False))
                    self.add_module(f"down{s + 1}{d + 1}", nn.Sequential(conv, nn.InstanceNorm2d(chans[di]),
                                                                          nn.SiLU()))
            self.silu = nn.SiLU()
        else:
            self.sff_src, self.sff_dst = [], []

    def _zero_conv(self, channels: int) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1, padding=0)))

    @property
    def num_controls(self) -> int:
        return len(self.zero_convs) + 1

    def hint_features(self, image: torch.Tensor) -> torch.Tensor:
        """input_hint_block(image): [B,3,H,W] -> [B,model_channels,H/8,W/8]; independent of t, so cacheable."""
        return self.input_hint_block(image)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                hint_feat: torch.Tensor) -> list[torch.Tensor]:
        """The control list: one tensor per input block (zero-conv'd, SFF-fused), then the middle block's."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        outs = []
        h = x
        for i, (module, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = module(h, emb, context)
            if i == 0:
                h = h + hint_feat
            outs.append(zero_conv(h, emb, context))
        if self.sff:
            fused = []
            for d, di in enumerate(self.sff_dst):
                acc = outs[di]
                for s, si in enumerate(self.sff_src):
                    acc = acc + getattr(self, f"down{s + 1}{d + 1}")(outs[si])
                fused.append(self.silu(acc))
            for d, di in enumerate(self.sff_dst):
                outs[di] = fused[d]
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs


class ControlledUnetModel(UNetModel):
    """SD UNet whose encoder and middle block run frozen (no_grad), with the controls added on the way up.

    only_mid_control=True is DiAD/VLMDiff's setting (train.py/test.py override the yaml): the middle control is
    added to h, and the first num_res_blocks+1 output blocks (0,1,2 in SD1.5) get skip + the last level's fused SG
    outputs (11,10,9); the other output blocks get plain skips. only_mid_control=False is plain ControlNet: every
    skip gets its control.

    control_levels generalises the two: the decoder blocks of that many UNet levels, counted from the bottom, get
    their controls (1 = only_mid_control, len(channel_mult) = every skip). Why a middle ground: with control at
    the bottom level only, the image reaches the decoder at 1/8 of the latent's size (4x4 for small), so a
    reconstruction from full noise cannot reproduce a stochastic texture or the exact phase of fine edges, and the
    feature distance reads that as anomaly all over a textured background; every level lets the SG branch hand
    the frame's layout to the decoder at the latent's own resolution, which can also carry a defect through.
    Measured (docs/training.md, "Control at every level"): no gain for small on textured surfaces nor for taef2
    on PIPED, a gain for the tiny taef test model; hence only-mid stays every preset's default.
    """

    def __init__(self, cfg: UNetConfig | dict | None = None, only_mid_control: bool = True,
                 freeze_encoder: bool = True, control_levels: int | None = None):
        super().__init__(cfg)
        levels = len(self.cfg.channel_mult)
        if control_levels is None:
            control_levels = 1 if only_mid_control else levels
        if not 1 <= int(control_levels) <= levels:
            raise ValueError(f"control_levels {control_levels}: the UNet has {levels} levels (1 = DiAD's only-mid "
                             f"control, {levels} = every skip)")
        self.control_levels = int(control_levels)
        self.only_mid_control = self.control_levels == 1
        self.freeze_encoder = freeze_encoder

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,  # type: ignore[override]
                control: list[torch.Tensor] | None = None) -> torch.Tensor:
        hs = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            emb = self.embed_time(timesteps)
            h = x
            for module in self.input_blocks:
                h = module(h, emb, context)
                hs.append(h)
            h = self.middle_block(h, emb, context)
        if control is None:
            for module in self.output_blocks:
                h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
            return self.out(h)
        control = list(control)
        h = h + control.pop()
        n_fused = self.cfg.num_res_blocks + 1
        for i, module in enumerate(self.output_blocks):
            skip = hs.pop()
            if i < n_fused * self.control_levels:
                skip = skip + control.pop()
            h = module(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h)


class VLMDiffDenoiser(nn.Module):
    """eps(x_t, t, context, hint_feat): SG network + controlled UNet fused, the exported 'denoiser' graph.

    hint_feat is SemanticGuidedNetwork.hint_features(image), computed once per frame.
    """

    def __init__(self, sgn: SemanticGuidedNetwork, unet: ControlledUnetModel):
        super().__init__()
        self.sgn = sgn
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                hint_feat: torch.Tensor) -> torch.Tensor:
        control = self.sgn(x, t, context, hint_feat)
        return self.unet(x, t, context, control)

    def forward_image(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      image: torch.Tensor) -> torch.Tensor:
        """Same as forward, from the preprocessed image instead of its cached hint features."""
        return self.forward(x, t, context, self.sgn.hint_features(image))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What VLMDiff optimises (docs/algorithm.md §2.1): all of the SG network, UNet output_blocks and out."""
        return (list(self.sgn.parameters()) + list(self.unet.output_blocks.parameters())
                + list(self.unet.out.parameters()))

    def freeze_for_training(self) -> None:
        """requires_grad False on the UNet's time_embed, input_blocks and middle_block (frozen in VLMDiff)."""
        for m in (self.unet.time_embed, self.unet.input_blocks, self.unet.middle_block):
            for p in m.parameters():
                p.requires_grad_(False)


class VLMDiffModel(nn.Module):
    """The whole model: vae (AutoencoderKL), denoiser (VLMDiffDenoiser), optional text_encoder.

    scale_factor is SD's latent scale (0.18215): z = scale_factor * posterior, decode(z / scale_factor).
    """

    def __init__(self, vae: AutoencoderKL, denoiser: VLMDiffDenoiser, text_encoder: nn.Module | None = None,
                 scale_factor: float = SCALE_FACTOR):
        super().__init__()
        self.vae = vae
        self.denoiser = denoiser
        self.text_encoder = text_encoder
        self.scale_factor = scale_factor

    @property
    def sgn(self) -> SemanticGuidedNetwork:
        return self.denoiser.sgn

    @property
    def unet(self) -> ControlledUnetModel:
        return self.denoiser.unet

    def encode_latent(self, image: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled diffusion latent z of a preprocessed image (posterior mean, or a sample when asked)."""
        return self.scale_factor * self.vae.encode(image, sample=sample, generator=generator, noise=noise)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Image (in the input's normalised space) from a scaled latent; no clamp, like the reference."""
        return self.vae.decode(z / self.scale_factor)

    def hint_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.denoiser.sgn.hint_features(image)

    def eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hint_feat: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t, context, hint_feat)
