"""A pretrained tiny autoencoder (TAESD-style) as the latent space of VLMDiff.

Why: the small presets train their KL VAE from scratch on a few hundred normals and reach about 26 dB PSNR, which
caps how faithful any reconstruction can be; the tiny autoencoder distilled from the FLUX.2 VAE (taef2, MIT) reaches
about 39 dB on the same images. It is deterministic (no posterior), takes RGB in [0, 1] and gives 32-channel latents
at stride 8.

The module keeps the AutoencoderKL interface the rest of the trainer uses (encode_moments, encode, decode), so the
export, the Go pipeline and the reference scorer need no special case:
- inputs and outputs stay in the scorer's ImageNet-normalised space: the module converts to [0, 1] on the way in and
  back on the way out (the conversion is part of the exported graphs);
- encode_moments returns [mean, logvar] with a constant logvar of LOGVAR_DETERMINISTIC, so a "sample" is the mean
  to float precision and the bundle's posterior is "mean".

Parameter names follow the published nn.Sequential state dicts (`encoder.<i>...`, `decoder.<i>...`), so the
published files load strictly through load_taef.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

__all__ = ["TAEConfig", "TinyAutoencoder", "TAEBlock", "load_taef", "taef_files", "LOGVAR_DETERMINISTIC"]

# The clamp floor of the KL posterior (docs/algorithm.md): exp(0.5 * -30) = 3e-7, so mean + std * noise == mean.
LOGVAR_DETERMINISTIC = -30.0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TAEConfig:
    """Shape of a TAESD-style autoencoder. Defaults are taef2 (64 channels, 32 latent channels, 3 downsamplings)."""

    channels: int = 64
    latent_channels: int = 32
    # Blocks per resolution, encoder from full resolution down; the decoder mirrors them.
    enc_blocks: tuple = (1, 3, 3, 3)
    dec_blocks: tuple = (3, 3, 3, 1)
    # Resolution levels (counted from the latent) whose blocks carry the GroupNorm pooling branch.
    gn_levels: tuple = (0,)
    gn_hidden: int = 256
    gn_groups: int = 4
    # The input/output space of the scorer: the module maps it to [0, 1] RGB and back.
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.enc_blocks) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = "taef"
        return d


class _PoolBranch(nn.Sequential):
    """1x1 conv -> GroupNorm -> ReLU -> 1x1 conv (no biases on the convs): a cheap global-ish mixing branch."""

    def __init__(self, ch: int, hidden: int, groups: int):
        super().__init__(nn.Conv2d(ch, hidden, 1, bias=False), nn.GroupNorm(groups, hidden), nn.ReLU(),
                         nn.Conv2d(hidden, ch, 1, bias=False))


class TAEBlock(nn.Module):
    """out = ReLU(conv(x) + x) with conv = 3x3-ReLU-3x3-ReLU-3x3; gn blocks first add the pooling branch."""

    def __init__(self, ch: int, gn: bool = False, hidden: int = 256, groups: int = 4):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))
        self.pool = _PoolBranch(ch, hidden, groups) if gn else None
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class _Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3), as the published decoder starts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _encoder(c: TAEConfig) -> nn.Sequential:
    ch, levels = c.channels, len(c.enc_blocks)
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
    for i, n in enumerate(c.enc_blocks):
        if i > 0:
            layers.append(nn.Conv2d(ch, ch, 3, padding=1, stride=2, bias=False))
        gn = (levels - 1 - i) in c.gn_levels
        layers += [TAEBlock(ch, gn, c.gn_hidden, c.gn_groups) for _ in range(n)]
    layers.append(nn.Conv2d(ch, c.latent_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _decoder(c: TAEConfig) -> nn.Sequential:
    ch = c.channels
    layers: list[nn.Module] = [_Clamp(), nn.Conv2d(c.latent_channels, ch, 3, padding=1), nn.ReLU()]
    for i, n in enumerate(c.dec_blocks):
        gn = i in c.gn_levels
        layers += [TAEBlock(ch, gn, c.gn_hidden, c.gn_groups) for _ in range(n)]
        if i < len(c.dec_blocks) - 1:
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1, bias=False)]
    layers.append(nn.Conv2d(ch, 3, 3, padding=1))
    return nn.Sequential(*layers)


class TinyAutoencoder(nn.Module):
    """Deterministic autoencoder with AutoencoderKL's interface, working in the scorer's normalised space."""

    deterministic = True

    def __init__(self, cfg: TAEConfig | dict | None = None):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "kind"})
        self.cfg = cfg or TAEConfig()
        self.embed_dim = self.cfg.latent_channels
        self.encoder = _encoder(self.cfg)
        self.decoder = _decoder(self.cfg)
        self.register_buffer("_mean", torch.tensor(self.cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.cfg.std).view(1, 3, 1, 1), persistent=False)
        # Per-channel latent normalisation, z = (encoder(x) - latent_shift) / latent_spread: identity until
        # set_latent_norm measures them on the user's normals (build.extra.latent_norm). Why: taef2's 32
        # channels have means of -0.67..+0.82 and spreads of 0.38..0.87 on PIPED's training normals, where the diffusion schedule assumes
        # zero-mean unit-variance latents; one global scale cannot centre them. Persistent, so model files and
        # exported graphs carry them (the encoder and decoder graphs include the affine: the Go pipeline is
        # unchanged).
        c = self.cfg.latent_channels
        self.register_buffer("latent_shift", torch.zeros(1, c, 1, 1))
        self.register_buffer("latent_spread", torch.ones(1, c, 1, 1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # model files written before the latent normalisation existed load as the identity
        for name in ("latent_shift", "latent_spread"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def set_latent_norm(self, shift: torch.Tensor, spread: torch.Tensor) -> None:
        """Sets the per-channel normalisation (raw latent = shift + spread x normalised latent); spread > 0."""
        c = self.cfg.latent_channels
        if shift.numel() != c or spread.numel() != c or not bool(torch.isfinite(shift).all()) or \
                not bool((spread > 0).all()) or not bool(torch.isfinite(spread).all()):
            raise ValueError(f"latent normalisation: want {c} finite shifts and {c} positive spreads")
        self.latent_shift.copy_(shift.reshape(1, c, 1, 1))
        self.latent_spread.copy_(spread.reshape(1, c, 1, 1))

    def _raw_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.to_unit(x))

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image -> RGB in [0, 1] (what the published weights expect)."""
        return x * self._std + self._mean

    def from_unit(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - self._mean) / self._std

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x)
        return torch.cat([z, torch.full_like(z, LOGVAR_DETERMINISTIC)], dim=1)

    @staticmethod
    def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """The latent; sample/generator/noise are accepted for interface parity and change nothing."""
        return (self._raw_latent(x) - self.latent_shift) / self.latent_spread

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised image from a latent. The [0, 1] clamp is the published decoder's output range."""
        return self.from_unit(torch.clamp(self.decoder(z * self.latent_spread + self.latent_shift), 0.0, 1.0))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.encode_moments(x)
        return self.decode(self.split_moments(moments)[0]), moments


def taef_files(source: str) -> tuple[str, str]:
    """(encoder, decoder) .pth paths of a taef directory (`*_encoder.pth` + `*_decoder.pth`) or an encoder path."""
    if os.path.isdir(source):
        enc = sorted(f for f in os.listdir(source) if f.endswith("_encoder.pth"))
        dec = sorted(f for f in os.listdir(source) if f.endswith("_decoder.pth"))
        if len(enc) != 1 or len(dec) != 1:
            raise FileNotFoundError(f"{source}: want exactly one *_encoder.pth and one *_decoder.pth, found "
                                    f"{enc + dec or 'none'}")
        return os.path.join(source, enc[0]), os.path.join(source, dec[0])
    if source.endswith("_encoder.pth"):
        return source, source[: -len("_encoder.pth")] + "_decoder.pth"
    raise FileNotFoundError(f"{source}: not a taef directory or *_encoder.pth file")


def load_taef(module: TinyAutoencoder, source: str) -> int:
    """Load published taef encoder/decoder state dicts strictly; returns the number of tensors loaded.

    Missing, unexpected or mis-shaped keys are refused by name (a file of another TAESD variant, e.g. 4 or 16
    latent channels, fails here rather than producing garbage latents).
    """
    enc_path, dec_path = taef_files(source)
    loaded = 0
    for path, part in ((enc_path, module.encoder), (dec_path, module.decoder)):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True) if _has_weights_only() else \
                torch.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any unreadable file is one error for the user
            raise RuntimeError(f"reading {path}: {e}") from e
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise RuntimeError(f"{path}: not a state dict of tensors")
        own = part.state_dict()
        missing = sorted(set(own) - set(sd), key=_natural)
        extra = sorted(set(sd) - set(own), key=_natural)
        shape = [f"{k} {tuple(sd[k].shape)} (want {tuple(own[k].shape)})" for k in own
                 if k in sd and sd[k].shape != own[k].shape]
        if missing or extra or shape:
            parts = []
            if missing:
                parts.append(f"missing {_few(missing)}")
            if extra:
                parts.append(f"unexpected {_few(extra)}")
            if shape:
                parts.append(f"mis-shaped {_few(shape)}")
            raise RuntimeError(f"{path}: does not match the {module.cfg.latent_channels}-channel taef layout: "
                               + "; ".join(parts))
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise RuntimeError(f"{path}: non-finite values in {_few(bad)}")
        part.load_state_dict(sd, strict=True)
        loaded += len(sd)
    return loaded


def _has_weights_only() -> bool:
    import inspect
    return "weights_only" in inspect.signature(torch.load).parameters


def _natural(k: str):
    return [int(p) if p.isdigit() else p for p in k.split(".")]


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
