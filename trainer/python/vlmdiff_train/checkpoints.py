"""Loading and saving the published checkpoints into the VLMDiff networks, strictly.

Files and layouts handled:
  * SD1.5 v1-5-pruned(-emaonly).ckpt: {'state_dict': {...}} with model.diffusion_model.* (UNet),
    first_stage_model.* (VAE), cond_stage_model.transformer.* (CLIP text), plus DDPM schedule buffers and, in the
    non-emaonly file, model_ema.* copies; those extras are ignored and counted.
  * kl-f8 model.ckpt (and DiAD/VLMDiff finetuned autoencoders): encoder.*, decoder.*, quant_conv.*,
    post_quant_conv.* plus loss.* (LPIPS/discriminator, ignored); a first_stage_model.* prefix is accepted too.
  * DINO dino_deitsmall8_pretrain.pth: the backbone's plain state dict; a full training checkpoint
    ({'teacher': ...} with module./backbone. prefixes) is accepted, its head.* dropped.
  * DiAD/VLMDiff model ckpt (build_model.py output, training checkpoints): control_model.* (SG network) besides
    the SD1.5 prefixes.

Every load is strict: a part whose keys or shapes differ from the network raises CheckpointError naming the part,
the counts and the first few missing, unexpected and mis-shaped keys. A silently partial load would leave random
weights in a pretrained network and only show up as bad anomaly maps much later.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .nets.sgn import SGN_NEW_PREFIXES, SemanticGuidedNetwork, VLMDiffModel

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "TEXT_PREFIX",
    "CONTROL_PREFIX",
    "read_checkpoint",
    "state_dict_diff",
    "load_strict",
    "split_prefix",
    "load_sd15",
    "load_autoencoder",
    "autoencoder_layout",
    "read_object",
    "load_dino",
    "load_text_encoder",
    "init_sgn_from_unet",
    "build_vlmdiff",
    "vlmdiff_state_dict",
    "save_vlmdiff_checkpoint",
    "load_vlmdiff_checkpoint",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."
# HF CLIP's position_ids buffer: present in SD1.5 files, not persistent here (positions are always 0..n-1).
TEXT_POSITION_IDS = "text_model.embeddings.position_ids"
_SHOW = 5  # keys listed per category in an error message


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the network it is loaded into."""


@dataclass
class LoadReport:
    """What a load did: keys loaded per part, keys ignored, SG keys left at their init."""

    source: str = ""
    loaded: dict = field(default_factory=dict)  # part -> number of tensors loaded
    ignored: list = field(default_factory=list)  # checkpoint keys not used
    sgn_initialised: list = field(default_factory=list)  # SG keys kept at init (hint block, zero convs, SFF)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.loaded.items())
        return (f"{self.source}: loaded {parts}; ignored {len(self.ignored)} keys; "
                f"{len(self.sgn_initialised)} SG keys kept at init")


def _load_obj(source, trusted: bool):
    """The unpickled object of a checkpoint file, or source itself when it is already a mapping."""
    if isinstance(source, Mapping):
        return source
    name = os.fspath(source)
    if not os.path.isfile(name):
        raise CheckpointError(f"checkpoint {name}: no such file")
    try:
        return torch.load(name, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {name}: refused by the safe loader ({e}); if the file comes from a "
                              f"source you trust, load it with trusted=True") from e
    except Exception as e:  # corrupt zip, truncated file, not a torch file
        raise CheckpointError(f"checkpoint {name}: cannot be read: {type(e).__name__}: {e}") from e


def _flatten(obj, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {name}: holds a {type(obj).__name__}, not a state dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f"checkpoint {name}: contains no tensors")
    return out


def read_checkpoint(source: str | os.PathLike | Mapping[str, torch.Tensor], *, trusted: bool = False
                    ) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a checkpoint file (or a dict given directly), unwrapped from 'state_dict'.

    Files are read with torch.load(weights_only=True), which refuses pickled code; Lightning checkpoints that hold
    other objects need trusted=True (only for files from a source you trust). Non-tensor entries are dropped.
    """
    return _flatten(_load_obj(source, trusted), _name(source))


def split_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of sd under prefix, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def state_dict_diff(module: nn.Module, sd: Mapping[str, torch.Tensor]
                    ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of sd against module.state_dict(); mis-shaped entries carry both
    shapes. Order follows the module's key order so the first listed keys are the first layers."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = sorted(k for k in sd if k not in own)
    mis = [f"{k} (checkpoint {list(sd[k].shape)}, network {list(own[k].shape)})"
           for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mis


def _finite(v: torch.Tensor) -> bool:
    """True when v holds no NaN/Inf. A float64 sum propagates both without allocating a mask; broadcast
    (stride-0) dimensions are collapsed first so each stored element is visited once."""
    if 0 in v.stride():
        keep = [(n, st) for n, st in zip(v.shape, v.stride()) if st != 0]
        v = v.as_strided([n for n, _ in keep], [st for _, st in keep])
    return bool(torch.isfinite(v.sum(dtype=torch.float64)))


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> int:
    """Load sd into module with strict=True semantics, raising one CheckpointError that lists every problem.

    Returns the number of tensors loaded. Works for meta-device modules too (shapes checked, nothing copied).
    """
    missing, unexpected, mis = state_dict_diff(module, sd)
    if missing or unexpected or mis:
        raise CheckpointError(
            f"{what}: checkpoint does not match the network: "
            f"{len(missing)} missing [{_fmt(missing)}]; "
            f"{len(unexpected)} unexpected [{_fmt(unexpected)}]; "
            f"{len(mis)} mis-shaped [{_fmt(mis)}]")
    bad = [k for k, v in sd.items() if v.is_floating_point() and v.device.type != "meta" and not _finite(v)]
    if bad:
        raise CheckpointError(f"{what}: {len(bad)} tensors hold NaN or Inf [{_fmt(bad)}]")
    module.load_state_dict(dict(sd), strict=True)
    return len(sd)


def load_text_encoder(text: nn.Module, sd: Mapping[str, torch.Tensor], what: str = "text encoder") -> int:
    """Load an HF-layout CLIP text state dict (text_model.*), dropping the position_ids buffer."""
    sd = {k: v for k, v in sd.items() if k != TEXT_POSITION_IDS}
    return load_strict(text, sd, what)


def init_sgn_from_unet(sgn: SemanticGuidedNetwork, unet_sd: Mapping[str, torch.Tensor],
                       what: str = "SG network from UNet") -> list[str]:
    """docs/algorithm.md §2.4: every SG key that the UNet has is copied from it; the new layers (hint block, zero convs,
    middle_block_out, SFF) keep their init, which is zero for the zero modules.

    Returns the keys kept at init. Raises CheckpointError when an SG key is neither in the UNet nor a new layer,
    or when a shared key has another shape (the UNet and SG network were built with different configs).
    """
    own = sgn.state_dict()
    new, missing, mis = [], [], []
    take: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        if k in unet_sd:
            if tuple(unet_sd[k].shape) != tuple(v.shape):
                mis.append(f"{k} (UNet {list(unet_sd[k].shape)}, SG {list(v.shape)})")
            else:
                take[k] = unet_sd[k]
        elif k.startswith(SGN_NEW_PREFIXES):
            new.append(k)
        else:
            missing.append(k)
    if missing or mis:
        raise CheckpointError(f"{what}: {len(missing)} SG keys missing from the UNet [{_fmt(missing)}]; "
                              f"{len(mis)} mis-shaped [{_fmt(mis)}]")
    result = sgn.load_state_dict(take, strict=False)
    if result.unexpected_keys:  # cannot happen: take only holds own keys
        raise CheckpointError(f"{what}: unexpected keys {result.unexpected_keys[:_SHOW]}")
    return new


# The finetune-ae stage's layout choices that ae.pt records and the build stage applies (presets.build's keyword).
AE_LAYOUT_KEYS = ("ae_full_res_blocks",)


def autoencoder_layout(source, *, trusted: bool = False, name: str | None = None) -> dict:
    """The layout choices a finetune-ae output (RUN/ae.pt) records under "overrides" ({} for any other checkpoint):
    the build stage builds the autoencoder with them before loading its weights, so a layout set once in the
    finetune_ae section reaches every stage after it. No record means the preset's network definition (LDM's
    layout), which is what every file written before the record existed was trained with. source is a path or
    the already-read object (name then names it in errors). An unknown key is refused by name."""
    if isinstance(source, Mapping):
        obj = source
    elif not isinstance(source, (str, os.PathLike)) or os.path.isdir(source):
        return {}
    else:
        obj = _load_obj(source, trusted)
    raw = obj.get("overrides") if isinstance(obj, Mapping) else None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or any(k not in AE_LAYOUT_KEYS for k in raw):
        raise CheckpointError(f"checkpoint {name or _name(source)}: overrides {raw!r}: want a mapping of "
                              f"{AE_LAYOUT_KEYS}")
    return dict(raw)


def read_object(source, *, trusted: bool = False):
    """The unpickled object of a checkpoint file (a mapping passes through), for a caller that reads both its
    layout record (autoencoder_layout) and its weights (load_autoencoder) without loading the file twice."""
    return _load_obj(source, trusted)


def load_autoencoder(vae: nn.Module, source, *, trusted: bool = False, what: str | None = None) -> LoadReport:
    """Load kl-f8 / a finetuned AE (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*; loss.* ignored).

    A TinyAutoencoder also loads the published taef files: a directory with *_encoder.pth and *_decoder.pth, or the
    encoder file's path (its decoder beside it); a finetuned one (RUN/ae.pt) loads like any other state dict.
    """
    from .nets.taef import TinyAutoencoder, load_taef
    if isinstance(vae, TinyAutoencoder) and isinstance(source, (str, os.PathLike)) and (
            os.path.isdir(source) or os.fspath(source).endswith("_encoder.pth")):
        rep = LoadReport(source=_name(source))
        rep.loaded["vae"] = load_taef(vae, os.fspath(source))
        return rep
    sd = read_checkpoint(source, trusted=trusted)
    name = what or f"autoencoder {_name(source)}"
    if any(k.startswith(VAE_PREFIX) for k in sd):
        sd = split_prefix(sd, VAE_PREFIX)
    keep = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    rep = LoadReport(source=_name(source), ignored=sorted(k for k in sd if k.startswith("loss.")))
    rep.loaded["vae"] = load_strict(vae, keep, name)
    return rep


def load_dino(vit: nn.Module, source, *, trusted: bool = False) -> LoadReport:
    """Load a DINO ViT backbone: dino_deitsmall8_pretrain.pth, or a full DINO checkpoint's teacher."""
    name = _name(source)
    raw = _load_obj(source, trusted)
    if isinstance(raw, Mapping) and isinstance(raw.get("teacher"), Mapping):
        raw = raw["teacher"]
    out: dict[str, torch.Tensor] = {}
    for k, v in _flatten(raw, name).items():
        for p in ("module.", "backbone."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    rep = LoadReport(source=name, ignored=sorted(k for k in out if k.startswith("head.")))
    rep.loaded["dino"] = load_strict(vit, {k: v for k, v in out.items() if not k.startswith("head.")},
                                     f"DINO {name}")
    return rep


def _name(source) -> str:
    return "<dict>" if isinstance(source, Mapping) else os.fspath(source)


def load_sd15(model: VLMDiffModel, source, *, vae_source=None, init_sgn: bool = True, load_text: bool = True,
              trusted: bool = False) -> LoadReport:
    """Load SD1.5 into model: UNet (strict), VAE (strict, or from vae_source: a kl-f8/finetuned AE file), CLIP
    text (strict, when model has a text encoder and load_text), and, with init_sgn, the SG network from the UNet
    (docs/algorithm.md §2.4). model_ema.*, schedule buffers and other extras are ignored and listed in the report."""
    sd = read_checkpoint(source, trusted=trusted)
    name = _name(source)
    unet_sd = split_prefix(sd, UNET_PREFIX)
    if not unet_sd:
        raise CheckpointError(f"SD1.5 checkpoint {name}: no {UNET_PREFIX}* keys; is it an SD1.x checkpoint?")
    rep = LoadReport(source=name)
    rep.loaded["unet"] = load_strict(model.unet, unet_sd, f"SD1.5 UNet ({name}, prefix {UNET_PREFIX})")
    used = {UNET_PREFIX}
    if vae_source is None:
        vae_sd = split_prefix(sd, VAE_PREFIX)
        rep.loaded["vae"] = load_strict(model.vae, vae_sd, f"SD1.5 VAE ({name}, prefix {VAE_PREFIX})")
        used.add(VAE_PREFIX)
    else:
        sub = load_autoencoder(model.vae, vae_source, trusted=trusted)
        rep.loaded["vae"] = sub.loaded["vae"]
    if load_text and model.text_encoder is not None:
        text_sd = split_prefix(sd, TEXT_PREFIX)
        rep.loaded["text"] = load_text_encoder(model.text_encoder, text_sd,
                                               f"SD1.5 CLIP text ({name}, prefix {TEXT_PREFIX})")
        used.add(TEXT_PREFIX)
    if init_sgn:
        rep.sgn_initialised = init_sgn_from_unet(model.sgn, unet_sd)
        rep.loaded["control"] = len(model.sgn.state_dict()) - len(rep.sgn_initialised)
    rep.ignored = sorted(k for k in sd if not any(k.startswith(p) for p in used))
    log.info("checkpoint loaded", extra={"summary": rep.summary()})
    return rep


def build_vlmdiff(model: VLMDiffModel, sd15_source, ae_source=None, *, trusted: bool = False) -> LoadReport:
    """build_model.py: SG <- SD1.5 UNet encoder, UNet/CLIP <- SD1.5, VAE <- the finetuned AE (or SD1.5's)."""
    return load_sd15(model, sd15_source, vae_source=ae_source, init_sgn=True, trusted=trusted)


def vlmdiff_state_dict(model: VLMDiffModel) -> dict[str, torch.Tensor]:
    """model's weights in the DiAD/VLMDiff ckpt layout (control_model.*, model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.*)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in ((CONTROL_PREFIX, model.sgn), (UNET_PREFIX, model.unet), (VAE_PREFIX, model.vae),
                           (TEXT_PREFIX, model.text_encoder)):
        if module is None:
            continue
        for k, v in module.state_dict().items():
            out[prefix + k] = v
    return out


def save_vlmdiff_checkpoint(model: VLMDiffModel, path: str | os.PathLike, extra: Mapping | None = None) -> None:
    """Write {'state_dict': vlmdiff_state_dict(model), **extra} atomically (temp file + rename), so a crash or a
    full disk never leaves a truncated checkpoint under the final name."""
    path = os.fspath(path)
    obj = dict(extra or {})
    obj["state_dict"] = vlmdiff_state_dict(model)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"saving checkpoint {path}: {e}") from e
        raise


def load_vlmdiff_checkpoint(model: VLMDiffModel, source, *, load_text: bool = True, trusted: bool = False
                            ) -> LoadReport:
    """Load a DiAD/VLMDiff-layout checkpoint: every part strict; text only when model has a text encoder and
    the file has cond_stage_model.* keys (a small preset may be trained without text)."""
    sd = read_checkpoint(source, trusted=trusted)
    name = _name(source)
    rep = LoadReport(source=name)
    used = [CONTROL_PREFIX, UNET_PREFIX, VAE_PREFIX]
    for part, prefix, module in (("control", CONTROL_PREFIX, model.sgn), ("unet", UNET_PREFIX, model.unet),
                                 ("vae", VAE_PREFIX, model.vae)):
        sub = split_prefix(sd, prefix)
        if not sub:
            raise CheckpointError(f"VLMDiff checkpoint {name}: no {prefix}* keys")
        rep.loaded[part] = load_strict(module, sub, f"VLMDiff {part} ({name}, prefix {prefix})")
    text_sd = split_prefix(sd, TEXT_PREFIX)
    if load_text and model.text_encoder is not None and text_sd:
        rep.loaded["text"] = load_text_encoder(model.text_encoder, text_sd, f"VLMDiff text ({name})")
        used.append(TEXT_PREFIX)
    rep.ignored = sorted(k for k in sd if not any(k.startswith(p) for p in used))
    return rep
