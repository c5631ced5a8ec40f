"""Network presets: sd15 (the paper's networks), small (CPU production lines), tiny (tests, minutes to train),
sd15-mini (sd15's structure at test widths).

Every preset keeps the real structure of the method: a KL VAE with downsample 8, an SD-style UNet with
SpatialTransformer cross-attention, and the SG network with hint block, zero convs and SFF. Only widths, depths
and the input size shrink. A preset also says what the bundle manifest needs: input size, latent channels and
size, context tokens and width, and which feature backbone scores the reconstruction.

    from vlmdiff_train.presets import get_preset, build
    nets = build("tiny")             # Networks(model=VLMDiffModel, dino=..., preset=...)
    nets = build("sd15", meta=True)  # shapes only, no memory (for key/shape checks)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .nets.autoencoder import AutoencoderKL, DDConfig
from .nets.clip_text import CLIPTextConfig, CLIPTextModel
from .nets.dino import DinoConfig, VisionTransformer
from .nets.layers import meta_device
from .nets.taef import TAEConfig, TinyAutoencoder
from .nets.sgn import (
    DEFAULT_HINT_CHANNELS,
    SCALE_FACTOR,
    ControlledUnetModel,
    SemanticGuidedNetwork,
    VLMDiffDenoiser,
    VLMDiffModel,
)
from .nets.unet import UNetConfig

__all__ = ["FeaturesPreset", "Preset", "Networks", "PRESETS", "get_preset", "build", "preset_names",
           "make_autoencoder", "TAEF2_SCALE", "LDM_FULL_RES", "fresh_ae_full_res",
           "with_ae_full_res_blocks"]


@dataclass(frozen=True)
class FeaturesPreset:
    """The feature backbone whose input/reconstruction distance is the anomaly map.

    kind "dino": a DINO ViT built from Preset.dino (tokens [B,1+N,D] after the final norm, CLS first);
    kind "onnx": a user-supplied ONNX graph (e.g. ../shared/backbones/resnet50v2_stage1to3.onnx) whose outputs
    `layers` are feature maps; `onnx_file` is the file name it is usually found under.
    """

    kind: str
    layers: tuple = ()
    weights: tuple = ()
    onnx_file: str = ""
    tokens: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    input_size: int  # square input H = W, pixels
    vae: DDConfig | TAEConfig  # a KL VAE trained by finetune-ae, or a pretrained tiny autoencoder (taef)
    embed_dim: int  # latent channels
    unet: UNetConfig
    hint_hidden: tuple
    text: CLIPTextConfig
    features: FeaturesPreset
    dino: DinoConfig | None = None
    context_tokens: int = 77
    scale_factor: float = SCALE_FACTOR
    only_mid_control: bool = True
    description: str = ""
    # ResnetBlocks at the autoencoder's full resolution that a *new* autoencoder of this preset gets (finetune-ae
    # from scratch, the build stage without one, bench_bundle, the MAC profile); None: LDM's (vae as defined).
    # Kept apart from vae, the network definition, because model files and ae.pt written before it carry no layout
    # record and must rebuild vae as it is (checkpoints.autoencoder_layout: no record = this definition).
    fresh_ae_full_res_blocks: int | None = None

    @property
    def latent_channels(self) -> int:
        return self.embed_dim

    @property
    def downsample(self) -> int:
        return self.vae.downsample

    @property
    def latent_size(self) -> int:
        return self.input_size // self.downsample

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim

    @property
    def hint_channels(self) -> int:
        """Channels of hint_features(image) (= the UNet's model_channels)."""
        return self.unet.model_channels

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(latent_channels=self.latent_channels, latent_size=self.latent_size,
                 downsample=self.downsample, context_dim=self.context_dim, hint_channels=self.hint_channels)
        return d

    def validate(self) -> None:
        """Raise ValueError naming the field when the preset cannot build the method's structure."""
        if self.vae.downsample != 8:
            raise ValueError(f"preset {self.name}: vae.ch_mult {self.vae.ch_mult} gives downsample "
                             f"{self.vae.downsample}; the hint block downsamples by 8, so the VAE must too")
        if self.input_size % 8 or self.input_size <= 0:
            raise ValueError(f"preset {self.name}: input_size {self.input_size} is not a positive multiple of 8")
        if self.latent_size % 2 ** (len(self.unet.channel_mult) - 1):
            raise ValueError(f"preset {self.name}: latent {self.latent_size} not divisible by the UNet's "
                             f"{2 ** (len(self.unet.channel_mult) - 1)}x downsampling")
        if isinstance(self.vae, TAEConfig) and self.vae.latent_channels != self.embed_dim:
            raise ValueError(f"preset {self.name}: taef latent_channels {self.vae.latent_channels} != embed_dim "
                             f"{self.embed_dim}")
        if self.unet.in_channels != self.embed_dim or self.unet.out_channels != self.embed_dim:
            raise ValueError(f"preset {self.name}: unet in/out channels must equal embed_dim {self.embed_dim}")
        if self.text.hidden_size != self.unet.context_dim:
            raise ValueError(f"preset {self.name}: text.hidden_size {self.text.hidden_size} != "
                             f"unet.context_dim {self.unet.context_dim}")
        if self.context_tokens > self.text.max_position_embeddings:
            raise ValueError(f"preset {self.name}: context_tokens {self.context_tokens} > text positions")
        if len(self.unet.channel_mult) < 2:
            raise ValueError(f"preset {self.name}: the SFF block needs at least 2 UNet levels")


_RESNET = FeaturesPreset(kind="onnx", layers=("stage1", "stage2", "stage3"), weights=(1.0, 1.0, 1.0),
                         onnx_file="resnet50v2_stage1to3.onnx")

SD15 = Preset(
    name="sd15",
    description="The paper's networks: kl-f8 VAE, SD1.5 UNet + SG network, CLIP ViT-L/14 text, DINO ViT-S/8.",
    input_size=256,
    vae=DDConfig(),
    embed_dim=4,
    unet=UNetConfig(),
    hint_hidden=DEFAULT_HINT_CHANNELS,
    text=CLIPTextConfig(),
    features=FeaturesPreset(kind="dino", layers=("tokens",), weights=(1.0,), tokens=True),
    dino=DinoConfig(),
)

# sd15 with every width divided down and nothing else changed: the same modules, levels, res blocks, attention
# resolutions, transformer and text/ViT depths, hence the same state-dict keys as SD1.5 .ckpt, kl-f8 and the DINO
# .pth (only the shapes differ). It runs the whole sd15 path (checkpoint formats, SG init from the UNet, ViT
# features) on a CPU in minutes; trainer/run/sd15_e2e_test.go. 128x128 input: a 16x16 latent, 2x2 at the UNet's
# bottom (the SG network's SFF block InstanceNorms its deepest features, which needs more than one position).
SD15_MINI = Preset(
    name="sd15-mini",
    description="sd15's structure and key layout at CPU-test widths (128x128 input); proves the sd15 path, "
                "not for production.",
    input_size=128,
    vae=DDConfig(ch=8, norm_groups=4),
    embed_dim=4,
    unet=UNetConfig(model_channels=16, num_heads=2, context_dim=32, norm_groups=8),
    hint_hidden=(8, 8, 8, 8, 16, 16, 16),
    text=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2),
    features=FeaturesPreset(kind="dino", layers=("tokens",), weights=(1.0,), tokens=True),
    dino=DinoConfig(embed_dim=32, num_heads=2),
)

_MOBILENET = FeaturesPreset(kind="onnx", layers=("block2", "block5", "block12"), weights=(1.0, 1.0, 1.0),
                            onnx_file="mobilenetv2_fp32_features.onnx")

SMALL = Preset(
    name="small",
    description="CPU production lines: 256x256 input, narrow networks (VAE ch 8, UNet 16 channels) sized so a "
                "frame fits a 250 ms budget on 2 CPU cores through ONNX Runtime, MobileNetV2 features (ONNX, "
                "strides 4/8/16 like ResNet50 stages 1-3 at a quarter of the cost).",
    input_size=256,
    vae=DDConfig(ch=8, ch_mult=(1, 1, 2, 4), num_res_blocks=1, norm_groups=8),
    embed_dim=4,
    unet=UNetConfig(model_channels=16, channel_mult=(1, 1, 2, 4), num_res_blocks=2, attention_resolutions=(4,),
                    num_heads=-1, num_head_channels=16, context_dim=256, norm_groups=8),
    hint_hidden=(8, 8, 16, 16, 32, 32, 64),
    text=CLIPTextConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
    features=_MOBILENET,
    # No ResnetBlock at 256 x 256 (session 59, 60): ONNX Runtime's blocked kernels take 16 channels at a time on
    # AVX-512, so the 8-channel full-resolution level cost what 16 would; encode and decode ran about 0.6x, the
    # frame 0.87x at batch 1 and 0.83x at batch 4 (2-core Xeon, paired), level on PIPED and on generated textured
    # surfaces (docs/training.md, "Fewer blocks at full resolution").
    fresh_ae_full_res_blocks=0,
)

TINY = Preset(
    name="tiny",
    description="Tests and demos: trains end to end in minutes on 2 CPU cores at 64x64 input (8x8 latent).",
    input_size=64,
    vae=DDConfig(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, mid_attn=True, norm_groups=8),
    embed_dim=4,
    unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(1, 2),
                    num_heads=-1, num_head_channels=16, context_dim=32, norm_groups=8),
    hint_hidden=(8, 8, 8, 8, 16, 16, 16),
    text=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    features=_RESNET,
    dino=DinoConfig(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2),
)

# The pretrained tiny autoencoder's latents have a standard deviation of about 0.68 (12 PIPED test normals, one
# per 60, measured with nets/taef.py); the diffusion schedule assumes unit-variance latents, as SD's 0.18215 gives
# for kl-f8. The build stage measures the scale on the user's own training images (measured_latent_scale); 1.5 is
# the fallback when it has no index to measure on.
TAEF2_SCALE = 1.5

TAEF2 = Preset(
    name="taef2",
    description="The pretrained taef2 tiny autoencoder (32-channel latents, ~39 dB on industrial normals against "
                "22-26 dB for small's from-scratch VAE; weights given by path) with a 32-channel UNet + SG network at "
                "256x256. On PIPED level with small's recipe (configs/train/taef2.yaml), not ahead; the autoencoder "
                "alone costs ~33 GMAC per frame, about 2.2x small's latency, so it does not fit a 2-core budget.",
    input_size=256,
    vae=TAEConfig(),
    embed_dim=32,
    unet=UNetConfig(in_channels=32, out_channels=32, model_channels=32, channel_mult=(1, 1, 2, 4),
                    num_res_blocks=2, attention_resolutions=(4,), num_heads=-1, num_head_channels=32,
                    context_dim=256, norm_groups=8),
    hint_hidden=(16, 16, 32, 32, 64, 64, 96),
    text=CLIPTextConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
    features=_RESNET,
    scale_factor=TAEF2_SCALE,
)

# tiny-taef: the taef structure at test size (tiny's UNet, a 16-channel taef with 8 latent channels), so the
# end-to-end training test covers the pretrained-autoencoder path in minutes.
TINY_TAEF = Preset(
    name="tiny-taef",
    description="Tests: the taef2 preset's structure at 64x64 (16-channel tiny autoencoder, 8 latent channels).",
    input_size=64,
    vae=TAEConfig(channels=16, latent_channels=8, gn_hidden=32, gn_groups=4),
    embed_dim=8,
    unet=UNetConfig(in_channels=8, out_channels=8, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2,
                    attention_resolutions=(1, 2), num_heads=-1, num_head_channels=16, context_dim=32,
                    norm_groups=8),
    hint_hidden=(8, 8, 8, 8, 16, 16, 16),
    text=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    features=_RESNET,
    scale_factor=TAEF2_SCALE,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SD15, SD15_MINI, SMALL, TINY, TAEF2, TINY_TAEF)}


def make_autoencoder(p: Preset) -> nn.Module:
    """The preset's autoencoder with fresh weights: AutoencoderKL for a DDConfig, TinyAutoencoder for a TAEConfig."""
    if isinstance(p.vae, TAEConfig):
        return TinyAutoencoder(p.vae)
    return AutoencoderKL(p.vae, p.embed_dim)


# finetune_ae.extra.full_res_blocks / --ae-full-res-blocks: LDM's layout (num_res_blocks ResnetBlocks in the
# encoder's full-resolution level, one more in the decoder's), which no single count says.
LDM_FULL_RES = -1


def with_ae_full_res_blocks(p: Preset, n: int | None) -> Preset:
    """p with n ResnetBlocks at its autoencoder's full-resolution level (DDConfig.full_res_blocks); n None keeps p,
    LDM_FULL_RES (-1) gives LDM's layout. Only a KL autoencoder trained by the finetune-ae stage can take a
    count: a pretrained one's layout is fixed."""
    if n is None:
        return p
    if int(n) < LDM_FULL_RES:
        raise ValueError(f"ae_full_res_blocks {n}: want 0 or more, or {LDM_FULL_RES} for LDM's layout")
    if not isinstance(p.vae, DDConfig):
        raise ValueError(f"ae_full_res_blocks: preset {p.name}'s autoencoder ({type(p.vae).__name__}) is pretrained "
                         "with a fixed layout; only a KL autoencoder (DDConfig) takes it")
    full = None if int(n) == LDM_FULL_RES else int(n)
    return dataclasses.replace(p, vae=dataclasses.replace(p.vae, full_res_blocks=full))


def fresh_ae_full_res(p: Preset, n: int | None = None) -> int | None:
    """The full-resolution count a new autoencoder of p gets: n when given (refused as with_ae_full_res_blocks
    refuses it: a pretrained preset, a count below -1), else the preset's default for new autoencoders
    (Preset.fresh_ae_full_res_blocks; small: 0). None and LDM_FULL_RES both mean LDM's layout, which is what a file
    without a layout record rebuilds; a count >= 0 is what ae.pt and the model file record."""
    if n is None:
        n = p.fresh_ae_full_res_blocks
    else:
        with_ae_full_res_blocks(p, n)
    return None if n is None or int(n) == LDM_FULL_RES else int(n)


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """The preset called name (or name itself when it is already a Preset), validated."""
    if isinstance(name, Preset):
        p = name
    else:
        try:
            p = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
    p.validate()
    return p


@dataclass
class Networks:
    """What build() returns. model groups vae, denoiser (sgn + unet) and text_encoder; dino is separate because
    it scores reconstructions and is not part of the trained model."""

    preset: Preset
    model: VLMDiffModel
    dino: VisionTransformer | None = None

    @property
    def vae(self) -> AutoencoderKL:
        return self.model.vae

    @property
    def denoiser(self) -> VLMDiffDenoiser:
        return self.model.denoiser

    @property
    def sgn(self) -> SemanticGuidedNetwork:
        return self.model.denoiser.sgn

    @property
    def unet(self) -> ControlledUnetModel:
        return self.model.denoiser.unet

    @property
    def text_encoder(self) -> CLIPTextModel | None:
        return self.model.text_encoder


def build(preset_name: str | Preset, device: str | torch.device | None = None, *, meta: bool = False,
          with_text: bool = True, with_dino: bool | None = None, seed: int | None = 0,
          control_levels: int | None = None, res_blocks: int | None = None,
          ae_full_res_blocks: int | None = None) -> Networks:
    """Build a preset's networks with fresh weights (zero-init layers are zero).

    control_levels overrides the preset's control (ControlledUnetModel): None keeps it (only-mid for every
    preset, as DiAD/VLMDiff), N gives the decoder blocks of the N deepest UNet levels their SG controls.
    res_blocks overrides the ResBlocks per level of the UNet and of the SG branch that mirrors its encoder
    (num_res_blocks; the decoder has one more per level, as openaimodel). Why: a small preset's denoiser step is
    about a thousand short operators, so its latency follows the block count, not the MACs (docs/training.md,
    "Fewer blocks per level"). ae_full_res_blocks sets the ResnetBlocks at the autoencoder's full resolution
    (with_ae_full_res_blocks).

    meta=True builds on the meta device (no memory, no init), for layout checks of the sd15 networks.
    with_dino defaults to True when the preset has a DINO config. seed fixes the random init (None: don't seed).
    """
    p = get_preset(preset_name)
    if res_blocks is not None:
        if int(res_blocks) < 1:
            raise ValueError(f"res_blocks {res_blocks}: want at least one ResBlock per level")
        p = dataclasses.replace(p, unet=dataclasses.replace(p.unet, num_res_blocks=int(res_blocks)))
    p = with_ae_full_res_blocks(p, ae_full_res_blocks)
    if with_dino is None:
        with_dino = p.dino is not None
    if with_dino and p.dino is None:
        raise ValueError(f"preset {p.name} has no DINO config")

    def make() -> Networks:
        vae = make_autoencoder(p)
        sgn = SemanticGuidedNetwork(p.unet, hint_channels=3, hint_hidden=p.hint_hidden)
        unet = ControlledUnetModel(p.unet, only_mid_control=p.only_mid_control, control_levels=control_levels)
        text = CLIPTextModel(p.text) if with_text else None
        model = VLMDiffModel(vae, VLMDiffDenoiser(sgn, unet), text, scale_factor=p.scale_factor)
        dino = VisionTransformer(p.dino) if with_dino else None
        return Networks(preset=p, model=model, dino=dino)

    if meta:
        with meta_device():
            return make()
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = make()
    else:
        nets = make()
    if device is not None:
        nets.model.to(device)
        if nets.dino is not None:
            nets.dino.to(device)
    return nets
